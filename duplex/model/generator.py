"""Streaming generation (docs/kyutai-compat.md §2.7): one call per 80 ms frame, every slot at its own position.

State per slot (all preallocated, batch-slot axis first, zero = fresh): a token cache of ``max_delay + 2`` columns
for the 17 streams, the slot's step counter, and the temporal transformer's KV rings. The depth transformer's
cache lives for one step only. ``generate_step`` is a function of (state, inputs) with no host synchronisation
and no branch on tensor values, so the engine can batch it and capture it as a CUDA graph.

Timeline of a slot (s = its step counter): the model reads text/semantic tokens generated at s-1, acoustic
tokens of s-1 (acoustic delay 1), the user's semantic codes of s and acoustic codes of s-1; streams still inside
their delay read the initial token. It returns the text and semantic tokens of s-1 with the acoustic tokens of s,
i.e. one decodable frame, from its second step on.

PersonaPlex (``cfg.personaplex``) is stepped as NVIDIA's ``LMGen`` steps it (docs/kyutai-compat.md, "PersonaPlex"),
which differs in four ways. (1) A call first writes its inputs (the user's codes, and during a system prompt the
model's own stream) at ``offset + delay``, then runs the model on the column of ``offset - 1``, with the column of
``offset`` as the target: a forced ("provided") token there replaces the sampled one, in the cache and as the next
depth step's input. So the first call after a reset runs nothing, and call t + 1 computes what Kyutai's call t
computes: one frame more of nothing. (2) The user's stream is 8 codebooks wide and only the first 8 of the 16
depth steps are computed: the others predict the user's stream, which is always provided, so they never change a
returned token. (3) The attention window is ``context - 1`` past steps (NVIDIA's ring marks its oldest slot
invalid once full). (4) A step may take an embedding instead of the embedded tokens (a replayed voice prompt).
Its state has a ``provided`` mask beside the token cache and ``2 max_delay + 2`` columns (inputs run ahead).

A Moshi-style model (Kyutai's step) can be given a system prompt too (duplex's extension, docs/offline.md): its
step ``s`` computes what PersonaPlex's call ``s + 1`` computes, so ``prompts.prompt_frames`` hands it NVIDIA's frames
re-timed to its steps (one step fewer), every token of the target column forced (``Forcing``), the input embedding
replaced where given. With no slot forced the step's values are Kyutai's, bit for bit (``torch.where`` only).
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from codec.modules.linear import fast_linear
from codec.modules.state import as_row_mask, write_state, zero_rows
from codec.modules.transformer import ring_step_tables

from ..errors import PromptError
from .checks import check_user_codes
from .layers import UNGENERATED_TOKEN
from .sampling import Sampling, SlotSampling, exponential_noise, sample, step_key

# The ring lengths a step attends (``attended_slots``): powers of two from 64, then the whole ring. Few enough
# sizes that each can have its own CUDA graph, fine enough that a session reads at most twice what it wrote.
FIRST_RING_BUCKET = 64


def ring_buckets(capacity: int) -> tuple:
    """The attended lengths of a ring of ``capacity`` slots, ascending, the last one ``capacity``."""
    sizes, size = [], FIRST_RING_BUCKET
    while size < capacity:
        sizes.append(size)
        size *= 2
    return (*sizes, capacity)


def attended_slots(newest: int, capacity: int) -> int:
    """How much of a ring of ``capacity`` slots a step must attend when the newest position any active slot
    writes is ``newest`` (its offset): the smallest of ``ring_buckets`` holding slots ``0 .. newest``
    (``codec.modules.transformer.ring_step_tables``: slot ``p % capacity`` holds position p)."""
    for size in ring_buckets(capacity):
        if newest < size:
            return size
    return capacity


def ring_capacity(state: dict) -> int:
    """The KV ring's slot count of a generator state (its tensors hold one spare slot after the ring)."""
    return state["layers"]["0"]["k"].shape[2] - 1


def new_generator_state(lm, batch: int, kv_dtype: Optional[torch.dtype] = None) -> dict:
    """``kv_dtype``: the temporal transformer's KV rings (default the LM's dtype; float8_e4m3fn: the fp8 ring,
    ``codec.modules.transformer.Attention.new_state``)."""
    cfg, device, dtype = lm.config, lm.device, lm.dtype
    layers = {str(i): layer.self_attn.new_state(batch, 1, cfg.context, device, dtype, kv_dtype)
              for i, layer in enumerate(lm.layers)}
    columns = 2 * cfg.max_delay + 2 if cfg.personaplex else cfg.max_delay + 2
    state = {
        "cache": torch.zeros(batch, cfg.num_streams, columns, dtype=torch.long, device=device),
        "offset": torch.zeros(batch, dtype=torch.long, device=device),
        "layers": layers,
    }
    if cfg.personaplex:
        state["provided"] = torch.zeros(batch, cfg.num_streams, columns, dtype=torch.bool, device=device)
    return state


def new_scratch(lm, batch: int) -> dict:
    """Per-generator working memory that is not conversation state: the depth transformer's per-step cache and
    its input projections stacked into one matrix (taken from the weights when the generator is made)."""
    return {"depth": lm.depformer.new_cache(batch, lm.device, lm.dtype),
            "depformer_in": lm.depformer_in_all(lm.config.model_codebooks)}


class Forcing:
    """What a prompted step is given besides the user's codes (preallocated, one row per slot): ``rows`` bool
    [B], slots whose own stream is forced this step (a system-prompt frame); ``model`` int64 [B, 1 + 8], the text
    token and audio codes forced; ``use_embedding`` bool [B] and ``embedding`` [B, dim], slots whose step input is
    that embedding instead of the embedded tokens (a voice prompt replayed from NVIDIA's ``.pt``)."""

    def __init__(self, lm, batch: int):
        cfg, device = lm.config, lm.device
        self.rows = torch.zeros(batch, dtype=torch.bool, device=device)
        self.model = torch.zeros(batch, 1 + cfg.model_codebooks, dtype=torch.long, device=device)
        self.use_embedding = torch.zeros(batch, dtype=torch.bool, device=device)
        self.embedding = torch.zeros(batch, cfg.dim, dtype=lm.dtype, device=device)

    def clear(self) -> None:
        self.rows.zero_()
        self.use_embedding.zero_()


def generate_step(lm, state: dict, scratch: dict, user_codes: torch.Tensor, sampling: Sampling,
                  active: Optional[torch.Tensor] = None, forcing: Optional[Forcing] = None,
                  length: Optional[int] = None, depth=None) -> torch.Tensor:
    """Advance every active slot by one frame. user_codes int64 [B, user_codebooks]; returns int64 [B, 1 +
    model_codebooks] (text token, then the audio codes to decode), UNGENERATED_TOKEN (-2) for slots in their first
    step (first two for PersonaPlex).

    ``scratch``: the depth transformer's per-step cache and the stacked depth input projections
    (``new_scratch``); ``sampling``: every slot's settings and seed (``Sampling``); ``forcing``: PersonaPlex only,
    the system-prompt inputs (``Forcing``); ``length``: how much of the KV rings to attend (``attended_slots`` of
    the largest offset among the active slots, known on the host; default the whole ring): the same values;
    ``depth``: what runs Kyutai's depth stage (default ``depth_step``; e.g. a compiled ``depth_step``)."""
    if lm.config.personaplex:
        transformer_out, text_logits = persona_temporal_step(lm, state, user_codes, active, forcing, length)
        return persona_depth_step(lm, state, scratch, transformer_out, text_logits, sampling, active)
    transformer_out, text_logits = temporal_step(lm, state, user_codes, active, forcing, length)
    return (depth or depth_step)(lm, state, scratch, transformer_out, text_logits, sampling, active, forcing)


def temporal_step(lm, state: dict, user_codes: torch.Tensor, active: Optional[torch.Tensor] = None,
                  forcing: Optional[Forcing] = None, length: Optional[int] = None) -> tuple:
    """Steps 1-3: store the user's codes, read this step's tokens, run the temporal transformer (its input replaced
    by ``forcing.embedding`` where ``forcing.use_embedding``: a replayed voice prompt) over the first ``length``
    slots of its KV rings (``generate_step``).
    Returns (transformer_out [B, 1, dim], text_logits [B, 1, text_card])."""
    cfg = lm.config
    cache, offset = state["cache"], state["offset"]
    b, k, columns = cache.shape
    delays = lm.delays
    first_user = 1 + cfg.dep_q

    # 1. The user's codes go in at their own delay: semantic for this step, acoustic for the next.
    user_cols = ((offset[:, None] + delays[None, first_user:]) % columns)[..., None]
    new_user = cache[:, first_user:].scatter(2, user_cols, user_codes[..., None])
    write_state(cache[:, first_user:], new_user, active)

    # 2. What the model reads: this step's column, or the initial token while a stream is inside its delay.
    column = (offset % columns).view(b, 1, 1).expand(b, k, 1)
    tokens = cache.gather(2, column)[..., 0]  # [B, K]
    in_delay = offset[:, None] <= delays[None, :]
    tokens = torch.where(in_delay, lm.initial_tokens[None, :], tokens)

    # 3. Temporal transformer, one position per slot.
    x = lm.embed(tokens[:, :, None], zero_token=False)
    if forcing is not None:
        x = torch.where(forcing.use_embedding[:, None, None], forcing.embedding[:, None, :].to(x.dtype), x)
    tables = ring_step_tables(offset, 1, ring_capacity(state), cfg.context, cfg.num_kv_heads, cfg.head_dim,
                              lm.freqs, active, length)
    for i, layer in enumerate(lm.layers):
        x = layer.step(x, state["layers"][str(i)], tables)
    return lm.heads_input(x)


def depth_step(lm, state: dict, scratch: dict, transformer_out: torch.Tensor, text_logits: torch.Tensor,
               sampling: Sampling, active: Optional[torch.Tensor] = None,
               forcing: Optional[Forcing] = None) -> torch.Tensor:
    """Steps 4-8: sample the text token and the audio codes, advance, return the frame to decode. The slots of
    ``forcing.rows`` take ``forcing.model`` instead of what they sample (kept, and as the next depth input)."""
    cfg = lm.config
    cache, offset = state["cache"], state["offset"]
    b, _, columns = cache.shape
    delays = lm.delays
    first_user = 1 + cfg.dep_q

    # 4-5. Text token, then the audio codes one depth position at a time.
    # Draw 0 is the text token, draws 1..dep_q the audio codes; all their random numbers are made up front.
    key = step_key(sampling.seed, offset)
    text_settings, audio_settings = sampling.text, sampling.audio
    text_noise = exponential_noise(key, 0, text_settings.k_max, 1)[:, 0] if text_settings.any_sampling else None
    audio_noise = (exponential_noise(key, 1, audio_settings.k_max, cfg.dep_q).unbind(1)
                   if audio_settings.any_sampling else [None] * cfg.dep_q)
    text = sample(text_logits[:, 0], text_settings, text_noise)
    if forcing is not None:
        text = torch.where(forcing.rows, forcing.model[:, 0], text)
    generated = [text]
    previous = text
    projected = fast_linear(transformer_out, scratch["depformer_in"]).view(b, 1, cfg.dep_q, -1)
    for d in range(cfg.dep_q):
        x = projected[:, :, d] + lm.depformer_embedding(d).lookup(previous[:, None])
        h = lm.depformer.step(x, d, scratch["depth"])
        previous = sample(lm.audio_logits(d, h[:, 0]), audio_settings, audio_noise[d])
        if forcing is not None:
            previous = torch.where(forcing.rows, forcing.model[:, d + 1], previous)
        generated.append(previous)

    # 6. Advance and store this step's tokens in the next column.
    new_offset = offset + 1
    write_col = (new_offset % columns).view(b, 1, 1).expand(b, first_user, 1)
    new_model = cache[:, :first_user].scatter(2, write_col, torch.stack(generated, dim=1)[..., None])
    write_state(cache[:, :first_user], new_model, active)
    write_state(offset, new_offset, active)

    # 7-8. The frame to return: text/semantic of the previous step with the acoustic tokens of this one.
    out_cols = ((new_offset[:, None] - cfg.max_delay + delays[None, :first_user]) % columns)[..., None]
    out = new_model.gather(2, out_cols)[..., 0]  # [B, 1 + dep_q]
    warming_up = (new_offset <= cfg.max_delay)[:, None]
    return torch.where(warming_up, torch.full_like(out, UNGENERATED_TOKEN), out)


def persona_temporal_step(lm, state: dict, user_codes: torch.Tensor, active: Optional[torch.Tensor] = None,
                          forcing: Optional[Forcing] = None, length: Optional[int] = None) -> tuple:
    """PersonaPlex, steps 1-3 (module docstring): store this call's inputs and the initial tokens, then run the
    temporal transformer on the column of ``offset - 1`` (nothing runs for slots at offset 0)."""
    cfg = lm.config
    cache, provided, offset = state["cache"], state["provided"], state["offset"]
    b, k, columns = cache.shape
    delays = lm.delays
    first_user = 1 + cfg.model_codebooks

    # 1. This call's inputs at their delays: the user's codes always; the model's own stream where forced.
    given = torch.ones(b, k, dtype=torch.bool, device=cache.device)
    inputs = user_codes
    if forcing is not None:
        given = torch.cat([forcing.rows[:, None].expand(b, first_user), given[:, first_user:]], dim=1)
        inputs = torch.cat([forcing.model, user_codes], dim=1)
    else:
        given[:, :first_user] = False
        inputs = torch.cat([torch.zeros(b, first_user, dtype=torch.long, device=cache.device), user_codes], dim=1)
    at = ((offset[:, None] + delays[None, :]) % columns)[..., None]
    new_cache = cache.scatter(2, at, torch.where(given, inputs, cache.gather(2, at)[..., 0])[..., None])
    new_provided = provided.scatter(2, at, (provided.gather(2, at)[..., 0] | given)[..., None])
    # 2. Streams still inside their delay hold the initial token at this call's column, provided.
    here = (offset % columns).view(b, 1, 1).expand(b, k, 1)
    in_delay = offset[:, None] <= delays[None, :]
    new_cache = new_cache.scatter(2, here, torch.where(in_delay, lm.initial_tokens[None, :],
                                                       new_cache.gather(2, here)[..., 0])[..., None])
    new_provided = new_provided.scatter(2, here, (new_provided.gather(2, here)[..., 0] | in_delay)[..., None])
    write_state(cache, new_cache, active)
    write_state(provided, new_provided, active)

    # 3. The temporal transformer on the column of offset - 1, at position offset - 1.
    running = offset > 0 if active is None else active & (offset > 0)
    read = ((offset - 1) % columns).view(b, 1, 1).expand(b, k, 1)
    x = lm.embed(cache.gather(2, read), zero_token=False)
    if forcing is not None:
        x = torch.where(forcing.use_embedding[:, None, None], forcing.embedding[:, None, :].to(x.dtype), x)
    position = (offset - 1).clamp(min=0)
    tables = ring_step_tables(position, 1, ring_capacity(state), cfg.context - 1, cfg.num_heads, cfg.head_dim,
                              lm.freqs, running, length)
    for i, layer in enumerate(lm.layers):
        x = layer.step(x, state["layers"][str(i)], tables)
    return lm.heads_input(x)


def persona_depth_step(lm, state: dict, scratch: dict, transformer_out: torch.Tensor, text_logits: torch.Tensor,
                       sampling: Sampling, active: Optional[torch.Tensor] = None) -> torch.Tensor:
    """PersonaPlex, steps 4-8: sample, with the provided tokens of the target column forced in the depth
    transformer's inputs and kept in the cache; return the frame of ``offset - max_delay``; advance."""
    cfg = lm.config
    cache, provided, offset = state["cache"], state["provided"], state["offset"]
    b, k, columns = cache.shape
    m = cfg.model_codebooks
    first_user = 1 + m
    running = offset > 0 if active is None else active & (offset > 0)

    target_at = (offset % columns).view(b, 1, 1).expand(b, first_user, 1)
    target = cache[:, :first_user].gather(2, target_at)[..., 0]  # [B, 1 + m]
    forced = provided[:, :first_user].gather(2, target_at)[..., 0]
    key = step_key(sampling.seed, offset)
    text_settings, audio_settings = sampling.text, sampling.audio
    text_noise = exponential_noise(key, 0, text_settings.k_max, 1)[:, 0] if text_settings.any_sampling else None
    audio_noise = (exponential_noise(key, 1, audio_settings.k_max, m).unbind(1)
                   if audio_settings.any_sampling else [None] * m)
    sampled = [sample(text_logits[:, 0], text_settings, text_noise)]
    previous = torch.where(forced[:, 0], target[:, 0], sampled[0])
    projected = fast_linear(transformer_out, scratch["depformer_in"]).view(b, 1, m, -1)
    for d in range(m):
        x = projected[:, :, d] + lm.depformer_embedding(d).lookup(previous[:, None])
        h = lm.depformer.step(x, d, scratch["depth"])
        sampled.append(sample(lm.audio_logits(d, h[:, 0]), audio_settings, audio_noise[d]))
        previous = torch.where(forced[:, d + 1], target[:, d + 1], sampled[-1])

    kept = torch.where(forced, target, torch.stack(sampled, dim=1))
    new_model = cache[:, :first_user].scatter(2, target_at, kept[..., None])
    write_state(cache[:, :first_user], new_model, running)
    read = ((offset - 1) % columns).view(b, 1, 1).expand(b, k, 1)
    write_state(provided, provided.scatter(2, read, torch.zeros_like(read, dtype=torch.bool)), running)

    out_at = ((offset[:, None] - cfg.max_delay + lm.delays[None, :first_user]) % columns)[..., None]
    out = new_model.gather(2, out_at)[..., 0]  # [B, 1 + m]
    warming_up = (offset <= cfg.max_delay)[:, None]  # before advancing, as NVIDIA compares
    write_state(offset, offset + 1, active)
    return torch.where(warming_up, torch.full_like(out, UNGENERATED_TOKEN), out)


class LMGenerator:
    """``lm.generator(batch_size, ...)``: slots that each hold one conversation and advance independently."""

    def __init__(self, lm, batch_size: int, greedy: bool = False, temperature: float = 0.8, top_k: int = 250,
                 text_temperature: float = 0.7, text_top_k: int = 25, seed: Optional[int] = None,
                 kv_dtype: Optional[torch.dtype] = None):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        cfg = lm.config
        requested = SlotSampling(temperature, top_k, text_temperature, text_top_k)  # checked here, before any work
        self.lm = lm
        self.batch_size = batch_size
        if seed is None:
            seed = int.from_bytes(os.urandom(6), "little")
        self.seed = int(seed)
        # As in the reference, k is capped by the vocabulary, and 0 keeps the whole vocabulary.
        top_k = min(top_k, cfg.card) if top_k > 0 else cfg.card
        text_top_k = min(text_top_k, cfg.text_card) if text_top_k > 0 else cfg.text_card
        self.sampling = Sampling(batch_size, text_top_k, top_k, lm.device, greedy=greedy)
        # Each slot draws from its own stream: the generator seed combined with the slot index.
        self.sampling.set(None, requested.replace(top_k=top_k, text_top_k=text_top_k,
                                                  seed=(self.seed % (1 << 40)) << 20))
        self.state = new_generator_state(lm, batch_size, kv_dtype)
        self.scratch = new_scratch(lm, batch_size)
        self.forcing = Forcing(lm, batch_size)
        # What runs the depth stage of a Moshi-style model's step: ``depth_step``, or the same function compiled
        # (``duplex.runtime.compiled.CompiledStage("depth", depth_step)``: the same tokens, fewer kernels).
        self.depth_step = depth_step
        # Each slot's offset as the host knows it without reading the device (None: not known, after a step whose
        # ``active`` mask lives on an accelerator), so a step attends only the ring slots written so far.
        self._offsets: "Optional[list]" = [0] * batch_size

    def _host_rows(self, mask: Optional[torch.Tensor]) -> "Optional[list]":
        """The rows of a mask as host booleans (all for None); None when reading them would wait for the device."""
        if mask is None:
            return [True] * self.batch_size
        return mask.tolist() if mask.device.type == "cpu" else None

    def _move(self, rows: "Optional[list]", to: Optional[int] = None, by: int = 0) -> None:
        """The host's offsets of the ``rows`` slots set ``to`` a step, or moved on ``by`` steps; rows not known on
        the host (a mask on an accelerator) make every offset unknown."""
        if self._offsets is None or rows is None:
            self._offsets = None
        else:
            self._offsets = [(o + by if to is None else to) if r else o for o, r in zip(self._offsets, rows)]

    def _length(self, rows: "Optional[list]") -> Optional[int]:
        """The ring slots the next step of the ``rows`` slots must attend (None: the whole ring)."""
        if self._offsets is None or rows is None:
            return None
        newest = max((o for o, r in zip(self._offsets, rows) if r), default=0)
        return attended_slots(newest, ring_capacity(self.state))

    def advance_to(self, frames: int, mask: Optional[torch.Tensor] = None) -> None:
        """For benchmarks: put the slots of ``mask`` (all when None) at step ``frames``, as if that many frames had
        passed (the token cache and KV rings keep what they hold: zeros for fresh slots). A step's cost depends on
        the slots' positions (how much of the ring is attended), not on what the ring holds."""
        if not isinstance(frames, int) or isinstance(frames, bool) or frames < 0:
            raise ValueError(f"frames must be a non-negative integer, got {frames!r}")
        mask = as_row_mask(mask, self.batch_size, self.lm.device)
        write_state(self.state["offset"], torch.full_like(self.state["offset"], frames), mask)
        self._move(self._host_rows(mask), to=frames)

    @torch.no_grad()
    def step(self, user_codes: torch.Tensor, active: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The user's codes for this frame, int [B, user_codebooks] -> int64 [B, 1 + model_codebooks] (8 and 9
        for Moshi and PersonaPlex): the text token, then the audio codes to decode; -2 in a slot's first step
        after a reset (first two for PersonaPlex). ``active`` (bool [B]): other slots do not advance."""
        codes = check_user_codes(user_codes, self.lm.config, self.batch_size).to(self.lm.device)
        active = as_row_mask(active, self.batch_size, self.lm.device)
        # Kyutai's step takes no forcing when nothing is forced (its exact operations); PersonaPlex's always does.
        forcing = self.forcing if self.lm.config.personaplex else None
        self.forcing.clear()
        rows = self._host_rows(active)
        out = generate_step(self.lm, self.state, self.scratch, codes, self.sampling, active, forcing,
                            self._length(rows), self.depth_step)
        self._move(rows, by=1)
        return out

    @torch.no_grad()
    def step_prompt(self, frames, active: Optional[torch.Tensor] = None) -> None:
        """Step a system prompt (``duplex.model.prompts.PromptFrames``) through the ``active`` slots (all when
        None), frame by frame as NVIDIA's ``step_system_prompts`` does; what it returns is dropped, as NVIDIA drops
        it. The slots should be fresh (reset), as NVIDIA's are when it prompts."""
        active = as_row_mask(active, self.batch_size, self.lm.device)
        step_prompt_frames(self.lm, self.state, self.scratch, self.sampling, self.forcing, frames, active)
        self._move(self._host_rows(active), by=len(frames))

    def reset(self, mask: Optional[torch.Tensor] = None) -> None:
        """Restart the slots where ``mask`` (bool [B]) is True at position 0; all slots when None."""
        mask = as_row_mask(mask, self.batch_size, self.lm.device)
        zero_rows(self.state, mask)
        if mask is None:
            self._offsets = [0] * self.batch_size  # every offset known again
        else:
            self._move(self._host_rows(mask), to=0)


def load_frame(forcing: Forcing, frames, index: int, rows: torch.Tensor) -> torch.Tensor:
    """Put frame ``index`` of a prompt in ``forcing`` for the slots ``rows`` (bool [B]); returns its user codes."""
    b = rows.shape[0]
    forcing.rows.copy_(rows)
    forcing.model.copy_(torch.where(rows[:, None], frames.model[index][None, :], forcing.model))
    forcing.use_embedding.copy_(rows & frames.use_embedding[index])
    forcing.embedding.copy_(torch.where(rows[:, None], frames.embedding[index][None, :].to(forcing.embedding.dtype),
                                        forcing.embedding))
    return frames.user[index][None, :].expand(b, -1)


def step_prompt_frames(lm, state: dict, scratch: dict, sampling: Sampling, forcing: Forcing, frames,
                       active: Optional[torch.Tensor] = None) -> None:
    """Every frame of ``frames`` (``PromptFrames``, on the model's device) through the ``active`` slots, NVIDIA's
    saved token cache put in place after frame ``frames.cache_after``."""
    rows = torch.ones(state["offset"].shape[0], dtype=torch.bool, device=lm.device) if active is None else active
    for i in range(len(frames)):
        user = load_frame(forcing, frames, i, rows)
        generate_step(lm, state, scratch, user, sampling, rows, forcing)
        if frames.cache is not None and i + 1 == frames.cache_after:
            put_token_cache(state, frames.cache, rows)
    forcing.clear()


def put_token_cache(state: dict, saved: torch.Tensor, rows: torch.Tensor) -> None:
    """NVIDIA's token cache [K, CT] (column = position % CT) into the slots ``rows`` of ``state`` (column = position
    % C): the positions up to each slot's offset that both rings hold, as NVIDIA's ``state.cache.copy_`` leaves
    them after a replayed voice prompt."""
    cache, offset = state["cache"], state["offset"]
    columns, saved_columns = cache.shape[2], saved.shape[-1]
    span = min(columns, saved_columns)
    positions = offset[:, None] - span + 1 + torch.arange(span, device=offset.device)[None, :]  # [B, span]
    values = saved.to(cache.device)[None, :, :].expand(cache.shape[0], -1, -1).gather(
        2, (positions % saved_columns)[:, None, :].expand(-1, cache.shape[1], -1))
    at = (positions % columns)[:, None, :].expand(-1, cache.shape[1], -1)
    write_state(cache, cache.scatter(2, at, values), rows)


def voice_embedding_file(lm, frames) -> tuple:
    """(embeddings [N - 1, dim], token cache [K, max_delay + 3]) of a voice prompt's frames (``prompt_frames`` of a
    voice given as codes, no text), as NVIDIA's ``save_voice_prompt_embeddings`` records them: the embedded input
    of each step that runs the model, and the token cache after the last voice frame, in NVIDIA's ring layout.
    For a Moshi-style model the same, on its re-timed frames (every step runs the model)."""
    cfg = lm.config
    gen = lm.generator(1, greedy=True, seed=0)
    state = gen.state
    columns = state["cache"].shape[2]
    forcing = gen.forcing
    embeddings = []
    count = frames.voice_frames
    for i in range(count):
        offset = int(state["offset"][0])
        user = load_frame(forcing, frames, i, torch.ones(1, dtype=torch.bool, device=lm.device))
        if cfg.personaplex and offset > 0:
            read = (offset - 1) % columns
            embeddings.append(lm.embed(state["cache"][:, :, read:read + 1], zero_token=False)[0, 0])
        elif not cfg.personaplex:  # Kyutai's step reads its own column, the initial tokens inside the delays
            tokens = state["cache"][:, :, offset % columns].clone()
            first_user = 1 + cfg.dep_q
            at = (offset + lm.delays[first_user:]) % columns  # this step's user codes go in first
            tokens[:, first_user:] = torch.where(at == offset % columns, user, tokens[:, first_user:])
            tokens = torch.where(offset <= lm.delays[None, :], lm.initial_tokens[None, :], tokens)
            embeddings.append(lm.embed(tokens[:, :, None], zero_token=False)[0, 0])
        generate_step(lm, state, gen.scratch, user, gen.sampling, None, forcing)
    offset = int(state["offset"][0])
    saved_columns = cfg.max_delay + 3  # NVIDIA's ring: max_delay + 3 columns
    saved = torch.full((cfg.num_streams, saved_columns), UNGENERATED_TOKEN, dtype=torch.long)
    for position in range(max(0, offset - min(columns, saved_columns) + 1), offset + 1):
        saved[:, position % saved_columns] = state["cache"][0, :, position % columns].cpu()
    if not cfg.personaplex and count < len(frames):
        # Kyutai's step writes a frame's inputs in its own step, NVIDIA's a step ahead, so NVIDIA's saved ring holds
        # the last voice frame's inputs and ours does not yet: add what the next step writes (the user's codes at
        # their delays, the forced target column), which the replay takes back from here (prompts.kyutai_steps).
        first_user = 1 + cfg.dep_q
        for k in range(first_user, cfg.num_streams):
            saved[k, (offset + int(lm.delays[k])) % saved_columns] = int(frames.user[count, k - first_user])
        saved[:first_user, (offset + 1) % saved_columns] = frames.model[count].cpu()
    if not embeddings:
        raise PromptError("a voice prompt needs at least two frames (0.16 s) to be saved as embeddings")
    return torch.stack(embeddings).cpu(), saved
