"""What every ``duplex`` command shares: the argument parser's look, argument types, the option groups of the
model and benchmark commands, device choice, output-path checks and the engine built from model options."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Optional

import torch

from codec.io.audio import check_writable_format

from ..errors import UsageError
from ..runtime import devices as runtime_devices
from ..runtime.checkpoints import ModelFiles, adapter_file, shipped_adapters
from ..runtime.compiled import MODES as COMPILE_MODES
from ..runtime.compiled import STAGES as COMPILE_STAGES
from ..runtime.compiled import warm_up
from ..runtime.engine import Engine
from ..runtime.quantization import KV_DTYPES, QUANTIZE_CHOICES, kv_dtype
from ..serving.mic import describe_sound_devices


class HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default, unless its help already says it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text.lower() or not action.option_strings or action.default is None
                or action.default is False or action.default == argparse.SUPPRESS):
            return text
        default = action.default
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default {shown.replace('%', '%%')})"


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def int_in(low: int, high: Optional[int], what: str):
    """An argparse type: an integer in [low, high] (no upper bound when high is None), else ``what`` in the error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse


def float_above(low: float, inclusive: bool, what: str, high: float = float("inf")):
    """An argparse type: a finite number above ``low`` (or equal to it when ``inclusive``), at most ``high``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (value > low or (inclusive and value == low)) or value == float("inf") or value > high:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse


port = int_in(0, 65535, "a TCP port (0-65535; 0 picks a free one)")
non_negative = int_in(0, None, "an integer >= 0")
positive = int_in(1, None, "an integer >= 1")
positive_float = float_above(0.0, False, "a number > 0")
weight = float_above(0.0, True, "a number >= 0")
seconds = float_above(0.0, True, "a number of seconds >= 0")
probability = float_above(0.0, True, "a number from 0 to 1", high=1.0)


def add_codec_options(p: argparse.ArgumentParser, codebooks: bool = True, streaming: bool = True) -> None:
    p.add_argument("--checkpoint", metavar="PATH",
                   help="Mimi checkpoint (.safetensors); default: $DUPLEX_MIMI, else the codec shipped with duplex")
    p.add_argument("--config", metavar="JSON", help="config of --checkpoint, official layout "
                   "(default: NAME.json beside it, or its training run's config.json, else official Mimi)")
    if codebooks:
        p.add_argument("--num-codebooks", type=int, default=8, metavar="N",
                       help="codebooks to use, 1 to the codec's count (8 for the shipped codec, up to 32 for "
                            "Kyutai's Mimi; default 8)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    if streaming:
        p.add_argument("--streaming", action="store_true",
                       help="run frame by frame as a live stream does (equal to offline for the first 124 frames)")


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hf-repo", metavar="REPO", help="a published model from the local Hugging Face cache (never "
                   "downloaded): kyutai/moshiko-pytorch-bf16, kyutai/moshika-pytorch-bf16, their int8 exports "
                   "kyutai/moshiko-pytorch-q8, kyutai/moshika-pytorch-q8 (with the bf16 repository's codec and "
                   "tokenizer), nvidia/personaplex-7b-v1")
    p.add_argument("--lm", metavar="PATH", help="Moshi LM checkpoint (default: the shipped default model)")
    p.add_argument("--mimi", metavar="PATH", help="Mimi checkpoint (with --lm; default: the codec the LM's files "
                   "name: Kyutai's Mimi beside a Moshi 7B, else the shipped codec, for models trained on it)")
    p.add_argument("--tokenizer", metavar="PATH", help="SentencePiece text tokenizer (with --lm; default: "
                   "tokenizer.model beside it, or the one its repository names)")
    p.add_argument("--lm-config", metavar="JSON", help="config of --lm, a JSON file or a preset (default: NAME.json "
                   "or config.json beside it, else moshi_7b for a file with Moshi 7B's tensors)")
    p.add_argument("--mimi-config", metavar="JSON", help="config of --mimi "
                   "(default: NAME.json beside it, or its training run's config.json, else official Mimi)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="LM dtype (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--no-cuda-graphs", action="store_true", help="run the frame step eagerly on CUDA")
    p.add_argument("--compile", nargs="*", metavar="STAGE", choices=[*COMPILE_STAGES, *COMPILE_MODES],
                   help="compile engine stages with torch.compile (Inductor) at the first step: fused kernels, the "
                   f"same tokens, minutes of compiling; alone: {', '.join(COMPILE_STAGES)}; or name some, and "
                   f"optionally a mode ({', '.join(COMPILE_MODES)}) (docs/benchmarks.md, 'Compiled stages')")
    p.add_argument("--lora", metavar="FILE", action="append", default=[],
                   help="a LoRA adapter in Kyutai's layout (moshi-finetune's lora.safetensors, its rank and scaling "
                   "from the config.json beside it), or the name of one shipped for the default model ("
                   f"{', '.join(shipped_adapters()) or 'none yet'}); repeat for several: they share the model, each "
                   "session picks one (default the first)")
    p.add_argument("--fuse", action="store_true", help="merge the one --lora adapter into the weights (as "
                   "Kyutai's server does; before --quantize)")
    add_quantization_options(p)


def add_quantization_options(p: argparse.ArgumentParser) -> None:
    """``--quantize`` and ``--kv-dtype``, wherever a model is loaded (docs/quantization.md)."""
    p.add_argument("--quantize", default=None, choices=QUANTIZE_CHOICES,
                   help="the LM's linear weights: int8 (per-row, Kyutai's q8 layout) or fp8 (e4m3), quantized at "
                   "load (default: as the file holds them; a q8 file is int8)")
    p.add_argument("--kv-dtype", default="auto", choices=list(KV_DTYPES),
                   help="the temporal transformer's KV rings: auto is the LM's dtype; fp8 halves a bfloat16 ring")


def pick_device(name: str) -> torch.device:
    """The device of a --device option."""
    try:
        return runtime_devices.pick_device(name)
    except UsageError as e:
        raise UsageError(f"--{e}") from None  # "device 'tpu': ..." becomes "--device 'tpu': ..."


def check_output_path(path: str, audio: bool) -> None:
    """Refuse an output path that cannot be written before any work is done: a folder, a missing folder, or
    (audio) an extension soundfile has no format for."""
    if os.path.isdir(path):
        raise UsageError(f"output {path} is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"output folder {folder} does not exist")
    if audio:
        check_writable_format(path)


MODEL_FILE_OPTIONS = (("--lm", "lm"), ("--mimi", "mimi"), ("--tokenizer", "tokenizer"), ("--lm-config", "lm_config"),
                      ("--mimi-config", "mimi_config"))


def model_files(args) -> ModelFiles:
    """The model the options name, with the --lora adapters and --fuse (``_model_files``)."""
    files = _model_files(args)
    adapters = tuple(adapter_file(a) for a in getattr(args, "lora", None) or ())
    if getattr(args, "fuse", False) and not (adapters or files.lora_adapters):
        raise UsageError("--fuse merges a --lora adapter: give one")
    if getattr(args, "fuse", False) and len(adapters + files.lora_adapters) > 1:
        raise UsageError(f"--fuse merges one adapter into the weights, {len(adapters + files.lora_adapters)} were "
                         "given: leave --fuse out to load them side by side (each session picks one)")
    if adapters or getattr(args, "fuse", False):
        files = dataclasses.replace(files, lora_adapters=files.lora_adapters + adapters,
                                    fuse_lora=bool(getattr(args, "fuse", False)))
    files.adapter_names()  # two adapters of one name: one line now, before anything else is said
    return files


def _model_files(args) -> ModelFiles:
    """The model the options name: --hf-repo (which excludes the file options), --lm with what it does not give
    found beside it, or the shipped default model."""
    # "Given" is "not None": an empty value (``--lm "$MODEL"`` with the variable unset) is a path that is wrong,
    # never a silent fall-back to the default model.
    given = [flag for flag, attr in MODEL_FILE_OPTIONS if getattr(args, attr, None) is not None]
    if getattr(args, "hf_repo", None) is not None:
        if given:
            raise UsageError(f"--hf-repo gives the model files; leave out {', '.join(given)}")
        return ModelFiles.from_hf_cache(args.hf_repo)
    if args.lm is not None:
        return ModelFiles.for_lm(args.lm, mimi=args.mimi, tokenizer=args.tokenizer, lm_config=args.lm_config,
                                 mimi_config=args.mimi_config)
    if given:  # the shipped LM is trained on the shipped codec's codes, with its own tokenizer
        raise UsageError(f"{given[0]} needs --lm: the default model comes with its own files (pass --lm, and "
                         "usually --tokenizer, to run your own checkpoints)")
    return ModelFiles.default()


def build_engine(args, slots: int, files: Optional[ModelFiles] = None) -> Engine:
    """The engine on the model options' files (``files``, when the caller has resolved them already)."""
    engine = Engine.from_files(files or model_files(args), slots=slots, device=pick_device(args.device),
                               dtype=getattr(torch, args.dtype) if args.dtype else None,
                               cuda_graphs=not args.no_cuda_graphs, quantize=getattr(args, "quantize", None),
                               kv_dtype=kv_dtype(getattr(args, "kv_dtype", None)),
                               compile=compile_option(args))
    if engine.compiled:  # now, not at the first session's first frame
        print(f"compiling {', '.join(engine.compiled)} (torch.compile; minutes, more on a CPU) ...", file=sys.stderr)
        seconds = warm_up(engine)
        fallen = [f"{name} ({stage.error})" for name, stage in engine.compiled.items() if not stage.compiled]
        print(f"compiled in {seconds:.0f} s" + (f"; running eagerly: {', '.join(fallen)}" if fallen else ""),
              file=sys.stderr)
    return engine


def compile_option(args):
    """The engine's ``compile`` of a --compile option: False when not given, True (every stage) when given alone,
    else the stages and mode it names."""
    value = getattr(args, "compile", None)
    if value is None:
        return False
    return tuple(value) or True


def sound_device(value: str):
    """An argparse type: a sound device, by index (digits) or name."""
    return int(value) if value.isdigit() else value


def list_sound_devices() -> int:
    """``--list-devices`` of ``duplex mic`` and ``duplex client``."""
    print(describe_sound_devices())
    return 0
