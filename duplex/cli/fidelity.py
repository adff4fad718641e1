"""``duplex bench fidelity``: how far quantized weights and the fp8 KV ring are from the unquantized model
(teacher-forced KL and top-1 agreement, greedy-token agreement). Parsing and printing only; the work is in
``duplex.bench.fidelity``."""

from __future__ import annotations

import dataclasses
import sys

import torch

from ..bench import fidelity
from ..errors import UsageError
from ..model.config import LMConfig
from ..model.lm import default_dtype
from ..runtime.checkpoints import ModelFiles
from ..runtime.quantization import kv_dtype
from .common import add_model_options, model_files, non_negative, pick_device, positive
from .reports import check_report_paths, write_json

MODELS = ("default", "moshi_7b")
CPU_7B_LAYERS = 2  # a float32 Moshi 7B (28 GB) does not fit a small machine's memory twice


def _variants(args) -> list:
    quantize, kv = args.quantize, kv_dtype(args.kv_dtype)
    if quantize is not None or kv is not None:
        if args.variants is not None:
            raise UsageError("--variants names what to compare; leave out --quantize and --kv-dtype (or give them "
                             "alone: they name one variant)")
        try:
            return [fidelity.variant_of(quantize, kv)]
        except ValueError as e:
            raise UsageError(str(e)) from None
    try:
        return [fidelity.parse_variant(name) for name in args.variants or fidelity.DEFAULT_VARIANTS]
    except ValueError as e:
        raise UsageError(f"--variants: {e}") from None


def _subject(args, device: torch.device, dtype: torch.dtype) -> tuple:
    """(loader, LM config, codec, the model's name, notes) of the model options."""
    if args.model not in MODELS:
        raise UsageError(f"unknown --model {args.model!r}: {', '.join(MODELS)}; or pass --lm or --hf-repo")
    given_files = args.lm is not None or args.hf_repo is not None
    if given_files and args.model != "default":
        raise UsageError(f"--model {args.model} or --lm/--hf-repo: give one of them")
    if args.model == "moshi_7b" and not given_files:
        layers = args.layers or (32 if device.type == "cuda" else CPU_7B_LAYERS)
        config = dataclasses.replace(LMConfig.moshi_7b(), num_layers=layers)
        shipped = ModelFiles.default()
        notes = ["random weights with Moshi 7B's widths (MoshiLM.random, seed 0); the user's codes from the shipped "
                 "codec (2048-entry codebooks, as Kyutai's Mimi)"]
        if layers != 32:
            notes.append(f"{layers} temporal layers of Moshi 7B's 32 (a float32 7B does not fit this machine's "
                         "memory twice); depth transformer and heads complete")
        return (fidelity.random_loader(config, device, dtype), config, shipped.load_mimi(config.user_codebooks, device),
                f"random Moshi 7B shapes, {layers} layers", notes)
    if args.layers:
        raise UsageError("--layers is for --model moshi_7b (random weights); a checkpoint has its own layers")
    files = model_files(args)
    config = LMConfig.load(files.lm_config)
    mimi = files.load_mimi(max(config.dep_q, config.user_codebooks), device)
    return fidelity.file_loader(files, device, dtype), config, mimi, files.name, []


def run_fidelity(args) -> int:
    check_report_paths(args)
    variants = _variants(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else default_dtype(device)
    try:
        recordings = args.audio or fidelity.demo_recordings()
    except FileNotFoundError as e:
        raise UsageError(f"{e} (--audio)") from None
    load, config, mimi, name, notes = _subject(args, device, dtype)

    def progress(text: str) -> None:
        print(f"duplex bench fidelity: {text}", file=sys.stderr)

    try:
        report = fidelity.fidelity(load, config, mimi, variants, name, recordings, device, frames=args.frames,
                                   greedy_frames=args.greedy_frames, seed=args.seed, notes=notes, progress=progress)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(fidelity.format_table(report))
    write_json(report, args)
    return 0


def register(bench_commands) -> None:
    """``duplex bench fidelity``."""
    p = bench_commands.add_parser("fidelity", help="quantized weights and the fp8 KV ring against the unquantized "
                                  "model: teacher-forced KL and top-1 agreement over speech, greedy-token agreement")
    p.add_argument("--model", default="default", help="default (the shipped model) or moshi_7b (random weights of "
                   "Moshi 7B's widths; see --layers); or pass --lm or --hf-repo")
    p.add_argument("--layers", type=positive, help="with --model moshi_7b: temporal layers (default: 32 on CUDA, "
                   f"{CPU_7B_LAYERS} on the CPU, where a float32 7B does not fit twice)")
    add_model_options(p)
    p.add_argument("--variants", nargs="+", metavar="V", help="what to compare with the unquantized model: int8, fp8 "
                   "(the linear weights), fp8kv (the fp8 KV ring), bf16 (the model in bfloat16), or parts joined "
                   f"with '+' (default: {' '.join(fidelity.DEFAULT_VARIANTS)}; --quantize/--kv-dtype name one)")
    p.add_argument("--audio", nargs="+", metavar="FILE", help="the user's speech, one file after the other "
                   "(default: the recordings of demos/fdb-synthetic, every task in turn)")
    p.add_argument("--frames", type=positive, default=fidelity.FRAMES, help="teacher-forced frames (80 ms each)")
    p.add_argument("--greedy-frames", type=positive, default=fidelity.GREEDY_FRAMES, help="greedy frames compared")
    p.add_argument("--seed", type=int, default=fidelity.SEED, help="seed of the reference model's sampled reply")
    p.add_argument("--threads", type=non_negative, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", metavar="PATH", help="also write the JSON report here")
    p.set_defaults(run=run_fidelity)
