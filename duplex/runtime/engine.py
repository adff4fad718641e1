"""The frame-locked duplex engine: codec + LM for many sessions as one batched step per 80 ms frame.

Every session owns one row ("slot") of preallocated state: Mimi encoder and decoder states, the LM generator
state, sampling settings and seed. A tick gathers the frames of the sessions that sent one into fixed input
buffers, runs one static-shape step over all rows with an active-row mask (rows without input compute but keep
their state), and scatters the outputs. Nothing in the step allocates host memory, branches on tensor values or
synchronises with the host until the outputs are copied out, so on a GPU each stage is captured once as a CUDA
graph and replayed (``cuda_graphs=True``, off with ``DUPLEX_NO_CUDA_GRAPHS=1``); any capture failure falls back
to eager execution with a warning.

Session timeline (as Kyutai's server): the first frame after ``open`` primes the LM (all its inputs are initial
tokens) and returns silence; from the second frame on every frame returns 80 ms of model audio and at most one
text piece. Like Kyutai's server, the codec encoder treats a session's first frame as "in the past": it is not
encoded, and the second frame is encoded from a fresh state.

PersonaPlex (``lm.config.personaplex``) runs as NVIDIA's server runs it: every frame is encoded, the LM returns its
first frame on the third call, and a session may open with a system prompt (``system_prompt``: a voice and a role
text, docs/kyutai-compat.md "PersonaPlex"). Moshi-style models take the same prompts, re-timed to Kyutai's step
(duplex's extension, docs/offline.md; ``prompts.kyutai_steps``). A prompting slot steps one prompt frame per tick, inside the same
batched step as the talking slots (its own stream forced through per-slot buffers: data, not branches), and neither
encodes nor decodes. When its last frame is stepped, the slot's LM state is kept under the prompt's content key
(``prompt_states``), and the next session opened with the same prompt gets a copy at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from codec import Mimi
from codec.modules.state import zero_row

from ..errors import EngineFull, LoRAError, ModelFilesError, PromptError
from ..model.config import LMConfig
from ..model.generator import (
    Forcing,
    attended_slots,
    depth_step,
    new_generator_state,
    new_scratch,
    persona_depth_step,
    persona_temporal_step,
    put_token_cache,
    ring_buckets,
    ring_capacity,
    temporal_step,
)
from ..model.lm import MoshiLM, default_dtype
from ..model.prompts import (
    NVIDIA_CODEBOOK_SIZE,
    PromptConstants,
    PromptFrames,
    VoicePrompt,
    codec_prompt_constants,
    load_voice,
    prompt_frames,
    text_prompt_tokens,
)
from ..model.sampling import Sampling, SlotSampling
from ..model.tokenizer import TextTokenizer
from .checkpoints import ModelFiles, codec_config_for, lm_codec, lm_config_for, lm_tokenizer
from .compiled import CompileOption, compile_stages
from .profiling import StageTimer
from .quantization import describe

log = logging.getLogger(__name__)

STAGES = ("input", "encode", "temporal", "depth", "decode", "output")
GRAPH_ENV = "DUPLEX_NO_CUDA_GRAPHS"



@dataclass
class SamplingOptions:
    """The engine's sampling: ``default``, what a session gets unless it asks otherwise (``SlotSampling``'s
    defaults are Kyutai's: text 0.7 / 25, audio 0.8 / 250); ``*_top_k_max`` bound what any session may ask for
    (they fix the shape of the top-k step); ``greedy`` makes every slot greedy whatever it asks."""

    default: SlotSampling = field(default_factory=SlotSampling)
    top_k_max: int = 500
    text_top_k_max: int = 100
    greedy: bool = False


def _check_sampling_type(sampling) -> None:
    if not isinstance(sampling, SlotSampling):
        raise TypeError(f"a slot's sampling is a SlotSampling, got {type(sampling).__name__}")


def _graphs_disabled_by_env() -> bool:
    return any(os.environ.get(name, "").strip().lower() not in ("", "0", "no", "n", "false")
               for name in (GRAPH_ENV, "NO_CUDA_GRAPH"))


class Engine:
    def __init__(self, lm: MoshiLM, mimi: Mimi, tokenizer: Optional[TextTokenizer] = None, slots: int = 8,
                 cuda_graphs: bool = True, sampling: Optional[SamplingOptions] = None,
                 kv_dtype: Optional[torch.dtype] = None, compile: CompileOption = False):
        if not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
            raise ValueError(f"slots must be a positive integer, got {slots!r}")
        cfg = lm.config
        if lm.device != mimi.device:
            raise ValueError(f"the LM is on {lm.device} but the codec is on {mimi.device}")
        needed = max(cfg.model_codebooks, cfg.user_codebooks)
        if needed > mimi.total_codebooks or mimi.cardinality != cfg.card:
            raise ValueError(f"the LM needs a codec with >= {needed} codebooks of {cfg.card} entries; this codec "
                             f"has {mimi.total_codebooks} of {mimi.cardinality}")
        self.num_codebooks = needed  # as the makers' loaders: 8 for Moshi and PersonaPlex; the caller's codec is untouched
        self.lm, self.mimi, self.tokenizer = lm, mimi, tokenizer
        self.files: Optional[ModelFiles] = None  # the files it was loaded from (``from_files``), if any
        self.slots = slots
        self.device = lm.device
        self.frame_size = mimi.frame_size
        self.sample_rate = mimi.sample_rate
        self.options = sampling or SamplingOptions()
        opts = self.options

        # Conversation state, one row per slot.
        self.encoder_state = mimi.new_encoder_state(slots)
        self.decoder_state = mimi.new_decoder_state(slots)
        self.kv_dtype = kv_dtype or lm.dtype  # the temporal transformer's KV rings (float8_e4m3fn: the fp8 ring)
        self.generator_state = new_generator_state(lm, slots, self.kv_dtype)
        # Each slot's LM position as the host knows it (the generator state's ``offset``, never read back): a step
        # attends only the KV ring slots the active sessions have written, rounded up to one of a few lengths
        # (``generator.ring_buckets``, one CUDA graph each), so a young session does not read a whole ring.
        # ``attend_written_only = False``: every step attends the whole ring (as Kyutai's implementation does).
        self._positions = [0] * slots
        self.attend_written_only = True
        self._ring_capacity = ring_capacity(self.generator_state)
        lm.prepare_for_inference()  # documented on the class: the CPU weight layout (values unchanged)
        self.scratch = new_scratch(lm, slots)
        self.sampling = Sampling(slots, min(opts.text_top_k_max, cfg.text_card), min(opts.top_k_max, cfg.card),
                                 self.device, greedy=opts.greedy, branch_free=True)
        # Fixed input buffers (device) and their host staging copies (pinned on CUDA for async copies).
        pin = self.device.type == "cuda"
        self.pcm_in = torch.zeros(slots, 1, self.frame_size, device=self.device)
        self.active = torch.zeros(slots, dtype=torch.bool, device=self.device)
        self._pcm_host = torch.zeros(slots, 1, self.frame_size, pin_memory=pin)
        self._active_host = torch.zeros(slots, dtype=torch.bool, pin_memory=pin)
        self._in_use = [False] * slots
        with self._device_context():  # CUDA events belong to the engine's GPU
            self.timer = StageTimer(STAGES, self.device)
        # int64 [slots, 1 + dep_q] on the host: the tokens of the last step (text, then audio codes; -2: none).
        self.last_tokens = torch.full((slots, 1 + cfg.model_codebooks), -2, dtype=torch.long)

        # PersonaPlex system prompts: the per-slot forced inputs of this tick, the prompts being stepped ({slot:
        # [frames, next index]}) and the states they end in, by content key (least recently used dropped first).
        self.persona = cfg.personaplex
        self.forcing = Forcing(lm, slots)
        self._forcing_set = False  # a prompt frame is in the forcing buffers (cleared on the next tick)
        self.prompt_user = torch.zeros(slots, cfg.user_codebooks, dtype=torch.long, device=self.device)
        self._prompt_constants: Optional[PromptConstants] = None
        self.prompt_states: "Dict[str, dict]" = {}
        self.max_prompt_states = 8
        self._prompts: Dict[int, list] = {}

        # LoRA adapters (``lm.add_adapter``): each slot's adapter index (0: none) is data the batched step reads
        # (``lm.route_adapters``), so slots with different adapters share one step. The LM keeps the reference: an
        # LM with adapters serves one engine at a time.
        self.adapter_rows = torch.zeros(slots, dtype=torch.long, device=self.device)
        self._slot_adapter = [0] * slots
        if lm.adapters:
            lm.route_adapters(self.adapter_rows)

        self.cuda_graphs = bool(cuda_graphs) and self.device.type == "cuda" and not _graphs_disabled_by_env()
        self._graphs: Optional[dict] = None
        self._outputs: Optional[tuple] = None
        # compile: stages compiled with torch.compile for this engine only (runtime/compiled.py; {} when off).
        self.compiled = compile_stages(self, compile)

    # ------------------------------------------------------------------------------------------ construction
    @classmethod
    def from_files(cls, files: ModelFiles, slots: int = 8, device: Union[str, torch.device] = "cpu",
                   dtype: Optional[torch.dtype] = None, cuda_graphs: bool = True,
                   sampling: Optional[SamplingOptions] = None, quantize: Optional[str] = None,
                   kv_dtype: Optional[torch.dtype] = None, compile: CompileOption = False) -> "Engine":
        """The engine on the model ``files`` name (``ModelFiles.default()``, ``.for_lm(path)``,
        ``.from_hf_cache(repo)``). dtype None: bfloat16 on CUDA, float32 on CPU (the codec is always float32).
        ``quantize`` (``"int8"``, ``"fp8"``): the LM's linear weights quantized at load (a quantized file loads as
        it is); ``kv_dtype``: the KV rings' dtype (``torch.float8_e4m3fn``: the fp8 ring). docs/quantization.md.
        ``compile``: stages compiled with torch.compile (True: encode, depth and decode; or their names, and an
        Inductor mode: runtime/compiled.py's ``compile_plan``)."""
        lm, mimi, tokenizer = files.load(device, dtype, quantize=quantize)
        engine = cls(lm, mimi, tokenizer, slots=slots, cuda_graphs=cuda_graphs, sampling=sampling, kv_dtype=kv_dtype,
                     compile=compile)
        engine.files = files
        return engine

    @classmethod
    def from_checkpoints(cls, lm: Union[str, os.PathLike, MoshiLM], mimi: Union[None, str, os.PathLike, Mimi] = None,
                         tokenizer: Union[None, str, os.PathLike, TextTokenizer] = None, slots: int = 8,
                         device: Union[str, torch.device] = "cpu", dtype: Optional[torch.dtype] = None,
                         cuda_graphs: bool = True, sampling: Optional[SamplingOptions] = None,
                         lm_config=None, mimi_config=None, quantize: Optional[str] = None,
                         kv_dtype: Optional[torch.dtype] = None, compile: CompileOption = False) -> "Engine":
        """Paths (or loaded models). A path's companions not given are found beside it as ``ModelFiles.for_lm``
        finds them: the LM's config (never assumed: Kyutai's Moshi 7B file without one is told by its shapes, or
        give ``lm_config="moshi_7b"``), its codec and its tokenizer. dtype None: bfloat16 on CUDA, float32 on CPU
        (the codec is always float32)."""
        if not isinstance(lm, MoshiLM) and not isinstance(mimi, Mimi) and not isinstance(tokenizer, TextTokenizer):
            files = ModelFiles.for_lm(lm, mimi=mimi, tokenizer=tokenizer, lm_config=lm_config,
                                      mimi_config=mimi_config)
            return cls.from_files(files, slots=slots, device=device, dtype=dtype, cuda_graphs=cuda_graphs,
                                  sampling=sampling, quantize=quantize, kv_dtype=kv_dtype, compile=compile)
        device = torch.device(device)
        if isinstance(lm, MoshiLM):
            if mimi is None:
                raise ModelFilesError("a loaded LM needs its codec: give the codec too")
            if quantize is not None and quantize != lm.quantization:
                raise ValueError(f"quantize={quantize!r} for a loaded LM: quantize it first (lm.quantize_), or give "
                                 "its file")
        else:
            config = LMConfig.load(lm_config_for(lm, lm_config))
            if mimi is None:
                mimi, mimi_config = lm_codec(lm, config)
            if tokenizer is None:
                tokenizer = lm_tokenizer(lm, config)
            lm = MoshiLM.from_checkpoint(lm, config=config, device=device,
                                         dtype=default_dtype(device) if dtype is None else dtype, quantize=quantize)
        if not isinstance(mimi, Mimi):
            mimi = Mimi.from_checkpoint(mimi, config=codec_config_for(mimi, mimi_config), device=device)
        if tokenizer is not None and not isinstance(tokenizer, TextTokenizer):
            tokenizer = TextTokenizer(tokenizer)
        return cls(lm, mimi, tokenizer, slots=slots, cuda_graphs=cuda_graphs, sampling=sampling, kv_dtype=kv_dtype,
                   compile=compile)

    @classmethod
    def default(cls, slots: int = 8, device: Union[str, torch.device] = "cpu", dtype: Optional[torch.dtype] = None,
                cuda_graphs: bool = True, sampling: Optional[SamplingOptions] = None, quantize: Optional[str] = None,
                kv_dtype: Optional[torch.dtype] = None, compile: CompileOption = False) -> "Engine":
        """The engine on duplex's own small default model (``ModelFiles.default()``); nothing is downloaded."""
        return cls.from_files(ModelFiles.default(), slots=slots, device=device, dtype=dtype,
                              cuda_graphs=cuda_graphs, sampling=sampling, quantize=quantize, kv_dtype=kv_dtype,
                              compile=compile)

    @property
    def quantization(self) -> dict:
        """What runs, for people and ``/api/stats``: the LM's weights (none, int8, fp8) and its KV rings' dtype."""
        return describe(self.lm.quantization, self.kv_dtype, self.lm.dtype)

    # ----------------------------------------------------------------------------------------------- slots
    @property
    def free_slots(self) -> int:
        return self._in_use.count(False)

    def open(self, sampling: Optional[SlotSampling] = None, prompt: Optional[PromptFrames] = None,
             adapter: Union[None, int, str] = None, **changes) -> int:
        """Claim a free slot with a fresh state. ``sampling`` defaults to the engine's ``options.default``;
        keyword arguments change single fields of it (``engine.open(temperature=0.6, seed=7)``). ``prompt``
        (PersonaPlex, ``system_prompt``): the slot starts in that persona, at once when its state is known
        (``prompt_states``), else after stepping its frames, one per tick (``prompting``). ``adapter``: the LoRA
        adapter the session runs, by name or index (``adapters``; "none" or 0: the base model); default the first."""
        sampling = self.options.default if sampling is None else sampling
        _check_sampling_type(sampling)
        if changes:
            sampling = sampling.replace(**changes)  # checked here, before a slot is claimed
        index = self.adapter_index(adapter)
        try:
            slot = self._in_use.index(False)
        except ValueError:
            raise EngineFull(f"engine full: all {self.slots} slots are in use") from None
        self._in_use[slot] = True
        self.configure(slot, sampling)
        self._slot_adapter[slot] = index
        self.adapter_rows[slot] = index
        for state in (self.encoder_state, self.decoder_state, self.generator_state):
            zero_row(state, slot)  # only this slot's memory (a 7B slot's KV ring alone is ~1.6 GB)
        self._positions[slot] = 0
        self._prompts.pop(slot, None)
        if prompt is not None:
            if self._state_key(prompt.key, slot) in self.prompt_states:
                self._put_prompt_state(slot, self._state_key(prompt.key, slot))
            else:
                self._prompts[slot] = [prompt.to(self.device), 0]
        return slot

    # ------------------------------------------------------------------------------------------ system prompts
    @property
    def prompt_constants(self) -> PromptConstants:
        """The prompt-frame tokens: NVIDIA's for PersonaPlex on Mimi's 2048-entry codebooks (codes of the real
        Mimi); for any other model the codes its own codec gives silence and NVIDIA's sine frame (``prompts.codec_prompt_constants``, computed
        once), since NVIDIA's numbers mean nothing to another codec. Assignable (small test models)."""
        if self._prompt_constants is None:
            nvidia = self.persona and self.mimi.cardinality == NVIDIA_CODEBOOK_SIZE
            self._prompt_constants = (PromptConstants() if nvidia
                                      else codec_prompt_constants(self.mimi, self.lm.config.model_codebooks))
        return self._prompt_constants

    @prompt_constants.setter
    def prompt_constants(self, constants: PromptConstants) -> None:
        self._prompt_constants = constants

    def system_prompt(self, voice: Union[None, str, os.PathLike, VoicePrompt] = None, text: Optional[str] = None,
                      constants: Optional[PromptConstants] = None) -> PromptFrames:
        """The frames of a PersonaPlex system prompt, as NVIDIA's ``step_system_prompts`` steps them: ``voice`` an
        audio file (normalised to -24 LUFS, encoded), NVIDIA's voice-embedding ``.pt``, or a ``VoicePrompt``;
        ``text`` a role prompt (wrapped in ``<system>`` tags and tokenized as NVIDIA does). ``constants``: the
        prompt-frame tokens (default ``self.prompt_constants``)."""
        constants = constants or self.prompt_constants
        if voice is not None and not isinstance(voice, VoicePrompt):
            voice = load_voice(voice, self.mimi, self.lm.config.model_codebooks, constants)
        if text and self.tokenizer is None:
            raise PromptError("a text prompt needs the model's tokenizer")
        tokens = text_prompt_tokens(self.tokenizer, text)
        if not self.persona:  # duplex's extension: what a small vocabulary cannot spell (its unknown id) is left out
            unknown = self.tokenizer.sp.unk_id() if tokens else -1
            tokens = tuple(t for t in tokens if t != unknown)
        return prompt_frames(self.lm.config, voice, tokens, constants, self.lm.dtype)

    def prompting(self, slot: int) -> int:
        """How many system-prompt frames ``slot`` has left to step (0: it is talking)."""
        self._check_slot(slot)
        entry = self._prompts.get(slot)
        return 0 if entry is None else len(entry[0]) - entry[1]

    @torch.no_grad()
    def prepare_prompt(self, prompt: PromptFrames, adapter: Union[None, int, str] = None) -> None:
        """Step ``prompt`` now in a free slot, alone (the other slots sit the ticks out), and keep the state it
        ends in, so sessions opened with it (and ``adapter``) start at once. The same batched step as a prompt
        stepped among talking slots, so the same state, bit for bit."""
        key = f"{prompt.key}@{self.adapter_index(adapter)}" if self.adapters else prompt.key
        if key in self.prompt_states:
            return
        slot = self.open(prompt=prompt, adapter=adapter)
        try:
            with self._device_context():
                while self.prompting(slot):
                    self._step({})
        finally:
            self.close(slot)

    def _keep_prompt_state(self, slot: int, key: str) -> None:
        """The LM state of ``slot`` after its prompt: every row tensor, but only the ring slots written so far."""
        state = self.generator_state
        written = self._positions[slot]
        kept = {name: state[name][slot].clone() for name in ("cache", "provided", "offset") if name in state}
        kept["layers"] = {i: {kv: ring[slot, :, :min(written, ring.shape[2] - 1)].clone() for kv, ring in
                              layer.items()} for i, layer in state["layers"].items()}
        kept["position"] = written
        self.prompt_states.pop(key, None)
        self.prompt_states[key] = kept
        while len(self.prompt_states) > self.max_prompt_states:
            self.prompt_states.pop(next(iter(self.prompt_states)))

    @torch.no_grad()
    def _put_prompt_state(self, slot: int, key: str) -> None:
        kept = self.prompt_states.pop(key)
        self.prompt_states[key] = kept  # most recently used last
        state = self.generator_state
        for name in ("cache", "provided", "offset"):
            if name in kept:
                state[name][slot].copy_(kept[name])
        for i, layer in kept["layers"].items():
            for kv, ring in layer.items():
                state["layers"][i][kv][slot, :, :ring.shape[1]].copy_(ring)
        self._positions[slot] = kept["position"]

    @torch.no_grad()
    def advance_to(self, slot: int, frames: int) -> None:
        """For benchmarks: the open ``slot``'s LM goes on as if ``frames`` frames had passed (its token cache and KV
        ring keep what they hold: zeros after ``open``). A step's cost depends on the sessions' positions (how much
        of the ring is attended), not on what the ring holds, so this times a session of any age at once."""
        self._check_slot(slot)
        if not isinstance(frames, int) or isinstance(frames, bool) or frames < 0:
            raise ValueError(f"frames must be a non-negative integer, got {frames!r}")
        self.generator_state["offset"][slot] = frames
        self._positions[slot] = frames

    @property
    def ring_capacity(self) -> int:
        """The temporal transformer's KV ring, in frames (the LM's context)."""
        return self._ring_capacity

    def configure(self, slot: int, sampling: SlotSampling) -> None:
        """Set an open slot's sampling (top-k capped by the engine's ``*_top_k_max``; seed None: a random one)."""
        self._check_slot(slot)
        _check_sampling_type(sampling)
        if sampling.seed is None:
            sampling = sampling.replace(seed=int.from_bytes(os.urandom(6), "little"))
        self.sampling.set(slot, sampling)

    def close(self, slot: int) -> None:
        self._check_slot(slot)
        self._in_use[slot] = False
        self._prompts.pop(slot, None)

    def _check_slot(self, slot) -> None:
        if not isinstance(slot, int) or isinstance(slot, bool) or not 0 <= slot < self.slots:
            raise ValueError(f"slot must be an integer in [0, {self.slots}), got {slot!r}")
        if not self._in_use[slot]:
            raise ValueError(f"slot {slot} is not open")

    # ------------------------------------------------------------------------------------------ the frame
    def _stage_encode(self) -> torch.Tensor:
        # A session's first frame is not encoded (Kyutai's server resets the encoder after it): its codes are
        # never read by the LM, which starts from initial tokens.
        if self.persona:  # NVIDIA's server encodes every frame; a prompting slot has none
            encode = self.active & ~self.forcing.rows
        else:
            encode = self.active & (self.generator_state["offset"] != 0) & ~self.forcing.rows
        return self.mimi.encode_step(self.pcm_in, self.encoder_state, encode, self.num_codebooks)[..., 0]

    def _stage_temporal(self, user_codes: torch.Tensor, length: int) -> tuple:
        user_codes = torch.where(self.forcing.rows[:, None], self.prompt_user, user_codes)
        if self.persona:
            return persona_temporal_step(self.lm, self.generator_state, user_codes, self.active, self.forcing,
                                         length)
        return temporal_step(self.lm, self.generator_state, user_codes, self.active, self.forcing, length)

    def _stage_depth(self, transformer_out: torch.Tensor, text_logits: torch.Tensor) -> torch.Tensor:
        if self.persona:
            return persona_depth_step(self.lm, self.generator_state, self.scratch, transformer_out, text_logits,
                                      self.sampling, self.active)
        return depth_step(self.lm, self.generator_state, self.scratch, transformer_out, text_logits, self.sampling,
                          self.active, self.forcing)

    def _stage_decode(self, tokens: torch.Tensor) -> torch.Tensor:
        produced = self.active & (tokens[:, 1] >= 0)
        produced = produced & ~self.forcing.rows  # NVIDIA decodes nothing of the prompt frames
        audio = self.mimi.decode_step(tokens[:, 1:, None].clamp(0, self.mimi.cardinality - 1), self.decoder_state, produced)
        return torch.where(produced[:, None, None], audio, torch.zeros((), device=audio.device))

    def _attended(self, stepping: list) -> int:
        """The KV ring length this tick's step attends: the bucket holding the written positions of the slots
        ``stepping`` (host booleans; ``_positions`` is host data too), or the whole ring."""
        if not self.attend_written_only:
            return self._ring_capacity
        newest = max((p for p, a in zip(self._positions, stepping) if a), default=0)
        return attended_slots(newest, self._ring_capacity)

    def _run_eager(self, timed: bool, length: int) -> tuple:
        codes = self._stage_encode()
        if timed:
            self.timer.mark()
        transformer_out, text_logits = self._stage_temporal(codes, length)
        if timed:
            self.timer.mark()
        tokens = self._stage_depth(transformer_out, text_logits)
        if timed:
            self.timer.mark()
        audio = self._stage_decode(tokens)
        if timed:
            self.timer.mark()
        return audio, tokens

    def _capture(self) -> None:
        """Capture each stage as a CUDA graph over the fixed buffers, the temporal stage once per attended ring
        length (``generator.ring_buckets``), each graph copying its outputs into the same buffers for the depth
        stage. Warm-up and capture run with every slot inactive, which leaves all conversation state unchanged.
        All graphs share one memory pool: in a tick they run one after another (encode, one temporal, depth,
        decode), and what one reads from another (the codes, the temporal buffers, the tokens) stays allocated."""
        saved_active = self.active.clone()
        self.active.zero_()
        lengths = ring_buckets(self._ring_capacity) if self.attend_written_only else (self._ring_capacity,)
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):  # every shape twice before capture
                    for length in lengths:
                        self._run_eager(timed=False, length=length)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graphs = {}
            g = graphs["encode"] = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                codes = self._stage_encode()
            pool = g.pool()
            transformer_out = text_logits = None
            temporal = graphs["temporal"] = {}
            for length in lengths:
                g = temporal[length] = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, pool=pool):
                    out, logits = self._stage_temporal(codes, length)
                    if transformer_out is None:  # the buffers the depth stage reads, made in the first capture
                        transformer_out, text_logits = torch.empty_like(out), torch.empty_like(logits)
                    transformer_out.copy_(out)
                    text_logits.copy_(logits)
                del out, logits
            g = graphs["depth"] = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                tokens = self._stage_depth(transformer_out, text_logits)
            g = graphs["decode"] = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                audio = self._stage_decode(tokens)
            self._graphs, self._outputs = graphs, (audio, tokens)
        finally:
            self.active.copy_(saved_active)

    def _device_context(self):
        """CUDA work (capture streams, events) must happen on the engine's GPU, which may not be the current one."""
        return torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()

    def _run(self, timed: bool, length: int) -> tuple:
        if self.cuda_graphs and self._graphs is None:
            try:
                self._capture()
                log.info("captured the frame step as CUDA graphs (%d slot%s)", self.slots,
                         "" if self.slots == 1 else "s")
            except Exception as e:  # any capture problem: keep serving, eagerly
                log.warning("CUDA graph capture failed (%s: %s); running eagerly", type(e).__name__, e)
                self.cuda_graphs = False
                self._graphs = None
        if self._graphs is None:
            return self._run_eager(timed, length)
        temporal = self._graphs["temporal"]
        # A length captured without (attend_written_only set after the capture) runs the whole ring: same values.
        for graph in (self._graphs["encode"], temporal.get(length, temporal[max(temporal)]),
                      self._graphs["depth"], self._graphs["decode"]):
            graph.replay()
            if timed:
                self.timer.mark()
        return self._outputs

    @torch.no_grad()
    def step(self, frames: Mapping[int, object]) -> Dict[int, Tuple[np.ndarray, Optional[str]]]:
        """Advance the sessions in ``frames`` ({slot: float32 [1920]}) by one frame; returns {slot: (float32
        [1920] model audio, text piece or None)}. Sessions without a frame this tick do not advance."""
        if not isinstance(frames, Mapping):
            raise TypeError(f"Engine.step takes a mapping {{slot: frame}}, got {type(frames).__name__}")
        checked = {}
        for slot, frame in frames.items():
            self._check_slot(slot)
            if slot in self._prompts:
                raise ValueError(f"slot {slot} is still stepping its system prompt ({self.prompting(slot)} frames "
                                 "left): it takes no audio yet")
            checked[slot] = self._check_frame(slot, frame)
        with self._device_context():
            return self._step(checked)

    def _step(self, checked: dict) -> Dict[int, Tuple[np.ndarray, Optional[str]]]:
        self.timer.begin()
        self._active_host.zero_()
        for slot, frame in checked.items():
            self._pcm_host[slot, 0] = frame
            self._active_host[slot] = True
        if self._prompts or self._forcing_set:
            self._load_prompt_frames()
        self.pcm_in.copy_(self._pcm_host, non_blocking=True)
        self.active.copy_(self._active_host, non_blocking=True)
        self.timer.mark()
        stepping = self._active_host.tolist()
        audio, tokens = self._run(timed=True, length=self._attended(stepping))
        self._positions = [p + s for p, s in zip(self._positions, stepping)]  # as the step advanced the offsets
        audio_host = audio.to("cpu")
        self.last_tokens = tokens.to("cpu")
        if self._prompts:
            self._advance_prompts()
        self.timer.mark()
        self.timer.finish()
        return {slot: (audio_host[slot, 0].numpy().copy(), self.text_piece(int(self.last_tokens[slot, 0])))
                for slot in checked}

    def _load_prompt_frames(self) -> None:
        """This tick's frame of every prompting slot into the fixed forcing buffers (only their rows)."""
        forcing = self.forcing
        forcing.clear()
        self._forcing_set = bool(self._prompts)
        for slot, (frames, index) in self._prompts.items():
            forcing.rows[slot] = True
            forcing.model[slot] = frames.model[index]
            forcing.use_embedding[slot] = frames.use_embedding[index]
            forcing.embedding[slot] = frames.embedding[index]
            self.prompt_user[slot] = frames.user[index]
            self._active_host[slot] = True

    def _advance_prompts(self) -> None:
        for slot in list(self._prompts):
            entry = self._prompts[slot]
            frames = entry[0]
            entry[1] += 1
            if frames.cache is not None and entry[1] == frames.cache_after:
                rows = torch.zeros(self.slots, dtype=torch.bool, device=self.device)
                rows[slot] = True
                put_token_cache(self.generator_state, frames.cache, rows)
            if entry[1] == len(frames):
                del self._prompts[slot]
                self._keep_prompt_state(slot, self._state_key(frames.key, slot))

    # ------------------------------------------------------------------------------------------ adapters
    @property
    def adapters(self) -> list:
        """The LoRA adapters the engine's LM carries (names; a session picks one with ``open(adapter=)``)."""
        return self.lm.adapters

    def adapter_index(self, adapter: Union[None, int, str]) -> int:
        """The bank index of ``adapter`` (a name, an index, "none"); None: the first adapter, or none."""
        names = self.adapters
        if adapter is None:
            return 1 if names else 0
        if adapter in (0, "none", ""):
            return 0
        if isinstance(adapter, int) and not isinstance(adapter, bool) and 0 < adapter <= len(names):
            return adapter
        if isinstance(adapter, str) and adapter in names:
            return names.index(adapter) + 1
        known = ", ".join(names) if names else "none loaded"
        raise LoRAError(f"no adapter {adapter!r} on this engine (adapters: {known})")

    def slot_adapter(self, slot: int) -> Optional[str]:
        """The adapter ``slot``'s session runs (its name), or None for the base model."""
        self._check_slot(slot)
        index = self._slot_adapter[slot]
        return self.adapters[index - 1] if index else None

    def _state_key(self, prompt_key: str, slot: int) -> str:
        """A kept prompt state belongs to its prompt and to the adapter it was stepped with."""
        return f"{prompt_key}@{self._slot_adapter[slot]}" if self.adapters else prompt_key

    def text_piece(self, token: int) -> Optional[str]:
        """What to display for a text token: the tokenizer's piece, or None (nothing, or no tokenizer)."""
        if token < 0 or self.tokenizer is None:
            return None
        return self.tokenizer.piece(token)

    def _check_frame(self, slot: int, frame) -> torch.Tensor:
        """One mono frame of float PCM ([frame_size], or with leading axes of size 1), as a CPU float32 tensor."""
        if isinstance(frame, torch.Tensor):
            kind = "f" if frame.dtype.is_floating_point else "i"
        else:
            frame = np.asarray(frame)
            kind = frame.dtype.kind
            if kind not in "biuf":
                raise ValueError(f"slot {slot}: audio frame is not numeric (got {frame.dtype} values)")
        if kind != "f":
            raise ValueError(f"slot {slot}: audio frames are float PCM in [-1, 1], got {str(frame.dtype)} (16-bit PCM: "
                             "divide by 32768)")
        frame = frame.detach().to("cpu", torch.float32) if isinstance(frame, torch.Tensor) else \
            torch.from_numpy(frame.astype(np.float32, copy=False))
        while frame.dim() > 1 and frame.shape[0] == 1:  # [1, 1920] and the like: still one mono frame
            frame = frame[0]
        if frame.dim() != 1 or frame.shape[0] != self.frame_size:
            raise ValueError(f"slot {slot}: expected one mono frame of {self.frame_size} samples at "
                             f"{self.sample_rate} Hz, got shape {list(frame.shape)}")
        if not bool(torch.isfinite(frame).all()):
            raise ValueError(f"slot {slot}: audio frame contains non-finite samples (NaN or inf)")
        return frame
