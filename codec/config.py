"""Mimi codec configuration: dataclasses mirroring the official JSON layout.

The official layout is ``{"sample_rate", "channels", "frame_rate", "seanet": {...}, "quantizer": {...},
"transformer": {...}}`` (docs/kyutai-compat.md §1.1). ``MimiConfig.from_dict`` reads it strictly: unknown keys and
values this implementation does not support are errors that name the key, so a config for another model is never
silently half-understood.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

from .errors import ConfigError
from .io.files import readable_file

# A config is a few kilobytes; a file this large given as one is a checkpoint or some other file, which reading
# whole (a 7B checkpoint is 15 GB) would only take memory and time to say "not JSON".
MAX_CONFIG_BYTES = 16 << 20


def _strict_fields(cls, data: Mapping[str, Any], where: str) -> dict:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a JSON object, got {shown(data)}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {listed(unknown)}; known keys are {listed(sorted(names))}")
    return dict(data)


def listed(names: list, limit: int = 8) -> str:
    """``names`` as a message lists them, the first ``limit`` only (another model's config has dozens of keys, and
    an error is one line)."""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{names[:limit]}{more}"


def read_json_config(path, error: type, what: str) -> dict:
    """The JSON value in ``path`` (the caller checks that it is an object); a path that is not a readable regular
    file (``files.readable_file``: a named pipe would block), a file too large to be a config, text that is not
    UTF-8 or not JSON become ``error`` with a one-line message naming the file."""
    path = readable_file(path, what, error)
    size = os.path.getsize(path)
    if size > MAX_CONFIG_BYTES:
        raise error(f"{what} {path} is not a config: {size} bytes, a config is a small JSON file (is it a "
                    f"checkpoint?)")
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise error(f"{what} {path} is not valid JSON: {e}") from None
    except UnicodeDecodeError:
        raise error(f"{what} {path} is not a JSON file: not UTF-8 text (a binary file?)") from None
    except RecursionError:
        raise error(f"{what} {path} is not a config: JSON nested too deeply") from None
    except OSError as e:  # a read error after the checks (a file removed meanwhile, an I/O error)
        raise error(f"{what} {path} cannot be read ({e.strerror or e})") from None


def loaded_from(path, what: str, e: Exception) -> str:
    """The message of the config error ``e`` (one that starts with ``what``) with the file it came from named:
    "LM config: dim must be..." read from ``path`` becomes "LM config PATH: dim must be..."."""
    message = str(e)
    if message.startswith(what + ":"):
        return f"{what} {os.fspath(path)}{message[len(what):]}"
    return f"{what} {os.fspath(path)}: {message}"


def shown(value: Any) -> str:
    """A JSON value as a message shows it: its kind, and short values themselves."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the string {value[:40]!r}" + ("..." if len(value) > 40 else "")
    if isinstance(value, numbers.Real):
        return repr(float(value)) if isinstance(value, float) and not math.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


# Each type a config field is declared with: (test, what the message calls it). JSON's true is not a number here
# (Python's bool is an int), and a list may come as a tuple from Python code.
_TYPE_CHECKS = {
    int: (_is_int, "an integer"),
    float: (_is_number, "a finite number"),
    bool: (lambda v: isinstance(v, bool), "true or false"),
    str: (lambda v: isinstance(v, str), "a string"),
    list: (lambda v: isinstance(v, (list, tuple)), "a list"),
    dict: (lambda v: isinstance(v, Mapping), "an object"),
}


@functools.lru_cache(maxsize=None)
def _field_types(cls) -> tuple:
    """(name, type, optional) of each field of the config dataclass ``cls``, from its annotations."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        args = typing.get_args(kind)
        optional = typing.get_origin(kind) is Union and type(None) in args
        if optional:
            kind = next(a for a in args if a is not type(None))
        out.append((f.name, kind, optional))
    return tuple(out)


def type_problem(config) -> Optional[str]:
    """The first field of the config dataclass instance ``config`` whose value is not of its declared type, as
    "NAME must be an integer, got the string 'abc'"; None when all are. Checked before any value is used: a size
    that is a string or null would otherwise end in a TypeError deep inside the model's construction."""
    for name, kind, optional in _field_types(type(config)):
        value = getattr(config, name)
        if value is None and optional:
            continue
        if dataclasses.is_dataclass(kind):
            test, described = (lambda v, k=kind: isinstance(v, k)), "an object"
        else:
            test, described = _TYPE_CHECKS[kind]
        if not test(value):
            return f"{name} must be {described}{' or null' if optional else ''}, got {shown(value)}"
    return None


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(f"Mimi config: {message}")


def _require_types(config, section: str) -> None:
    problem = type_problem(config)
    _require(problem is None, f"{section}{problem}")


def _require_sizes(config, section: str, names: str, low: int = 1) -> None:
    """Each field in ``names`` (space-separated) is at least ``low`` (sizes: a zero or negative one would only fail
    later, inside torch, as a tensor of negative dimension)."""
    for name in names.split():
        value = getattr(config, name)
        _require(value >= low, f"{section}{name} must be at least {low}, got {value}")


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
        _require_types(self, "seanet.")
        _require(all(_is_int(r) for r in self.ratios), "seanet.ratios must be a list of integers")
        _require(len(self.ratios) > 0 and all(r > 0 for r in self.ratios), "seanet.ratios must be positive")
        _require_sizes(self, "seanet.", "channels dimension n_filters compress dilation_base kernel_size "
                       "residual_kernel_size last_kernel_size")
        _require_sizes(self, "seanet.", "n_residual_layers disable_norm_outer_blocks lstm", low=0)
        _require(self.causal, "seanet.causal must be true: only causal (streaming) codecs are supported")
        _require(self.activation == "ELU", f"seanet.activation {self.activation!r} is not supported (only 'ELU')")
        # 'weight_norm' checkpoints are folded at load time, so both norms describe the same computation.
        _require(self.norm in ("none", "weight_norm"), f"seanet.norm {self.norm!r} is not supported")
        _require(self.pad_mode == "constant", f"seanet.pad_mode {self.pad_mode!r} is not supported")
        _require(self.true_skip, "seanet.true_skip must be true (conv shortcuts are not supported)")
        _require(self.lstm == 0, "seanet.lstm is not supported (Mimi has no LSTM)")
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
        _require_types(self, "quantizer.")
        _require_sizes(self, "quantizer.", "dimension input_dimension output_dimension")
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
        _require_types(self, "transformer.")
        _require(all(_is_int(d) for d in self.output_dimensions),
                 "transformer.output_dimensions must be a list of integers")
        _require_sizes(self, "transformer.", "d_model num_heads dim_feedforward input_dimension")
        _require_sizes(self, "transformer.", "num_layers", low=0)
        _require(self.max_period > 0, f"transformer.max_period must be positive, got {self.max_period}")
        _require(self.causal, "transformer.causal must be true")
        _require(self.conv_layout, "transformer.conv_layout must be true")
        _require(self.gating == "none", f"transformer.gating {self.gating!r} is not supported (Mimi uses 'none')")
        _require(self.norm == "layer_norm", f"transformer.norm {self.norm!r} is not supported (Mimi: 'layer_norm')")
        _require(self.positional_embedding == "rope",
                 f"transformer.positional_embedding {self.positional_embedding!r} is not supported (Mimi: 'rope')")
        _require(self.layer_scale is not None and self.layer_scale > 0,
                 "transformer.layer_scale must be positive (Mimi uses LayerScale)")
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
        top = _strict_fields(cls, data, "Mimi config")
        for key in ("seanet", "quantizer", "transformer"):
            if key not in top:
                raise ConfigError(f"Mimi config: missing section {key!r}")
        cfg = cls(
            sample_rate=top.get("sample_rate", 24000),
            channels=top.get("channels", 1),
            frame_rate=top.get("frame_rate", 12.5),
            seanet=SEANetConfig(**_strict_fields(SEANetConfig, top["seanet"], "Mimi config: section 'seanet'")),
            quantizer=QuantizerConfig(
                **_strict_fields(QuantizerConfig, top["quantizer"], "Mimi config: section 'quantizer'")),
            transformer=TransformerConfig(
                **_strict_fields(TransformerConfig, top["transformer"], "Mimi config: section 'transformer'")),
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
            data = read_json_config(config, ConfigError, "Mimi config")
            try:
                return cls.from_dict(data)
            except ConfigError as e:  # which file is wrong, not only what
                raise ConfigError(loaded_from(config, "Mimi config", e)) from None
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
        _require_types(self, "")
        _require_sizes(self, "", "sample_rate")
        _require(self.frame_rate > 0, f"frame_rate must be positive, got {self.frame_rate}")
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
