"""The Mimi codec: offline encode/decode, per-frame streaming steps, checkpoint loading.

Encode: SEANet encoder (24 kHz -> 25 Hz) -> transformer -> learnt downsample (12.5 Hz) -> split RVQ codes.
Decode: RVQ lookup -> learnt depthwise upsample (25 Hz) -> transformer -> SEANet decoder (24 kHz).

The streaming steps ``encode_step`` / ``decode_step`` are functions of (explicit state, one frame); ``MimiStream``
(``Mimi.stream``) wraps them with input checks for direct use.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from .checks import check_codes, check_pcm
from .config import MimiConfig
from .io.checkpoint import check_and_load, normalize_keys, read_tensors
from .modules.conv import StreamingConv1d, StreamingConvTranspose1d
from .modules.nest import Nest
from .modules.quantizer import SplitResidualVectorQuantizer
from .modules.rope import rope_frequencies
from .modules.seanet import SEANetDecoder, SEANetEncoder
from .modules.state import State
from .modules.transformer import MimiTransformer
from .stream import MimiStream

ConfigLike = Union[None, MimiConfig, Mapping[str, Any], str, os.PathLike]


class Mimi(nn.Module):
    """Streaming neural audio codec compatible with Kyutai's Mimi checkpoints."""

    def __init__(self, config: ConfigLike = None, num_codebooks: int = 8):
        super().__init__()
        cfg = MimiConfig.load(config)
        self.config = cfg
        dim = cfg.seanet.dimension
        self.encoder = SEANetEncoder(cfg.seanet)
        self.decoder = SEANetDecoder(cfg.seanet)
        self.encoder_transformer = MimiTransformer(cfg.transformer)
        self.decoder_transformer = MimiTransformer(cfg.transformer)
        stride = cfg.resample_stride
        if stride > 1:
            self.downsample = Nest()
            self.downsample.conv = StreamingConv1d(dim, dim, 2 * stride, stride=stride, bias=False, replicate=True)
            self.upsample = Nest()
            # Depthwise on purpose: the published weights were trained with this ("channel_wise") layer.
            self.upsample.convtr = StreamingConvTranspose1d(dim, dim, 2 * stride, stride=stride, groups=dim,
                                                            bias=False)
        else:
            self.downsample = self.upsample = None
        self.quantizer = SplitResidualVectorQuantizer(cfg.quantizer)
        self._num_codebooks = 0
        self.num_codebooks = num_codebooks

    # --------------------------------------------------------------------------------------------- properties
    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.config.frame_rate

    @property
    def frame_size(self) -> int:
        return self.config.frame_size

    @property
    def cardinality(self) -> int:
        """Entries per codebook (2048 for Mimi): codes are in ``[0, cardinality)``."""
        return self.config.quantizer.bins

    @property
    def total_codebooks(self) -> int:
        return self.config.quantizer.n_q

    @property
    def num_codebooks(self) -> int:
        """Codebooks produced by ``encode`` (1 semantic + num_codebooks - 1 acoustic)."""
        return self._num_codebooks

    @num_codebooks.setter
    def num_codebooks(self, n: int) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= self.total_codebooks:
            raise ValueError(f"num_codebooks must be an integer in [1, {self.total_codebooks}], got {n!r}")
        self._num_codebooks = n

    @property
    def device(self) -> torch.device:
        return self.quantizer.rvq_first.input_proj.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.quantizer.rvq_first.input_proj.weight.dtype

    # ------------------------------------------------------------------------------------------- construction
    @classmethod
    def from_checkpoint(cls, path: Union[str, os.PathLike], config: ConfigLike = None, num_codebooks: int = 8,
                        device: Union[str, torch.device] = "cpu") -> "Mimi":
        """Load a Kyutai Mimi ``.safetensors`` (or torch pickle with a ``model`` entry) strictly, in float32."""
        cfg = MimiConfig.load(config)
        tensors = normalize_keys(read_tensors(path, containers=(("model",),)))
        with torch.device("meta"):
            model = cls(cfg, num_codebooks)
        check_and_load(model, tensors, "Mimi", source=os.fspath(path), dtype=torch.float32)
        model.refresh_derived()
        return model.to(device).eval()

    @classmethod
    def random(cls, config: ConfigLike = None, num_codebooks: int = 8, seed: int = 0,
               device: Union[str, torch.device] = "cpu") -> "Mimi":
        """A randomly initialised codec (deterministic in ``seed``), for tests and timing. The modules' default
        initialisation draws from torch's global generator, so it runs inside ``fork_rng``: the caller's random
        state is the same afterwards."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(config, num_codebooks)
            with torch.no_grad():
                for codebook in model.quantizer.rvq_first.codebooks + model.quantizer.rvq_rest.codebooks:
                    codebook.embedding_sum.normal_()
                    codebook.cluster_usage.fill_(1.0)
                    codebook._initialized.fill_(1.0)
        model.refresh_derived()
        return model.to(device).eval()

    def refresh_derived(self) -> None:
        """Recompute the non-persistent tables (RoPE frequencies, centroids) from the loaded values."""
        device = self.device
        for tr in (self.encoder_transformer, self.decoder_transformer):
            tr.freqs = rope_frequencies(tr.cfg.head_dim, tr.cfg.max_period, device=device)
        self.quantizer.refresh()

    # ---------------------------------------------------------------------------------------------- offline
    # Offline calls run as chunked steps on a fresh state whose attention ring never drops a visible key, which is
    # the offline computation in bounded memory (SEANet activations of one chunk, not of the whole file).
    offline_chunk_frames: int = 64

    def _offline_chunks(self, frames: int) -> int:
        return max(1, min(frames, self.offline_chunk_frames))

    @torch.no_grad()
    def encode_latent(self, pcm: torch.Tensor) -> torch.Tensor:
        """float [B, 1, T] -> the unquantized latent [B, dimension, ceil(T / frame_size)] (zero right padding)."""
        pcm = check_pcm(pcm, "encode", device=self.device, dtype=self.dtype)
        pad = (-pcm.shape[-1]) % self.frame_size
        if pad:
            pcm = torch.nn.functional.pad(pcm, (0, pad))
        chunk = self._offline_chunks(pcm.shape[-1] // self.frame_size)
        state = self.new_encoder_state(pcm.shape[0], frames_per_call=chunk, offline_window=True)
        pieces = [self._latent_step(piece, state, None) for piece in pcm.split(chunk * self.frame_size, dim=-1)]
        return torch.cat(pieces, dim=-1)

    @torch.no_grad()
    def encode(self, pcm: torch.Tensor, num_codebooks: Optional[int] = None) -> torch.Tensor:
        """float [B, 1, T] -> int64 codes [B, num_codebooks, ceil(T / frame_size)] (``num_codebooks``: this call's
        count, default the model's)."""
        n = self._codebooks(num_codebooks)
        return self.quantizer.encode(self.encode_latent(pcm), n)

    def _codebooks(self, n: Optional[int]) -> int:
        if n is None:
            return self.num_codebooks
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= self.total_codebooks:
            raise ValueError(f"num_codebooks must be an integer in [1, {self.total_codebooks}], got {n!r}")
        return n

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """int codes [B, K, S] (1 <= K <= total_codebooks) -> float [B, 1, S * frame_size]. Never trims."""
        codes = check_codes(codes, "decode", self.cardinality, self.total_codebooks, device=self.device)
        chunk = self._offline_chunks(codes.shape[-1])
        state = self.new_decoder_state(codes.shape[0], frames_per_call=chunk, offline_window=True)
        return torch.cat([self.decode_step(piece, state) for piece in codes.split(chunk, dim=-1)], dim=-1)

    # -------------------------------------------------------------------------------------------- streaming
    def new_encoder_state(self, batch: int, frames_per_call: int = 1, offline_window: bool = False) -> State:
        """Fresh encoder state for calls of up to ``frames_per_call`` frames.

        ``offline_window=False`` is the official streaming behaviour (one frame per call reproduces Kyutai's
        streaming codes exactly); ``True`` makes chunked calls equal to one offline call.
        """
        d, dt = self.device, self.dtype
        steps = frames_per_call * self.config.resample_stride
        state = {"seanet": self.encoder.new_state(batch, d, dt),
                 "transformer": self.encoder_transformer.new_state(batch, steps, offline_window, d, dt)}
        if self.downsample is not None:
            state["downsample"] = self.downsample.conv.new_state(batch, d, dt)
        return state

    def new_decoder_state(self, batch: int, frames_per_call: int = 1, offline_window: bool = False) -> State:
        """Fresh decoder state; see ``new_encoder_state``."""
        d, dt = self.device, self.dtype
        steps = frames_per_call * self.config.resample_stride
        state = {"seanet": self.decoder.new_state(batch, d, dt),
                 "transformer": self.decoder_transformer.new_state(batch, steps, offline_window, d, dt)}
        if self.upsample is not None:
            state["upsample"] = self.upsample.convtr.new_state(batch, d, dt)
        return state

    def _latent_step(self, pcm: torch.Tensor, state: State, active: Optional[torch.Tensor]) -> torch.Tensor:
        x = self.encoder.step(pcm, state["seanet"], active)
        x = self.encoder_transformer.step(x, state["transformer"], active)
        if self.downsample is not None:
            x = self.downsample.conv.step(x, state["downsample"], active)
        return x

    def encode_step(self, pcm: torch.Tensor, state: State, active: Optional[torch.Tensor] = None,
                    num_codebooks: Optional[int] = None) -> torch.Tensor:
        """Whole frames [B, 1, n * frame_size] -> codes [B, num_codebooks, n], advancing ``state``.

        No input checks (callers validate once, outside the hot path). Rows where ``active`` is False are computed
        but keep their state unchanged. ``num_codebooks``: this call's count (default the model's).
        """
        n = self.num_codebooks if num_codebooks is None else num_codebooks
        return self.quantizer.encode(self._latent_step(pcm, state, active), n)

    def decode_step(self, codes: torch.Tensor, state: State, active: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Code frames [B, K, n] -> audio [B, 1, n * frame_size], advancing ``state`` (no input checks)."""
        x = self.quantizer.decode(codes)
        if self.upsample is not None:
            x = self.upsample.convtr.step(x, state["upsample"], active)
        x = self.decoder_transformer.step(x, state["transformer"], active)
        return self.decoder.step(x, state["seanet"], active)

    def stream(self, batch_size: int, num_codebooks: Optional[int] = None) -> "MimiStream":  # noqa: F821
        """A new, independent streaming state with ``batch_size`` slots, encoding ``num_codebooks`` codebooks
        (default: the model's count when the stream is made)."""
        return MimiStream(self, batch_size, self._codebooks(num_codebooks))
