"""Streaming generation (docs/kyutai-compat.md §2.7): one call per 80 ms frame, every slot at its own position.

State per slot (all preallocated, batch-slot axis first, zero = fresh): a token cache of ``max_delay + 2`` columns
for the 17 streams, the slot's step counter, and the temporal transformer's KV rings. The depth transformer's
cache lives for one step only. ``generate_step`` is a function of (state, inputs) with no host synchronisation
and no branch on tensor values, so the engine can batch it and capture it as a CUDA graph.

Timeline of a slot (s = its step counter): the model reads text/semantic tokens generated at s-1, acoustic
tokens of s-1 (acoustic delay 1), the user's semantic codes of s and acoustic codes of s-1; streams still inside
their delay read the initial token. It returns the text and semantic tokens of s-1 with the acoustic tokens of s,
i.e. one decodable frame, from its second step on.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from codec.modules.linear import fast_linear
from codec.modules.state import as_row_mask, write_state, zero_rows
from codec.modules.transformer import ring_step_tables

from .checks import check_user_codes
from .layers import UNGENERATED_TOKEN
from .sampling import Sampling, SlotSampling, exponential_noise, sample, step_key


def new_generator_state(lm, batch: int) -> dict:
    cfg, device, dtype = lm.config, lm.device, lm.dtype
    layers = {str(i): layer.self_attn.new_state(batch, 1, cfg.context, device, dtype)
              for i, layer in enumerate(lm.layers)}
    return {
        "cache": torch.zeros(batch, cfg.num_streams, cfg.max_delay + 2, dtype=torch.long, device=device),
        "offset": torch.zeros(batch, dtype=torch.long, device=device),
        "layers": layers,
    }


def new_scratch(lm, batch: int) -> dict:
    """Per-generator working memory that is not conversation state: the depth transformer's per-step cache and
    its input projections stacked into one matrix (taken from the weights when the generator is made)."""
    return {"depth": lm.depformer.new_cache(batch, lm.device, lm.dtype), "depformer_in": lm.depformer_in_all()}


def generate_step(lm, state: dict, scratch: dict, user_codes: torch.Tensor, sampling: Sampling,
                  active: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Advance every active slot by one frame. user_codes int64 [B, n_q - dep_q]; returns int64 [B, 1 + dep_q]
    (text token, then the audio codes to decode), UNGENERATED_TOKEN (-2) for slots in their first step.

    ``scratch``: the depth transformer's per-step cache and the stacked depth input projections
    (``new_scratch``); ``sampling``: every slot's settings and seed (``Sampling``)."""
    transformer_out, text_logits = temporal_step(lm, state, user_codes, active)
    return depth_step(lm, state, scratch, transformer_out, text_logits, sampling, active)


def temporal_step(lm, state: dict, user_codes: torch.Tensor, active: Optional[torch.Tensor] = None) -> tuple:
    """Steps 1-3: store the user's codes, read this step's tokens, run the temporal transformer.
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
    tables = ring_step_tables(offset, 1, state["layers"]["0"]["k"].shape[2] - 1, cfg.context, cfg.num_kv_heads,
                              cfg.head_dim, lm.freqs, active)
    for i, layer in enumerate(lm.layers):
        x = layer.step(x, state["layers"][str(i)], tables)
    return lm.heads_input(x)


def depth_step(lm, state: dict, scratch: dict, transformer_out: torch.Tensor, text_logits: torch.Tensor,
               sampling: Sampling, active: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Steps 4-8: sample the text token and the audio codes, advance, return the frame to decode."""
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
    generated = [text]
    previous = text
    projected = fast_linear(transformer_out, scratch["depformer_in"]).view(b, 1, cfg.dep_q, -1)
    for d in range(cfg.dep_q):
        x = projected[:, :, d] + lm.depformer_embedding(d).lookup(previous[:, None])
        h = lm.depformer.step(x, d, scratch["depth"])
        previous = sample(lm.audio_logits(d, h[:, 0]), audio_settings, audio_noise[d])
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


class LMGenerator:
    """``lm.generator(batch_size, ...)``: slots that each hold one conversation and advance independently."""

    def __init__(self, lm, batch_size: int, greedy: bool = False, temperature: float = 0.8, top_k: int = 250,
                 text_temperature: float = 0.7, text_top_k: int = 25, seed: Optional[int] = None):
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
        self.state = new_generator_state(lm, batch_size)
        self.scratch = new_scratch(lm, batch_size)

    @torch.no_grad()
    def step(self, user_codes: torch.Tensor, active: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The user's codes for this frame, int [B, user_codebooks] -> int64 [B, 1 + dep_q] (8 and 9 for Moshi):
        the text token, then the dep_q audio codes to decode; -2 in a slot's first step after a reset.
        ``active`` (bool [B]): other slots do not advance."""
        codes = check_user_codes(user_codes, self.lm.config, self.batch_size).to(self.lm.device)
        active = as_row_mask(active, self.batch_size, self.lm.device)
        return generate_step(self.lm, self.state, self.scratch, codes, self.sampling, active)

    def reset(self, mask: Optional[torch.Tensor] = None) -> None:
        """Restart the slots where ``mask`` (bool [B]) is True at position 0; all slots when None."""
        zero_rows(self.state, as_row_mask(mask, self.batch_size, self.lm.device))
