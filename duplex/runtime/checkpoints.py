"""Which files make a model: the LM, its config, the codec (Mimi) and its config, the text tokenizer.

A library question, not a command-line one: ``Engine.from_checkpoints("run/model.safetensors")`` must find the
config a training run wrote beside the file just as ``duplex serve --lm`` does, and a published repository in the
Hugging Face cache is read the same way by every command. So the rules live here, once, in the manner of Kyutai's
``CheckpointInfo`` (moshi/models/loaders.py: ``from_hf_repo``, then ``get_mimi`` / ``get_moshi`` /
``get_text_tokenizer``): a ``ModelFiles`` names the files, its constructors find them, its ``load`` reads them.

Nothing is ever downloaded: a missing file is named with the command that fetches it. The rules:

* the shipped default model (``ModelFiles.default()``): files inside the package;
* an LM file (``ModelFiles.for_lm``): its config beside it (``NAME.json``, else the folder's ``config.json``: a
  ``duplex train lm`` run, or a model repository), else its tensors are checked against Moshi 7B's shapes (Kyutai's
  published ``model.safetensors`` comes without a config, docs/kyutai-compat.md §2.1), else an error: an LM is never
  silently taken for a 7B. Its codec is the one its files name: a repository ``config.json``'s ``mimi_name``;
  Kyutai's Mimi beside a Moshi 7B (it was trained on that codec's codes); else the shipped codec (the codec of the
  models duplex trains; ``$DUPLEX_MIMI`` overrides it). Its tokenizer is ``tokenizer.model`` beside it (a run),
  else the one a repository names, else ``duplex-tokenizer.model`` beside ``duplex-lm.safetensors`` (the shipped
  files, or a copy of them, given by path);
* a repository in the local Hugging Face cache (``ModelFiles.from_hf_cache``): its ``config.json`` names the files
  as Kyutai's ``CheckpointInfo`` reads them (``moshi_name``, ``mimi_name``, ``mimi_config_name``,
  ``tokenizer_name``, also ``hf://owner/repo/path`` in another repository), and a repository without one is Moshi
  7B with Kyutai's file names; PersonaPlex repositories (``PERSONAPLEX_REPOS``) are read as NVIDIA's code reads
  them: Kyutai's file names, the config from code, their ``config.json`` ignored;
* a codec alone (``codec_files``, the ``duplex codec`` commands): a path, ``$DUPLEX_MIMI``, or the shipped codec,
  with the config that travels with the file (``codec_config_beside``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
from safetensors import safe_open

from codec import SHIPPED_CODEC, SHIPPED_CONFIG, CheckpointError, Mimi
from codec.io.checkpoint import checkpoint_format, normalize_keys
from codec.io.files import readable_file

from ..errors import ModelFilesError, PromptError
from ..model.config import LMConfig, lm_config_beside
from ..model.lm import MoshiLM, default_dtype
from ..model.lora import lora_config_beside, lora_name
from ..model.tokenizer import TextTokenizer
from .quantization import check_quantize
from .voices import VOICES_ARCHIVE, voice_folder

log = logging.getLogger(__name__)

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")
# duplex's own default model (README, "The default model"; how it was trained: docs/training.md): the LM in
# bfloat16 in Kyutai's key layout with its keyword config, its tokenizer, and the codec duplex ships.
SHIPPED_LM = os.path.join(WEIGHTS_DIR, "duplex-lm.safetensors")
SHIPPED_LM_CONFIG = os.path.join(WEIGHTS_DIR, "duplex-lm.json")
SHIPPED_TOKENIZER = os.path.join(WEIGHTS_DIR, "duplex-tokenizer.model")
SHIPPED_VOICES = os.path.join(WEIGHTS_DIR, "voices")  # NVIDIA's voice names for the default model (docs/offline.md)
# LoRA adapters for the default model shipped with duplex, one folder each (NAME/lora.safetensors + config.json, in
# moshi-finetune's layout): --lora NAME finds them (demos/lora-persona: how the persona adapter was made)
SHIPPED_ADAPTERS = os.path.join(WEIGHTS_DIR, "adapters")
MIMI_ENV = "DUPLEX_MIMI"  # the codec to use instead of the shipped one where none is given

# The file names of a repository without config.json, as Kyutai's loader defaults them (docs/kyutai-compat.md §2.1).
KYUTAI_NAMES = {"moshi_name": "model.safetensors", "mimi_name": "tokenizer-e351c8d8-checkpoint125.safetensors",
                "tokenizer_name": "tokenizer_spm_32k_3.model"}
KYUTAI_MIMI = KYUTAI_NAMES["mimi_name"]
# The repositories the README lists, and what they are (any other repository in Kyutai's layout works too).
KNOWN_REPOS = {
    "kyutai/moshiko-pytorch-bf16": "Moshiko 7B (male voice), bfloat16",
    "kyutai/moshika-pytorch-bf16": "Moshika 7B (female voice), bfloat16",
    # Kyutai's int8 exports of the two (scripts/export_quantized.py): model.q8.safetensors in bitsandbytes' layout,
    # "quantize": true, and the codec and tokenizer named in the bf16 repository (hf://...), which must be cached too
    "kyutai/moshiko-pytorch-q8": "Moshiko 7B, int8 weights (codec and tokenizer from kyutai/moshiko-pytorch-bf16)",
    "kyutai/moshika-pytorch-q8": "Moshika 7B, int8 weights (codec and tokenizer from kyutai/moshika-pytorch-bf16)",
    "kyutai/moshika-rl-seamless": "Moshika 7B post-trained with RL for interactivity (Kyutai, June 2026)",
    "nvidia/personaplex-7b-v1": "PersonaPlex 7B (NVIDIA's Moshi fine-tune with voice and role prompts)",
    "kyutai/personaplex-rl-seamless": "PersonaPlex 7B post-trained with RL for interactivity (Kyutai, June 2026)",
    "nu-dialogue/j-moshi": "J-Moshi 7B, Japanese (Nagoya University's Moshiko fine-tune)",
    "nu-dialogue/j-moshi-ext": "J-Moshi-ext 7B, Japanese, also trained on synthesized dialogues",
}
# Repositories run with NVIDIA's PersonaPlex code (its README and the RL model card say so), which takes the LM's
# config from code (Moshi 7B with a 16-step depth transformer) and never reads the repository's config.json (its
# server fetches the file only to count downloads); the file names are Kyutai's defaults. Their config.json is
# therefore ignored here too, and the LM config is the PersonaPlex preset.
PERSONAPLEX_REPOS = ("nvidia/personaplex-7b-v1", "kyutai/personaplex-rl-seamless")
PERSONAPLEX_PRESET = "personaplex_7b"  # the LMConfig preset of NVIDIA's code's keywords, when duplex has it
DEFAULT_SOURCE = "the default model"  # ModelFiles.source of the shipped default model
RUN_TOKENIZER = "tokenizer.model"  # what ``duplex train lm`` writes beside its model

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class ModelFiles:
    """The files of one model, as paths. Build it with ``default``, ``for_lm`` or ``from_hf_cache`` (or directly,
    every file named); ``load`` reads it.

    ``lm_config`` is a JSON file in Kyutai's keyword layout, a preset name (``LMConfig.PRESETS``: ``"moshi_7b"``
    for Kyutai's published 7B) or an ``LMConfig``; ``mimi_config`` None is the official Mimi architecture
    (Kyutai's file); ``tokenizer`` None: the engine writes no text pieces. ``source`` says where the files came
    from, for people.

    ``voice_prompts``: the model's voice folders (searched in order by name, ``runtime.voices.find_voice``): the
    ``voices/`` of a PersonaPlex repository's ``voices.tgz`` (extracted once, beside it), the shipped default
    model's ``voices/``. ``lora_adapters``: LoRA adapter files in Kyutai's layout (``duplex.model.lora``; a
    repository's ``lora_name``, or ``--lora``), added unfused (several share the weights, a session picks one), or
    merged into the weights when ``fuse_lora`` (one adapter). How the LM's weights are quantized is a loading option
    (``load(..., quantize=)``); a quantized file (Kyutai's q8) is told from its tensors.
    """

    lm: str
    lm_config: Union[str, LMConfig]
    mimi: str
    mimi_config: Optional[str] = None
    tokenizer: Optional[str] = None
    source: str = ""
    voice_prompts: Tuple[str, ...] = ()
    lora_adapters: Tuple[str, ...] = ()
    fuse_lora: bool = False

    # ------------------------------------------------------------------------------------------ constructors
    @classmethod
    def default(cls) -> "ModelFiles":
        """duplex's own small model, shipped with the package (every command works out of the box, offline)."""
        voices = (SHIPPED_VOICES,) if os.path.isdir(SHIPPED_VOICES) else ()
        files = cls(lm=SHIPPED_LM, lm_config=SHIPPED_LM_CONFIG, mimi=SHIPPED_CODEC, mimi_config=SHIPPED_CONFIG,
                    tokenizer=SHIPPED_TOKENIZER, source=DEFAULT_SOURCE, voice_prompts=voices)
        missing = [path for path in files.paths().values() if not os.path.isfile(path)]
        if missing:
            raise ModelFilesError(f"the default model is missing from this installation: {', '.join(missing)}")
        return files

    @classmethod
    def for_lm(cls, lm: PathLike, mimi: Optional[PathLike] = None, tokenizer: Optional[PathLike] = None,
               lm_config: Union[None, PathLike, LMConfig, Mapping] = None, mimi_config: Optional[PathLike] = None
               ) -> "ModelFiles":
        """An LM file and what goes with it: each file not given is the one found beside the LM (module
        docstring). Raises ModelFilesError when a file is missing or cannot be told."""
        lm = _checkpoint(lm, "LM checkpoint")
        config = lm_config_for(lm, lm_config)
        cfg = LMConfig.load(config)
        if mimi is None:
            if mimi_config is not None:
                raise ModelFilesError("a codec config goes with a codec file: give the LM's codec with it")
            mimi, mimi_config = lm_codec(lm, cfg)
        else:
            mimi = _existing(mimi, "Mimi checkpoint")
            mimi_config = codec_config_for(mimi, mimi_config)
        if tokenizer is None:
            tokenizer = lm_tokenizer(lm, cfg)
        else:
            tokenizer = _existing(tokenizer, "tokenizer")
        return cls(lm=lm, lm_config=config, mimi=mimi, mimi_config=mimi_config, tokenizer=tokenizer,
                   source=lm)

    @classmethod
    def from_hf_cache(cls, repo: str, cache_dir: Optional[PathLike] = None) -> "ModelFiles":
        """A published model (Kyutai's Moshiko / Moshika, NVIDIA's PersonaPlex...) in the local Hugging Face
        cache (``cache_dir``, default huggingface_hub's: ``$HF_HUB_CACHE``). Never downloads: a missing file is
        named with the ``hf download`` command that fetches it. Needs the ``huggingface_hub`` package."""
        if repo.count("/") != 1 or repo.startswith("/") or repo.endswith("/"):
            raise ModelFilesError(f"Hugging Face repository {repo!r}: expected owner/name, e.g. "
                                  "kyutai/moshiko-pytorch-bf16")
        hub = _hub()
        cache = os.fspath(cache_dir) if cache_dir is not None else hub.constants.HF_HUB_CACHE
        if not os.path.isdir(os.path.join(cache, "models--" + repo.replace("/", "--"))):
            raise ModelFilesError(f"no files of {repo} in the Hugging Face cache at {cache}: check the name; known "
                                  f"repositories: {', '.join(KNOWN_REPOS)} (if the name is right, fetch it with: "
                                  f"hf download {repo})")
        config_path = _cached(hub, repo, "config.json", cache)
        persona = repo.lower() in PERSONAPLEX_REPOS
        names = dict(KYUTAI_NAMES)
        if config_path and not persona:
            try:
                with open(config_path, encoding="utf-8") as f:
                    config = json.load(f)
            except ValueError as e:
                raise ModelFilesError(f"{config_path}: not JSON ({e})") from None
            if isinstance(config, dict):
                names.update({k: config[k] for k in KYUTAI_NAMES if isinstance(config.get(k), str)})
                if isinstance(config.get("mimi_config_name"), str):  # a codec config, as CheckpointInfo reads it
                    names["mimi_config_name"] = config["mimi_config_name"]
                if isinstance(config.get("lora_name"), str):  # an adapter, as CheckpointInfo reads it
                    names["lora_name"] = config["lora_name"]
        wanted = {key: _split_reference(repo, names[name]) for key, name in
                  (("lm", "moshi_name"), ("mimi", "mimi_name"), ("tokenizer", "tokenizer_name"),
                   ("mimi_config", "mimi_config_name"), ("lora", "lora_name")) if name in names}
        found = {key: _cached(hub, where, name, cache) for key, (where, name) in wanted.items()}
        missing = [(where, name) for key, (where, name) in wanted.items() if found[key] is None]
        if missing:
            commands = []
            for where in dict.fromkeys(w for w, _ in missing):
                files = " ".join(name for w, name in missing if w == where)
                extra = " config.json" if where == repo and config_path is None else ""
                commands.append(f"hf download {where} {files}{extra}")
            raise ModelFilesError(f"{repo}: not in the Hugging Face cache ({cache}): "
                                  + ", ".join(f"{w}/{n}" for w, n in missing) + "; fetch with: "
                                  + " && ".join(commands))
        # A repository without config.json is Moshi 7B (Kyutai's loader uses its built-in 7B keywords then);
        # PersonaPlex's is told by its name or its tensors, whatever its config.json says (NVIDIA's loader reads
        # none).
        lm_config = config_path or "moshi_7b"
        if persona or seven_b_preset(found["lm"]) == PERSONAPLEX_PRESET:
            lm_config = PERSONAPLEX_PRESET
        # NVIDIA's voices (voices.tgz), when the cache holds them: extracted once, beside the archive, as NVIDIA's
        # server does (never downloaded; a PersonaPlex repository without them is told when a voice is asked for).
        # An archive that cannot be extracted stays in the list: the model still loads, and asking for a voice
        # says why there is none (``voices.find_voice``).
        archive = _cached(hub, repo, VOICES_ARCHIVE, cache)
        voices = ()
        if archive is not None:
            try:
                voices = (voice_folder(archive),)
            except PromptError as e:
                log.warning("%s: %s", repo, e)
                voices = (archive,)
        return cls(lm=found["lm"], lm_config=lm_config, mimi=found["mimi"], mimi_config=found.get("mimi_config"),
                   tokenizer=found["tokenizer"], source=repo, voice_prompts=voices,
                   lora_adapters=(found["lora"],) if found.get("lora") else ())

    @property
    def is_default(self) -> bool:
        """Whether these are the files of the shipped default model (``ModelFiles.default()``)."""
        return self.source == DEFAULT_SOURCE

    @property
    def name(self) -> str:
        """A short name of the model for people (what the server's page shows): the repository, the LM file with
        its folder, or the default model."""
        if self.is_default:
            return "duplex default (small, synthetic conversations)"
        if self.source and self.source != self.lm:
            return self.source
        return os.path.basename(os.path.dirname(os.path.abspath(self.lm))) + "/" + os.path.basename(self.lm)

    # ----------------------------------------------------------------------------------------------- loading
    def paths(self) -> Dict[str, Union[None, str, LMConfig]]:
        """``lm``, ``lm_config``, ``mimi``, ``mimi_config``, ``tokenizer``: the files (``lm_config`` may be a preset
        name or an ``LMConfig``)."""
        return {key: getattr(self, key) for key in ("lm", "lm_config", "mimi", "mimi_config", "tokenizer")}

    def load_lm(self, device: Union[str, torch.device] = "cpu", dtype: Optional[torch.dtype] = None,
                quantize: Optional[str] = None) -> MoshiLM:
        """The LM on ``device``; dtype None: bfloat16 on CUDA, float32 on CPU. ``quantize`` (``"int8"``, ``"fp8"``):
        its linear weights quantized on the host before they go to ``device`` (a quantized file, such as Kyutai's
        q8, loads as it is; ``MoshiLM.from_checkpoint``)."""
        device = torch.device(device)
        dtype = default_dtype(device) if dtype is None else dtype
        # "none" asks for full-precision weights: refused for a quantized file
        quantize = "none" if quantize == "none" else check_quantize(quantize)
        config = LMConfig.load(self.lm_config)
        if config.repo_extras.get("lora") and not self.lora_adapters:  # Kyutai's loader would add random adapters
            log.warning("%s: its config says lora: true but no adapter file comes with it: running the weights as "
                        "they are", self.lm)
        if not self.lora_adapters:
            return MoshiLM.from_checkpoint(self.lm, config=config, device=device, dtype=dtype, quantize=quantize)
        rank, scaling = config.repo_extras.get("lora_rank"), config.repo_extras.get("lora_scaling")
        if self.fuse_lora:  # merged on the host in the model's dtype, quantized after, as asked
            if len(self.lora_adapters) > 1:
                raise ModelFilesError(f"fusing takes one adapter, {len(self.lora_adapters)} were given")
            lm = MoshiLM.from_checkpoint(self.lm, config=config, device="cpu", dtype=dtype)
            lm.add_adapter(self.lora_adapters[0], *_adapter_settings(self.lora_adapters[0], rank, scaling))
            lm.fuse_adapter_()
            if quantize not in (None, "none"):
                lm.quantize_(quantize)
            return lm.to(device)
        lm = MoshiLM.from_checkpoint(self.lm, config=config, device=device, dtype=dtype, quantize=quantize)
        for path in self.lora_adapters:
            lm.add_adapter(path, *_adapter_settings(path, rank, scaling))
        return lm

    def load_mimi(self, num_codebooks: int = 8, device: Union[str, torch.device] = "cpu") -> Mimi:
        """The codec in float32 on ``device``, quantizing with ``num_codebooks`` codebooks."""
        return Mimi.from_checkpoint(self.mimi, config=self.mimi_config, num_codebooks=num_codebooks,
                                    device=torch.device(device))

    def load_tokenizer(self) -> Optional[TextTokenizer]:
        return TextTokenizer(self.tokenizer) if self.tokenizer is not None else None

    def adapter_names(self) -> List[str]:
        """The names ``lora_adapters`` go by (``lora.lora_name``, from the paths alone), in order. A name given twice,
        or "none" (the base model's), is refused: sessions pick an adapter by its name, so two of one name would
        leave one out of reach (numbering them instead would make a name depend on the order of the options)."""
        names = [lora_name(path) for path in self.lora_adapters]
        for i, (path, name) in enumerate(zip(self.lora_adapters, names)):
            if name == "none":
                raise ModelFilesError(f"LoRA adapter {path} is named 'none', which means the base model: rename it")
            if name in names[:i]:
                raise ModelFilesError(f"LoRA adapters {self.lora_adapters[names.index(name)]} and {path} are both "
                                      f"named {name!r} (a file's stem, or the folder of a lora.safetensors); sessions "
                                      "pick an adapter by name: rename or copy one of them")
        return names

    def load(self, device: Union[str, torch.device] = "cpu", dtype: Optional[torch.dtype] = None,
             quantize: Optional[str] = None) -> Tuple[MoshiLM, Mimi, Optional[TextTokenizer]]:
        """(LM, codec, tokenizer) on ``device``; the codec with the codebooks the LM reads and writes (as Kyutai's
        loader: max(dep_q, n_q - dep_q)). The small files are read first (the LM's config, the tokenizer, the
        codec), the LM's weights last: a wrong codec or tokenizer is told in a second, not after minutes of
        reading a 7B."""
        _existing(self.lm, "LM checkpoint")
        for adapter in self.lora_adapters:
            _existing(adapter, "LoRA adapter")
        self.adapter_names()  # two adapters of one name: said now, not after the LM's weights are read
        cfg = LMConfig.load(self.lm_config)
        tokenizer = self.load_tokenizer()
        mimi = self.load_mimi(max(cfg.dep_q, cfg.user_codebooks), device)
        return self.load_lm(device, dtype, quantize), mimi, tokenizer



def adapter_file(name_or_path: PathLike) -> str:
    """What ``--lora`` names: a file, or the name of an adapter shipped for the default model (``SHIPPED_ADAPTERS``;
    a file of that name wins)."""
    path = os.fspath(name_or_path)
    shipped = os.path.join(SHIPPED_ADAPTERS, path, "lora.safetensors")
    if not os.path.exists(path) and os.sep not in path and os.path.isfile(shipped):
        return shipped
    return path


def shipped_adapters() -> Tuple[str, ...]:
    """The names of the adapters shipped for the default model."""
    if not os.path.isdir(SHIPPED_ADAPTERS):
        return ()
    return tuple(sorted(n for n in os.listdir(SHIPPED_ADAPTERS)
                        if os.path.isfile(os.path.join(SHIPPED_ADAPTERS, n, "lora.safetensors"))))


def _adapter_settings(path: PathLike, rank, scaling) -> Tuple[Optional[int], Optional[float]]:
    """An adapter's rank and scaling: the ``config.json`` beside it (moshi-finetune writes one) decides, else the
    LM's config (Kyutai's loader reads them there), else the file's own rank and Kyutai's scaling 2.0."""
    beside = lora_config_beside(path)
    if "lora_rank" in beside or "lora_scaling" in beside:
        return None, None  # read_lora takes them from there
    return rank, scaling


# ---------------------------------------------------------------------------------------------- LM files
def lm_config_for(lm: PathLike, lm_config: Union[None, PathLike, LMConfig, Mapping] = None
                  ) -> Union[str, LMConfig]:
    """The config to load the LM file ``lm`` with: ``lm_config`` when given (a file, a preset name, an ``LMConfig``
    or its keyword dict), else the one beside the file, else ``"moshi_7b"`` when its tensors have Moshi 7B's
    shapes; else ModelFilesError."""
    if isinstance(lm_config, (LMConfig, Mapping)):
        return LMConfig.load(lm_config)
    if lm_config is not None:
        lm_config = os.fspath(lm_config)
        if lm_config in LMConfig.PRESETS:
            return lm_config
        if lm_config and not os.path.lexists(lm_config) and not lm_config.endswith(".json"):
            raise ModelFilesError(f"LM config not found: {lm_config} (neither a file nor a preset: "
                                  f"{', '.join(LMConfig.PRESETS)})")
        return _existing(lm_config, "LM config")
    beside = lm_config_beside(lm)
    if beside is not None:
        return beside
    preset = seven_b_preset(lm)
    if preset is not None:
        return preset
    stem = os.path.splitext(os.fspath(lm))[0]
    raise ModelFilesError(f"{os.fspath(lm)}: no config beside it ({os.path.basename(stem)}.json or config.json) and "
                          f"its tensors are not Moshi 7B's: give the LM's config (a JSON file, or a preset: "
                          f"{', '.join(LMConfig.PRESETS)})")


def lm_codec(lm: PathLike, cfg: LMConfig) -> Tuple[str, Optional[str]]:
    """(codec, codec config) of the LM file ``lm`` of config ``cfg``, when no codec is given: the codec its files
    name (module docstring). A Moshi 7B was trained on Kyutai's Mimi and needs it; the shipped codec only suits
    models trained on its codes."""
    lm = os.fspath(lm)
    folder = os.path.dirname(lm) or "."
    named = cfg.repo_extras.get("mimi_name")
    if isinstance(named, str):  # a model repository's config.json names its codec, as Kyutai's loader reads it
        if named.startswith("hf://"):
            raise ModelFilesError(f"{lm}: its config names its codec in another repository ({named}): load the "
                                  "repository from the Hugging Face cache, or give the LM's codec")
        path = os.path.join(folder, named[len("file://"):] if named.startswith("file://") else named)
        if not os.path.isfile(path):
            raise ModelFilesError(f"{lm}: its config names its codec {named}, which is not beside it: give the LM's "
                                  "codec")
        return path, None
    if is_moshi_7b(cfg):
        path = os.path.join(folder, KYUTAI_MIMI)
        if os.path.isfile(path):
            return path, None
        raise ModelFilesError(f"{lm} is a Moshi 7B: it needs Kyutai's Mimi ({KYUTAI_MIMI}), which is not beside "
                              "it; give the LM's codec (the shipped codec only suits models trained on its codes)")
    return codec_files()


def lm_tokenizer(lm: PathLike, cfg: LMConfig) -> Optional[str]:
    """The tokenizer of the LM file ``lm`` of config ``cfg`` when none is given: ``tokenizer.model`` beside it (a
    ``duplex train lm`` run), else the one its repository config names, or Kyutai's for a Moshi 7B, or the
    shipped name beside the shipped LM's name, when beside it; else None."""
    folder = os.path.dirname(os.fspath(lm)) or "."
    candidates = [RUN_TOKENIZER]
    if isinstance(cfg.repo_extras.get("tokenizer_name"), str):
        candidates.append(cfg.repo_extras["tokenizer_name"])
    elif is_moshi_7b(cfg):
        candidates.append(KYUTAI_NAMES["tokenizer_name"])
    elif os.path.basename(os.fspath(lm)) == os.path.basename(SHIPPED_LM):
        # the shipped layout (duplex-lm.safetensors, .json, duplex-tokenizer.model): `--lm` naming the shipped file
        # would otherwise run it without its text stream
        candidates.append(os.path.basename(SHIPPED_TOKENIZER))
    for name in candidates:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def is_moshi_7b(config: LMConfig) -> bool:
    """Whether ``config`` is Moshi 7B's architecture (Kyutai's Moshiko / Moshika and same-architecture
    fine-tunes); the file names a repository config carries do not count."""
    ours = config.to_dict()
    for key in config.repo_extras:
        ours.pop(key, None)
    return ours in (LMConfig.moshi_7b().to_dict(), LMConfig.personaplex_7b().to_dict())


def seven_b_preset(lm: PathLike) -> Optional[str]:
    """``"moshi_7b"`` or ``"personaplex_7b"`` when the LM file ``lm`` holds exactly that model's tensors (names and
    shapes; PersonaPlex's depth transformer has 16 steps: 475 tensors against Moshi's 355), from the safetensors
    header alone; else None."""
    shapes = _header_shapes(lm)
    if shapes is None:
        return None
    for preset in ("moshi_7b", "personaplex_7b"):
        if _normalized(shapes) == _preset_shapes(preset):
            return preset
    return None


def _header_shapes(lm: PathLike) -> Optional[Dict[str, Tuple[int, ...]]]:
    if checkpoint_format(lm) != "safetensors":
        return None
    try:
        with safe_open(os.fspath(lm), framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as e:  # safetensors raises several exception types for truncated/garbled headers
        raise CheckpointError(f"{os.fspath(lm)} is not a readable safetensors file ({type(e).__name__}: {e})") \
            from None


def _normalized(shapes: Mapping[str, Tuple[int, ...]]) -> Dict[str, Tuple[int, ...]]:
    meta = normalize_keys({key: torch.empty(tuple(shape), device="meta") for key, shape in shapes.items()})
    return {key: tuple(value.shape) for key, value in meta.items()}


@functools.lru_cache(maxsize=2)
def _preset_shapes(preset: str) -> Dict[str, Tuple[int, ...]]:
    with torch.device("meta"):  # the modules' shapes, no memory
        model = MoshiLM(LMConfig.preset(preset))
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def has_moshi_7b_shapes(lm: PathLike) -> bool:
    """Whether the LM file ``lm`` holds exactly Moshi 7B's tensors (names and shapes), read from the safetensors
    header alone (no weights are loaded). False for torch pickles (they cannot be read without loading them)."""
    if checkpoint_format(lm) != "safetensors":
        return False
    try:
        with safe_open(os.fspath(lm), framework="pt") as f:
            shapes = {key: f.get_slice(key).get_shape() for key in f.keys()}
    except Exception as e:  # safetensors raises several exception types for truncated/garbled headers
        raise CheckpointError(f"{os.fspath(lm)} is not a readable safetensors file ({type(e).__name__}: {e})") \
            from None
    return moshi_7b_shapes(shapes)


def moshi_7b_shapes(shapes: Mapping[str, Tuple[int, ...]]) -> bool:
    """Whether ``shapes`` (tensor name -> shape, as a checkpoint names them) are Moshi 7B's, in any naming the
    loader accepts."""
    meta = normalize_keys({key: torch.empty(tuple(shape), device="meta") for key, shape in shapes.items()})
    return {key: tuple(value.shape) for key, value in meta.items()} == _moshi_7b_shapes()


@functools.lru_cache(maxsize=1)
def _moshi_7b_shapes() -> Dict[str, Tuple[int, ...]]:
    with torch.device("meta"):  # the modules' shapes, no memory
        model = MoshiLM(LMConfig.moshi_7b())
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------- codec files
def codec_files(checkpoint: Optional[PathLike] = None, config: Optional[PathLike] = None
                ) -> Tuple[str, Optional[str]]:
    """(checkpoint, config) of a codec used on its own: ``checkpoint``, else ``$DUPLEX_MIMI``, else the codec
    shipped with duplex (with its own config; ``config`` then must not be given). The config defaults to the one
    that travels with the file (``codec_config_for``)."""
    what = "Mimi checkpoint"
    if checkpoint is None and os.environ.get(MIMI_ENV):  # an empty variable is an unset one; an empty path is not
        checkpoint, what = os.environ[MIMI_ENV], f"Mimi checkpoint (${MIMI_ENV})"
    if checkpoint is None:
        if config is not None:
            raise ModelFilesError("a codec config describes a codec file; the shipped codec brings its own config "
                                  "(give the codec file with it)")
        return SHIPPED_CODEC, SHIPPED_CONFIG
    checkpoint = _existing(checkpoint, what)
    return checkpoint, codec_config_for(checkpoint, config)


def codec_config_for(checkpoint: Optional[PathLike], config: Optional[PathLike]) -> Optional[str]:
    """The config to load the codec file ``checkpoint`` with: ``config`` when given, else the one that travels with
    the file (``codec_config_beside``); None (the official architecture) without either."""
    if config is not None:
        return _existing(config, "Mimi config")
    return codec_config_beside(checkpoint) if checkpoint else None


def codec_config_beside(checkpoint: PathLike) -> Optional[str]:
    """The config that travels with a codec file made by duplex: ``NAME.json`` next to ``NAME.safetensors``
    (the exported inference file, as shipped), else the ``config.json`` of a training run folder (one holding
    ``trainer.pt``; other folders' ``config.json``, such as a model repository's LM config, are not codec
    configs). None (the official Mimi architecture) otherwise, as for Kyutai's published file."""
    checkpoint = os.fspath(checkpoint)
    stem, _ = os.path.splitext(checkpoint)
    if os.path.isfile(stem + ".json"):
        return stem + ".json"
    folder = os.path.dirname(checkpoint) or "."
    run_config = os.path.join(folder, "config.json")
    if os.path.isfile(run_config) and os.path.isfile(os.path.join(folder, "trainer.pt")):
        return run_config
    return None


def unused_codec_config(checkpoint: PathLike, config: Optional[PathLike]) -> Optional[str]:
    """A ``config.json`` beside the codec file ``checkpoint`` that loading it did not use (``config`` None: a run
    folder copied without its ``trainer.pt``), worth naming when loading it as the official architecture failed."""
    beside = os.path.join(os.path.dirname(os.fspath(checkpoint)) or ".", "config.json")
    return beside if config is None and os.path.isfile(beside) else None


# ---------------------------------------------------------------------------------------------- helpers
def _existing(path: PathLike, what: str) -> str:
    """``path`` when it is a file to read (``codec.io.files.readable_file``: never a folder, and never a named pipe,
    which opening would block on), else ModelFilesError naming ``what``."""
    return readable_file(path, what, ModelFilesError)


def _checkpoint(path: PathLike, what: str) -> str:
    """``path`` when it is a file to read that holds a checkpoint by its first bytes, else ModelFilesError."""
    path = _existing(path, what)
    if checkpoint_format(path) is None:
        raise ModelFilesError(f"{what} {path} is neither a safetensors file nor a torch checkpoint")
    return path


def _hub():
    try:
        import huggingface_hub  # noqa: PLC0415  (optional: only reading the Hugging Face cache needs it)
        import huggingface_hub.constants  # noqa: PLC0415  (a submodule the package does not import itself)
    except ImportError:
        raise ModelFilesError("reading the Hugging Face cache needs the 'huggingface_hub' package: "
                              "pip install huggingface_hub") from None
    return huggingface_hub


def _split_reference(repo: str, name: str) -> Tuple[str, str]:
    """(repository, file) of a file name in a config: ``hf://owner/repo/path`` points into another repository."""
    if name.startswith("hf://"):
        parts = name[len("hf://"):].split("/", 2)
        if len(parts) != 3:
            raise ModelFilesError(f"{repo}: config.json names {name!r}, expected hf://owner/repo/path")
        return f"{parts[0]}/{parts[1]}", parts[2]
    return repo, name


def _cached(hub, repo: str, filename: str, cache_dir: str) -> Optional[str]:
    found = hub.try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
    return found if isinstance(found, str) and os.path.isfile(found) else None


def default_model_paths() -> Dict[str, Optional[str]]:
    """Absolute paths of the shipped default model's files: ``lm``, ``lm_config``, ``mimi``, ``mimi_config``,
    ``tokenizer`` (``ModelFiles.default().paths()``)."""
    return ModelFiles.default().paths()
