"""Moshi language-model configuration in the official keyword layout (docs/kyutai-compat.md §2.1).

``LMConfig.from_dict`` reads the keyword dict Kyutai's loader passes to its ``LMModel`` (``moshi7b_config.json``,
or a repository's ``config.json``). It is strict: unknown keys are errors. Keys the official loader drops or
ignores are accepted and handled the same way: ``depformer_causal`` is discarded, ``depformer_context`` and
``depformer_max_period`` are recorded but unused (the depth transformer has no window and no positional
encoding), and the non-model keys of a repository ``config.json`` (file names, ``lm_gen_config``...) are kept
aside in ``repo_extras``. The newer keys of Kyutai's ``LMModel`` are supported (``kv_repeat``,
``depformer_kv_repeat``, ``depformer_norm``, ``depformer_low_rank_embeddings``) or refused with the checkpoint
family that uses them (``UNSUPPORTED``; docs/kyutai-compat.md, "Newer config keys").
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Optional, Tuple

from codec.config import listed, loaded_from, read_json_config, shown, type_problem

from ..errors import LMConfigError

# Keys of a repository config.json that are not LMModel arguments (Kyutai's CheckpointInfo pops them).
REPO_KEYS = ("moshi_name", "mimi_name", "mimi_config_name", "tokenizer_name", "lora_name", "model_type",
             "lm_gen_config", "tts_config", "stt_config", "model_id", "quantize", "lora", "lora_rank", "lora_scaling")
# Accepted for compatibility, dropped as the official loader drops them.
DROPPED_KEYS = ("depformer_causal",)
# The types of the repository keys kept aside (Kyutai's CheckpointInfo reads the names as file names and the
# *_config entries as keyword dicts): a wrong one is an error here, not a file name silently left unused.
REPO_KEY_TYPES = {**{key: (str, "a string") for key in REPO_KEYS},
                  **{key: (Mapping, "an object") for key in ("lm_gen_config", "tts_config", "stt_config",
                                                               "model_id")},  # model_id: {"sig", "epoch"}
                  # Kyutai's q8 repositories: the weights file holds int8 codes (told from the tensors here too)
                  "quantize": (bool, "true or false"),
                  # LoRA (Kyutai's get_moshi_lm pops them; moshi-finetune writes them beside its adapters): the
                  # adapter's rank and scaling, and whether the files come with an adapter (``ModelFiles``)
                  "lora": (bool, "true or false"), "lora_rank": (int, "an integer"),
                  "lora_scaling": ((int, float), "a number")}
# Options whose default is the only supported value: (key, default).
FIXED_OPTIONS = {
    "demux_second_text_stream": False, "demux_second_stream": False, "norm_emb": False, "bias_proj": False,
    "depformer_weights_per_step_schedule": None, "extra_heads_num_heads": 0,
    "conditioners": None, "fuser": None, "cross_attention": False,
}
FIXED_IGNORED = ("extra_heads_dim",)
# Who uses each option duplex refuses, for the refusal: a user learns which kind of checkpoint it is, not only
# that a key is unknown. (Kyutai's TTS: kyutai/tts-1.6b-en_fr; STT: kyutai/stt-*; both run Kyutai's LMModel but
# are not dialogue models.)
UNSUPPORTED = {
    "demux_second_text_stream": "Kyutai's TTS models (two text streams in one)",
    "demux_second_stream": "Kyutai's TTS models (two text streams in one)",
    "depformer_weights_per_step_schedule": "Kyutai's TTS models (depth weights shared across codebooks)",
    "cross_attention": "Kyutai's TTS models (cross-attention to a speaker embedding)",
    "conditioners": "Kyutai's TTS and Hibiki models (conditioning inputs)",
    "fuser": "Kyutai's TTS and Hibiki models (conditioning inputs)",
    "extra_heads_num_heads": "Kyutai's STT models (voice-activity heads)",
    "norm_emb": "no published dialogue checkpoint",
    "bias_proj": "no published dialogue checkpoint",
}
# The norms Kyutai's create_norm_fn makes, for depformer_norm (built by duplex.model.layers.make_norm).
NORMS = ("rms_norm", "rms_norm_f32", "layer_norm", "layer_norm_f32")
# Keys of the newer options, written by ``to_dict`` only when not at their default (so files duplex writes for
# Moshi-shaped models stay byte-identical, and Kyutai's loader never gets depformer_kv_repeat=None).
NEWER_DEFAULTS = {"kv_repeat": 1, "depformer_kv_repeat": None, "depformer_norm": None,
                  "depformer_low_rank_embeddings": None}
# NVIDIA's PersonaPlex (docs/kyutai-compat.md, "PersonaPlex"): its depth transformer has a step per audio stream,
# the user's included (dep_q == n_q = 16), while the model's and the user's streams stay 8 codebooks wide each
# (NVIDIA's AUDIO_TOKENS_PER_STREAM). That layout is how a PersonaPlex config is told; no key names it.
PERSONAPLEX_STREAM_CODEBOOKS = 8


@dataclass
class LMConfig:
    PRESETS: ClassVar[Tuple[str, ...]] = ("moshi_7b", "personaplex_7b", "small", "default")  # classmethods of these names build them

    dim: int = 4096
    text_card: int = 32000
    existing_text_padding_id: int = 3
    existing_text_end_padding_id: int = 0
    n_q: int = 16
    dep_q: int = 8
    card: int = 2048
    num_heads: int = 32
    num_layers: int = 32
    hidden_scale: float = 4.125
    causal: bool = True
    layer_scale: Optional[float] = None
    context: int = 3000
    max_period: float = 10000.0
    gating: str = "silu"
    norm: str = "rms_norm_f32"
    positional_embedding: str = "rope"
    depformer_dim: int = 1024
    depformer_dim_feedforward: int = 4224
    depformer_num_heads: int = 16
    depformer_num_layers: int = 6
    depformer_layer_scale: Optional[float] = None
    depformer_multi_linear: bool = True
    depformer_context: Optional[int] = 8  # ignored, as in the official model (forced to no window)
    depformer_max_period: float = 10000.0  # unused: no positional encoding in the depth transformer
    depformer_gating: str = "silu"
    depformer_pos_emb: str = "none"
    depformer_weights_per_step: bool = True
    delays: list = field(default_factory=lambda: [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1])
    text_card_out: Optional[int] = None
    # Grouped KV heads: num_heads / kv_repeat key/value heads, each shared by kv_repeat consecutive query heads.
    kv_repeat: int = 1
    depformer_kv_repeat: Optional[int] = None  # the depth transformer's; None: kv_repeat (Kyutai passes it on)
    depformer_norm: Optional[str] = None  # a norm per codebook before the depth transformer's output heads
    depformer_low_rank_embeddings: Optional[int] = None  # depth embeddings of this width, projected to depformer_dim
    repo_extras: dict = field(default_factory=dict)

    # ------------------------------------------------------------------------------------------- derived
    @property
    def num_streams(self) -> int:
        """Token streams per time step: text + n_q audio (17 for Moshi)."""
        return 1 + self.n_q

    @property
    def personaplex(self) -> bool:
        """NVIDIA's PersonaPlex layout (dep_q == n_q): stepped as NVIDIA's ``LMGen`` steps it (the generator's
        module docstring), and able to take system prompts (``duplex.model.prompts``)."""
        return self.dep_q == self.n_q

    @property
    def model_codebooks(self) -> int:
        """Audio streams the generator returns (dep_q for Kyutai's models; 8 for PersonaPlex, whose depth steps
        past the 8th predict the user's stream and never change what is returned)."""
        return PERSONAPLEX_STREAM_CODEBOOKS if self.personaplex else self.dep_q

    @property
    def user_codebooks(self) -> int:
        """Audio streams the generator reads from the user (n_q - dep_q = 8 for Moshi, n_q - 8 = 8 for
        PersonaPlex)."""
        return self.n_q - self.model_codebooks

    @property
    def max_delay(self) -> int:
        return max(self.delays)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def num_kv_heads(self) -> int:
        """Key/value heads of the temporal transformer (what its KV ring stores)."""
        return self.num_heads // self.kv_repeat

    @property
    def depformer_kv_heads(self) -> int:
        """Key/value heads of the depth transformer."""
        repeat = self.depformer_kv_repeat if self.depformer_kv_repeat is not None else self.kv_repeat
        return self.depformer_num_heads // repeat

    @staticmethod
    def gated_hidden(dim: int, dim_feedforward: int) -> int:
        """Hidden width of the SiLU-gated FFN: 2/3 of dim_feedforward, or 21*dim/8 when dim_feedforward == 4*dim."""
        return 21 * dim // 8 if dim_feedforward == 4 * dim else 2 * dim_feedforward // 3

    @property
    def hidden_dim(self) -> int:
        return self.gated_hidden(self.dim, int(self.hidden_scale * self.dim))

    @property
    def depformer_hidden_dim(self) -> int:
        return self.gated_hidden(self.depformer_dim, self.depformer_dim_feedforward)

    @property
    def text_vocab_out(self) -> int:
        return self.text_card_out or self.text_card

    # ----------------------------------------------------------------------------------------------- I/O
    @classmethod
    def moshi_7b(cls) -> "LMConfig":
        """Moshiko / Moshika 7B (and same-architecture fine-tunes such as PersonaPlex)."""
        cfg = cls()
        cfg.validate()
        return cfg

    @classmethod
    def personaplex_7b(cls) -> "LMConfig":
        """NVIDIA's PersonaPlex 7B: Moshi 7B with a 16-step depth transformer, as NVIDIA's loader builds it
        (``get_moshi_lm`` takes Moshi 7B's keywords from code, sets ``dep_q = 16`` and reads no config file)."""
        cfg = cls(dep_q=16)
        cfg.validate()
        return cfg

    @classmethod
    def small(cls) -> "LMConfig":
        """The shape of duplex's own small default model: temporal 512 x 8 layers, depth 256 x 2, Moshi's
        vocabularies, streams, delays and 3000-step context (fast enough for real time on 2 CPU cores)."""
        cfg = cls(dim=512, num_heads=8, num_layers=8, depformer_dim=256, depformer_num_heads=4,
                  depformer_num_layers=2, depformer_dim_feedforward=int(4.125 * 256))
        cfg.validate()
        return cfg

    @classmethod
    def default(cls) -> "LMConfig":
        """The shape of the model duplex trains and ships (docs/training.md, "Choosing the default model"):
        temporal 256 x 6 layers with an 8 s attention window, depth 128 x 1, Moshi's streams and delays. The text
        vocabulary is a placeholder: ``duplex train lm`` sizes it to the tokenizer it trains with."""
        cfg = cls(dim=256, num_heads=4, num_layers=6, context=100, text_card=256, depformer_dim=128,
                  depformer_num_heads=2, depformer_num_layers=1, depformer_dim_feedforward=int(4.125 * 128))
        cfg.validate()
        return cfg

    @classmethod
    def preset(cls, name: str) -> "LMConfig":
        if name not in cls.PRESETS:
            raise LMConfigError(f"unknown LM preset {name!r}; presets: {', '.join(sorted(cls.PRESETS))} (or a "
                                f"JSON config file)")
        return getattr(cls, name)()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LMConfig":
        if not isinstance(data, Mapping):
            raise LMConfigError(f"LM config: expected a JSON object, got {shown(data)}")
        data = dict(data)
        extras = {k: data.pop(k) for k in REPO_KEYS if k in data}
        for key, value in extras.items():
            kind, described = REPO_KEY_TYPES[key]
            if value is not None and not isinstance(value, kind):
                raise LMConfigError(f"LM config: {key} must be {described} or null, got {shown(value)}")
        family = _other_family(extras)
        if family:
            raise LMConfigError(f"LM config: {family} is not a dialogue model duplex runs")
        for key in DROPPED_KEYS + FIXED_IGNORED:
            data.pop(key, None)
        for key, default in FIXED_OPTIONS.items():
            if key in data:
                value = data.pop(key)
                if value != default and not (default is None and value in ({}, [])):
                    raise LMConfigError(f"LM config: {key}={_brief(value)} is not supported (only "
                                        f"{default!r}; used by {UNSUPPORTED[key]})")
        names = {f.name for f in dataclasses.fields(cls)} - {"repo_extras"}
        unknown = sorted(set(data) - names)
        if unknown:
            raise LMConfigError(f"LM config: unknown key(s) {listed(unknown)}")
        cfg = cls(**data, repo_extras=extras)
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, config: "LMConfig | Mapping[str, Any] | str | os.PathLike | None") -> "LMConfig":
        """``None`` (Moshi 7B, the keywords Kyutai's ``LMModel`` defaults to), an ``LMConfig``, a dict in the
        official keyword layout, a JSON file path, or a preset name (``PRESETS``; a file of that name wins). Which
        config an LM *file* goes with (the one beside it, never an assumed 7B) is ``ModelFiles``' business
        (duplex/runtime/checkpoints.py)."""
        if config is None:
            return cls.moshi_7b()
        if isinstance(config, LMConfig):
            config.validate()
            return config
        if isinstance(config, (str, os.PathLike)):
            if isinstance(config, str) and config in cls.PRESETS and not os.path.isfile(config):
                return cls.preset(config)
            if os.fspath(config) and not os.path.lexists(config) and not os.fspath(config).endswith(".json"):
                raise LMConfigError(f"LM config not found: {os.fspath(config)} (neither a file nor a preset: "
                                    f"{', '.join(cls.PRESETS)})")
            data = read_json_config(config, LMConfigError, "LM config")
            try:
                return cls.from_dict(data)
            except LMConfigError as e:  # which file is wrong, not only what
                raise LMConfigError(loaded_from(config, "LM config", e)) from None
        return cls.from_dict(config)

    def to_dict(self) -> dict:
        """The official keyword layout (what ``from_dict`` reads)."""
        data = dataclasses.asdict(self)
        extras = data.pop("repo_extras")
        if data["text_card_out"] is None:
            del data["text_card_out"]
        for key, default in NEWER_DEFAULTS.items():
            if data[key] == default:
                del data[key]
        return {**data, **extras}

    def validate(self) -> None:
        def require(cond: bool, message: str) -> None:
            if not cond:
                raise LMConfigError(f"LM config: {message}")

        # Types and sizes first: every later check, and the model's construction, computes with them.
        problem = type_problem(self)
        require(problem is None, str(problem))
        require(all(isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in self.delays),
                "delays must be a list of integers")
        for name in ("dim", "text_card", "n_q", "card", "num_heads", "num_layers", "depformer_dim",
                     "depformer_dim_feedforward", "depformer_num_heads", "depformer_num_layers"):
            require(getattr(self, name) >= 1, f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("hidden_scale", "max_period", "depformer_max_period"):
            require(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        for name in ("existing_text_padding_id", "existing_text_end_padding_id"):  # text token ids
            require(0 <= getattr(self, name) < self.text_card,
                    f"{name} must be a text token id (0 to text_card - 1 = {self.text_card - 1}), got "
                    f"{getattr(self, name)}")
        require(self.causal, "causal must be true")
        require(self.gating == "silu" and self.depformer_gating == "silu", "only 'silu' gating is supported")
        require(self.norm == "rms_norm_f32", f"norm {self.norm!r} is not supported (only 'rms_norm_f32')")
        require(self.positional_embedding == "rope", "positional_embedding must be 'rope'")
        require(self.depformer_pos_emb == "none", "depformer_pos_emb must be 'none'")
        require(self.layer_scale is None and self.depformer_layer_scale is None, "layer_scale is not supported")
        require(self.depformer_weights_per_step, "depformer_weights_per_step must be true")
        require(self.dim % self.num_heads == 0 and self.head_dim % 2 == 0, "dim must split into even heads")
        require(self.depformer_dim % self.depformer_num_heads == 0, "depformer_dim must split into heads")
        require(self.dep_q != 0, "dep_q = 0 (no depth transformer: Kyutai's STT models) is not supported")
        require(0 < self.dep_q <= self.n_q, "need 0 < dep_q <= n_q")
        for name, heads in (("kv_repeat", self.num_heads), ("depformer_kv_repeat", self.depformer_num_heads)):
            repeat = getattr(self, name)
            require(repeat is None or (repeat >= 1 and heads % repeat == 0),
                    f"{name} must be at least 1 and divide the {heads} heads, got {repeat}")
        require(self.depformer_kv_repeat is not None or self.depformer_num_heads % self.kv_repeat == 0,
                f"kv_repeat ({self.kv_repeat}, which the depth transformer inherits as Kyutai's does) must divide "
                f"depformer_num_heads ({self.depformer_num_heads}), or give depformer_kv_repeat")
        require(self.depformer_norm is None or self.depformer_norm in NORMS,
                f"depformer_norm {self.depformer_norm!r} is not one of {', '.join(NORMS)}")
        require(self.depformer_low_rank_embeddings is None or self.depformer_low_rank_embeddings >= 1,
                f"depformer_low_rank_embeddings must be at least 1, got {self.depformer_low_rank_embeddings}")
        require(not self.personaplex or self.n_q == 2 * PERSONAPLEX_STREAM_CODEBOOKS,
                f"dep_q == n_q is NVIDIA's PersonaPlex layout, whose streams are {PERSONAPLEX_STREAM_CODEBOOKS} "
                f"codebooks each (n_q = {2 * PERSONAPLEX_STREAM_CODEBOOKS}); got n_q = {self.n_q}")
        require(len(self.delays) == self.num_streams,
                f"delays has {len(self.delays)} entries, expected 1 + n_q = {self.num_streams}")
        require(all(d >= 0 for d in self.delays), "delays must be non-negative")
        require(self.context > 0, "context must be positive")
        require(self.text_vocab_out == self.text_card, "text_card_out different from text_card is not supported")


def _brief(value: Any) -> str:
    """``value`` for a one-line message (a conditioner dict can be long)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _other_family(extras: Mapping[str, Any]) -> Optional[str]:
    """The non-dialogue family a repository config's keys name (Kyutai's CheckpointInfo: ``model_type`` is "moshi"
    or "hibiki"; ``tts_config`` / ``stt_config`` are set by its TTS / STT repositories), else None."""
    model_type = extras.get("model_type")
    if model_type not in (None, "moshi"):
        what = {"hibiki": "Kyutai's Hibiki (speech translation)", "stt": "Kyutai's STT (speech to text)",
                "tts": "Kyutai's TTS (text to speech)"}.get(model_type, "a model of another kind")
        return f"model_type {model_type!r}: {what}"
    for key, what in (("tts_config", "Kyutai's TTS"), ("stt_config", "Kyutai's STT")):
        if extras.get(key):
            return f"{key} is set: {what}"
    return None


def lm_config_beside(checkpoint: "str | os.PathLike") -> Optional[str]:
    """The config that travels with an LM file: ``NAME.json`` beside ``NAME.safetensors`` (as duplex ships its
    model), else the folder's ``config.json`` (a training run of ``duplex train lm``, or a model repository);
    None when there is neither."""
    checkpoint = os.fspath(checkpoint)
    stem, _ = os.path.splitext(checkpoint)
    for candidate in (stem + ".json", os.path.join(os.path.dirname(checkpoint) or ".", "config.json")):
        if os.path.isfile(candidate):
            return candidate
    return None
