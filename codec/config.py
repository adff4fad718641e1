"""Mimi codec configuration: dataclasses mirroring the official JSON layout.

The official layout is ``{"sample_rate", "channels", "frame_rate", "seanet": {...}, "quantizer": {...},
"transformer": {...}}`` (docs/kyutai-compat.md §1.1). ``MimiConfig.from_dict`` reads it strictly: unknown keys and
values this implementation does not support are errors that name the key, so a config for another model is never
silently half-understood.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import ConfigError


def _strict_fields(cls, data: Mapping[str, Any], where: str) -> dict:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(names)}")
    return dict(data)


def read_json_config(path, error: type, what: str) -> dict:
    """The JSON object in ``path``; missing files and bad JSON become ``error`` with a message naming them."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise error(f"{what} file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise error(f"{what} {path} is not valid JSON: {e}") from None


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


@dataclass
class SEANetConfig:
    """SEANet encoder/decoder (official ``seanet`` section)."""

    channels: int = 1
    dimension: int = 512
    causal: bool = True
    n_filters: int = 64
    n_residual_layers: int = 1
    activation: str = "ELU"
    activation_params: dict = field(default_factory=lambda: {"alpha": 1.0})
    compress: int = 2
    dilation_base: int = 2
    disable_norm_outer_blocks: int = 0
    kernel_size: int = 7
    residual_kernel_size: int = 3
    last_kernel_size: int = 3
    norm: str = "none"
    pad_mode: str = "constant"
    ratios: list = field(default_factory=lambda: [8, 6, 5, 4])
    true_skip: bool = True
    lstm: int = 0

    @property
    def hop_length(self) -> int:
        hop = 1
        for r in self.ratios:
            hop *= r
        return hop

    def validate(self) -> None:
        _require(self.causal, "seanet.causal must be true: only causal (streaming) codecs are supported")
        _require(self.activation == "ELU", f"seanet.activation {self.activation!r} is not supported (only 'ELU')")
        # 'weight_norm' checkpoints are folded at load time, so both norms describe the same computation.
        _require(self.norm in ("none", "weight_norm"), f"seanet.norm {self.norm!r} is not supported")
        _require(self.pad_mode == "constant", f"seanet.pad_mode {self.pad_mode!r} is not supported")
        _require(self.true_skip, "seanet.true_skip must be true (conv shortcuts are not supported)")
        _require(self.lstm == 0, "seanet.lstm is not supported (Mimi has no LSTM)")
        _require(len(self.ratios) > 0 and all(int(r) > 0 for r in self.ratios), "seanet.ratios must be positive")
        _require(self.channels == 1, "seanet.channels must be 1 (mono)")


@dataclass
class QuantizerConfig:
    """Split residual vector quantizer (official ``quantizer`` section)."""

    dimension: int = 256
    n_q: int = 32
    bins: int = 2048
    input_dimension: int = 512
    output_dimension: int = 512
    n_q_semantic: int = 1

    def validate(self) -> None:
        _require(self.n_q_semantic == 1, "quantizer.n_q_semantic must be 1 (one semantic codebook, as in Mimi)")
        _require(1 <= self.n_q, "quantizer.n_q must be at least 1")
        _require(self.bins >= 2, "quantizer.bins must be at least 2")


@dataclass
class TransformerConfig:
    """The encoder and decoder transformers (official ``transformer`` section; both use the same values)."""

    d_model: int = 512
    num_heads: int = 8
    num_layers: int = 8
    causal: bool = True
    layer_scale: float = 0.01
    context: int = 250
    conv_layout: bool = True
    max_period: float = 10000.0
    gating: str = "none"
    norm: str = "layer_norm"
    positional_embedding: str = "rope"
    dim_feedforward: int = 2048
    input_dimension: int = 512
    output_dimensions: list = field(default_factory=lambda: [512])
    bias_ff: bool = False
    bias_attn: bool = False

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def validate(self) -> None:
        _require(self.causal, "transformer.causal must be true")
        _require(self.conv_layout, "transformer.conv_layout must be true")
        _require(self.gating == "none", f"transformer.gating {self.gating!r} is not supported (Mimi uses 'none')")
        _require(self.norm == "layer_norm", f"transformer.norm {self.norm!r} is not supported (Mimi: 'layer_norm')")
        _require(self.positional_embedding == "rope",
                 f"transformer.positional_embedding {self.positional_embedding!r} is not supported (Mimi: 'rope')")
        _require(self.layer_scale is not None, "transformer.layer_scale must be set (Mimi uses LayerScale)")
        _require(self.d_model % self.num_heads == 0 and self.head_dim % 2 == 0,
                 "transformer.d_model must split into heads of even size")
        _require(self.input_dimension == self.d_model and list(self.output_dimensions) == [self.d_model],
                 "transformer input/output projections are not supported: input_dimension and "
                 "output_dimensions must equal d_model")
        _require(not self.bias_ff and not self.bias_attn, "transformer biases are not supported (Mimi has none)")
        _require(self.context > 0, "transformer.context must be positive")


@dataclass
class MimiConfig:
    """The whole codec. ``MimiConfig()`` is the published Mimi; ``MimiConfig.from_dict`` reads the official JSON."""

    sample_rate: int = 24000
    channels: int = 1
    frame_rate: float = 12.5
    seanet: SEANetConfig = field(default_factory=SEANetConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)

    # ----------------------------------------------------------------------------------------------- derived
    @property
    def frame_size(self) -> int:
        """Samples per code frame (1920 for Mimi: 80 ms at 24 kHz)."""
        return int(self.sample_rate / self.frame_rate)

    @property
    def encoder_frame_rate(self) -> float:
        """Rate of the SEANet latent (25 Hz for Mimi)."""
        return self.sample_rate / self.seanet.hop_length

    @property
    def resample_stride(self) -> int:
        """Stride of the learnt 25 Hz -> 12.5 Hz downsample (1 = no resampling)."""
        return int(self.encoder_frame_rate / self.frame_rate)

    # ------------------------------------------------------------------------------------------------- I/O
    @classmethod
    def official(cls) -> "MimiConfig":
        """The configuration of the published Mimi checkpoint."""
        cfg = cls()
        cfg.validate()
        return cfg

    @classmethod
    def small(cls) -> "MimiConfig":
        """A small configuration of the same modules for codecs trained by duplex itself: the official rates,
        frame and 2048-entry codebooks (so it pairs with Moshi-vocabulary LMs), narrower everywhere else."""
        cfg = cls(seanet=SEANetConfig(n_filters=16, dimension=256),
                  quantizer=QuantizerConfig(dimension=64, n_q=8, bins=2048, input_dimension=256,
                                            output_dimension=256),
                  transformer=TransformerConfig(d_model=256, num_heads=4, num_layers=2, dim_feedforward=1024,
                                                input_dimension=256, output_dimensions=[256]))
        cfg.validate()
        return cfg

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MimiConfig":
        top = _strict_fields(cls, data, "mimi config")
        for key in ("seanet", "quantizer", "transformer"):
            if key not in top:
                raise ConfigError(f"mimi config: missing section {key!r}")
        cfg = cls(
            sample_rate=int(top.get("sample_rate", 24000)),
            channels=int(top.get("channels", 1)),
            frame_rate=float(top.get("frame_rate", 12.5)),
            seanet=SEANetConfig(**_strict_fields(SEANetConfig, top["seanet"], "mimi config 'seanet'")),
            quantizer=QuantizerConfig(**_strict_fields(QuantizerConfig, top["quantizer"], "mimi config 'quantizer'")),
            transformer=TransformerConfig(
                **_strict_fields(TransformerConfig, top["transformer"], "mimi config 'transformer'")),
        )
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, config: "MimiConfig | Mapping[str, Any] | str | os.PathLike | None") -> "MimiConfig":
        """Accept ``None`` (official), a ``MimiConfig``, a dict in the official layout or a JSON file path."""
        if config is None:
            return cls.official()
        if isinstance(config, MimiConfig):
            config.validate()
            return config
        if isinstance(config, (str, os.PathLike)):
            return cls.from_dict(read_json_config(config, ConfigError, "mimi config"))
        return cls.from_dict(config)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_official_dict(self) -> dict:
        """The config in the official JSON layout (what ``Mimi.from_checkpoint(config=...)`` and Kyutai's loader
        read): the fields of this implementation that the official layout does not have are left out."""
        data = self.to_dict()
        data["seanet"].pop("activation_params", None)
        data["seanet"].pop("lstm", None)
        data["quantizer"].pop("n_q_semantic", None)
        for key in ("bias_ff", "bias_attn"):
            data["transformer"].pop(key, None)
        return data

    def validate(self) -> None:
        _require(self.channels == 1, "only mono codecs are supported (channels must be 1)")
        self.seanet.validate()
        self.quantizer.validate()
        self.transformer.validate()
        _require(self.seanet.dimension == self.transformer.d_model,
                 "seanet.dimension must equal transformer.d_model")
        _require(self.quantizer.input_dimension == self.seanet.dimension
                 and self.quantizer.output_dimension == self.seanet.dimension,
                 "quantizer input/output dimensions must equal seanet.dimension")
        _require(self.sample_rate % self.seanet.hop_length == 0,
                 "sample_rate must be a multiple of the SEANet hop length")
        stride = self.encoder_frame_rate / self.frame_rate
        _require(stride >= 1 and abs(stride - round(stride)) < 1e-9,
                 "frame_rate must divide the encoder frame rate (sample_rate / prod(ratios))")
        _require(abs(self.sample_rate / self.frame_rate - self.frame_size) < 1e-9,
                 "sample_rate / frame_rate must be a whole number of samples")
