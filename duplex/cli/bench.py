"""``duplex bench codec | lm | latency | memory | lora | serve | codec-quality`` (and ``turns``, in ``turns.py``): parse,
call the benchmark, print the table it formats (figure caveats on stderr), write the JSON with ``--json``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from codec import Mimi
from codec.eval import bench as codec_bench

from ..bench import codec_quality, flood, fuzz, kyutai, latency, lm, memory, teacher_forced
from ..bench import lora as lora_bench
from ..bench.codec import codec_to_time
from ..bench.serve import bench_serve, format_report
from ..bench.variants import Variant, parse_variant, variants_of
from ..errors import UsageError
from ..runtime.checkpoints import codec_files
from ..serving.options import default_engine_threads, usable_cpu_cores
from . import fidelity, turns
from .codec import config_hint
from .common import (
    add_model_options,
    add_quantization_options,
    build_engine,
    compile_option,
    int_in,
    model_files,
    non_negative,
    pick_device,
    positive,
    positive_float,
    seconds,
)
from .reports import check_report_paths, write_json


def _timing(args):
    """What the timing benchmarks share: report paths checked, --threads applied; returns (device, progress)."""
    check_report_paths(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    return pick_device(args.device), codec_bench.console_progress


def _show(table: str, caveats, report: dict, args) -> None:
    """The table on stdout (what a person reads), the caveats on stderr, the JSON only in ``--json``."""
    print(table)
    for line in caveats:
        print(line, file=sys.stderr)
    write_json(report, args)


def run_bench_codec(args) -> int:
    device, progress = _timing(args)
    checkpoint, config = codec_to_time(args.checkpoint, args.config)
    report = codec_bench.bench_codec(config=config, checkpoint=checkpoint, device=str(device),
                                     batch_sizes=args.batch_sizes, frames=args.frames, warmup=args.warmup,
                                     num_codebooks=args.num_codebooks, progress=progress)
    _show(codec_bench.format_table(report), codec_bench.report_caveats(report), report, args)
    return 0


def _variants(args) -> list:
    """The variants to time: --variants, else the one of --quantize and --kv-dtype (not both: one names the
    variants, the other the single model)."""
    if args.variants and (args.quantize or args.kv_dtype != "auto"):
        raise UsageError("--variants names the weights and rings of each timed variant: leave out --quantize and "
                         "--kv-dtype")
    variants = variants_of(None, args.quantize, args.kv_dtype)
    return list(dict.fromkeys(args.variants)) if args.variants else variants


def run_bench_lm(args) -> int:
    device, progress = _timing(args)
    checkpoint, config = lm.lm_to_time(args.checkpoint, args.config)
    report = lm.bench_lm(config=config, checkpoint=checkpoint, device=str(device), dtype=getattr(torch, args.dtype),
                         batch_sizes=args.batch_sizes, frames=args.frames, warmup=args.warmup, progress=progress,
                         variants=_variants(args), age=args.age)
    _show(lm.format_table(report), lm.report_caveats(report), report, args)
    return 0


def run_bench_kyutai(args) -> int:
    _timing(args)  # checks --json and --plot too
    report = kyutai.bench_kyutai(parts=args.parts, lm_config=args.lm_config, batch_sizes=args.batch_sizes,
                                 frames=args.frames, warmup=args.warmup, age=args.age,
                                 progress=codec_bench.console_progress, compile=args.compile)
    if args.plot:
        kyutai.plot(report, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    _show(kyutai.format_table(report), [], report, args)
    return 0


def run_bench_latency(args) -> int:
    files = model_files(args)  # --hf-repo or --lm (refuses file options without --lm)
    if not (args.lm or args.hf_repo):
        files = None  # --model names what to time
    if not files and args.model not in latency.MODELS:
        raise UsageError(f"unknown --model {args.model!r}: {', '.join(latency.MODELS)} (the LM presets with random "
                         "weights); or pass --lm")
    device, progress = _timing(args)
    for note in latency.device_notes(str(device), args.modes):
        print(note, file=sys.stderr)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    report = latency.bench_latency(model=args.model, device=str(device), dtype=dtype,
                                   batch_sizes=args.batch_sizes, modes=args.modes, frames=args.frames,
                                   warmup=args.warmup, files=files, progress=progress, variants=_variants(args),
                                   age=args.age, compile=compile_option(args))
    if args.plot:
        latency.plot_latency(report, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    _show(latency.format_table(report), latency.report_caveats(report), report, args)
    return 0


def run_bench_memory(args) -> int:
    check_report_paths(args)
    report = memory.memory_table(args.config, dtype=getattr(torch, args.dtype), codec_config=args.codec_config,
                                 reserve_gib=args.reserve)
    device = pick_device(args.device)
    if args.measured:
        try:
            with open(args.measured) as f:
                memory.from_latency(report, json.load(f))
        except (OSError, ValueError, KeyError) as e:
            raise UsageError(f"--measured {args.measured}: not a bench latency report ({e})") from None
        report["not_measured"] = "not in --measured"
    elif device.type == "cuda":
        batches = ", ".join(map(str, args.measure_batch))
        print(f"duplex bench memory: building the engines on {device} (batch {batches})", file=sys.stderr)
        memory.measure_cuda(report, args.measure_batch, str(device),
                            progress=lambda text: print(f"duplex bench memory: {text}", file=sys.stderr))
    else:
        report["not_measured"] = "not measured (no GPU)"
    print(memory.format_table(report))
    write_json(report, args)
    return 0


def run_bench_lora(args) -> int:
    check_report_paths(args)
    if args.append and not args.json:
        raise UsageError("--append adds this run to the report at --json PATH: give --json")
    if args.threads:
        torch.set_num_threads(args.threads)
    previous = None
    if args.append and os.path.exists(args.json):
        try:
            with open(args.json, encoding="utf-8") as f:
                previous = json.load(f)
            runs = previous["runs"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UsageError(f"--append: {args.json} is not a bench lora report ({e})") from None
    report = lora_bench.bench_lora(model=args.model, device=str(pick_device(args.device)), weights=args.quantize,
                                   rank=args.lora_rank, scaling=args.lora_scaling, batch_size=args.batch_size,
                                   segment_seconds=args.segment_seconds, steps=args.steps, warmup=args.warmup,
                                   seed=args.seed,
                                   progress=lambda text: print(f"duplex bench lora: {text}", file=sys.stderr))
    print(lora_bench.format_report(report))
    if previous is not None:
        report["runs"] = runs + report["runs"]
        before = previous.get("command")
        report["command"] = [*(before if isinstance(before, list) else [before] if before else []),
                             getattr(args, "command_line", None)]
    write_json(report, args)
    return 0


def run_bench_teacher_forced(args) -> int:
    check_report_paths(args)
    manifest = Path(args.data) / f"{args.split}.jsonl"
    if not manifest.is_file():
        raise UsageError(f"{manifest}: no such manifest (--data: a corpus folder made by 'duplex data synth' and "
                         "encoded by 'duplex data encode' with the LM's codec; --split: heldout or train)")
    files = model_files(args)
    tokenizer = files.load_tokenizer()
    if tokenizer is None:
        raise UsageError(f"{files.lm}: no tokenizer beside it; give --tokenizer")
    lm = files.load_lm(pick_device(args.device), dtype=torch.float32)
    report = teacher_forced.teacher_forced(lm, tokenizer.encode, manifest, args.max_files)
    report.update(lm=str(files.lm), data=str(args.data), split=args.split)
    print(teacher_forced.format_summary(report))
    write_json(report, args)
    return 0


def run_bench_codec_quality(args) -> int:
    check_report_paths(args)
    checkpoint, config = codec_files(args.checkpoint, args.config)
    with config_hint(checkpoint, config):
        mimi = Mimi.from_checkpoint(checkpoint, config=config, device=pick_device(args.device))
    report = codec_quality.codec_quality(mimi, args.data, args.split, args.num_codebooks, args.max_clips, args.plot)
    report["checkpoint"] = checkpoint
    print(codec_quality.format_summary(report))
    write_json(report, args)
    return 0


def _check_flood_options(args) -> None:
    """--flood runs one live client of its own: the options of the plain load and of --fuzz do not apply."""
    if args.flood_peers and not args.flood:
        raise UsageError("--flood-peers needs --flood KIND")
    if args.soak and (args.flood or args.fuzz):
        raise UsageError("--soak, --flood and --fuzz are separate runs: give one of them")
    if args.soak and args.seconds:
        raise UsageError("--soak MINUTES sets how long the clients talk: leave out --seconds")
    if not args.flood:
        return
    if args.fuzz:
        raise UsageError("--flood and --fuzz are separate runs: give one of them")
    if args.clients:
        raise UsageError("--flood runs one live client of its own: leave out --clients")
    if args.flood == "churn" and args.slots and args.slots > 1:
        raise UsageError("--flood churn needs every slot taken by the live client: --slots 1 (the default)")


def run_bench_serve(args) -> int:
    check_report_paths(args)
    _check_flood_options(args)
    args.seconds = args.seconds or (None if args.soak else 20.0)
    if args.flood:
        return _run_flood(args)
    args.clients = args.clients or 4
    if args.soak:
        return _run_soak(args)
    needed = fuzz.SLOTS if args.fuzz else args.clients
    _check_url(args)
    if args.slots and args.slots < needed:
        raise UsageError(f"--slots {args.slots} is fewer than --clients {args.clients}" if not args.fuzz else
                         f"--fuzz needs --slots {fuzz.SLOTS} or more (a hostile client and the health check's)")

    def progress(text: str) -> None:
        print(f"duplex bench serve: {text}", file=sys.stderr)

    try:  # a server started here logs errors only meanwhile (bench.serve.serve_here)
        _server_threads(args)
        engine = None if args.url else build_engine(args, args.slots or needed)
        if args.fuzz:
            report = fuzz.fuzz_server(engine, args.url, messages=args.fuzz, seed=args.seed, token=args.token,
                                      progress=progress)
        else:
            report = bench_serve(engine, args.url, clients=args.clients, seconds=args.seconds, formats=args.formats,
                                 nice=args.client_nice, token=args.token, progress=progress)
    except KeyboardInterrupt:  # the clients and the server are stopped by then
        print("duplex bench serve: interrupted (Ctrl-C): no report", file=sys.stderr)
        return 130
    print(fuzz.format_fuzz_report(report, args.fuzz) if args.fuzz else format_report(report))
    write_json(report, args)
    if args.fuzz:
        return 0 if report["healthy"] else 1
    return 1 if any("exception" in c for c in report["clients"]) else 0


# The options of a server ``bench serve`` starts itself (add_model_options, --slots, --threads), as (flag, attribute,
# value when not given).
SERVER_OPTIONS = (("--hf-repo", "hf_repo", None), ("--lm", "lm", None), ("--mimi", "mimi", None),
                  ("--tokenizer", "tokenizer", None), ("--lm-config", "lm_config", None),
                  ("--mimi-config", "mimi_config", None), ("--dtype", "dtype", None), ("--quantize", "quantize", None),
                  ("--kv-dtype", "kv_dtype", "auto"), ("--device", "device", "auto"), ("--slots", "slots", None),
                  ("--threads", "threads", 0), ("--no-cuda-graphs", "no_cuda_graphs", False),
                  ("--compile", "compile", None))


def _check_url(args) -> None:
    """--url loads a running server: the options of one started here (its model, quantization, slots) would be
    silently ignored, so they are refused."""
    if not args.url:
        return
    given = [flag for flag, attr, unset in SERVER_OPTIONS if getattr(args, attr, unset) != unset]
    if given:
        raise UsageError(f"--url loads a running server: {', '.join(given)} {'is' if len(given) == 1 else 'are'} "
                         "for a server started here (give them to duplex serve)")


def _server_threads(args) -> None:
    """The engine threads of a server started here: --threads, else what duplex serve would use."""
    if args.url:
        return
    threads = args.threads or default_engine_threads(pick_device(args.device).type, usable_cpu_cores())
    if threads:
        torch.set_num_threads(threads)


def _run_flood(args) -> int:
    _check_url(args)

    def progress(text: str) -> None:
        print(f"duplex bench serve: {text}", file=sys.stderr)

    try:
        _server_threads(args)
        engine = None if args.url else build_engine(args, args.slots or 1)
        report = flood.flood_server(engine, args.url, kind=args.flood, peers=args.flood_peers or 1,
                                    seconds=args.seconds, token=args.token, nice=args.client_nice,
                                    progress=progress)
    except KeyboardInterrupt:  # the flooder, the live client and the server are stopped by then
        print("duplex bench serve: interrupted (Ctrl-C): no report", file=sys.stderr)
        return 130
    print(flood.format_flood_report(report))
    write_json(report, args)
    return 1 if "exception" in report["client"] or "exception" in report["flood"] else 0


def _run_soak(args) -> int:
    _check_url(args)
    if args.slots and args.slots < args.clients:
        raise UsageError(f"--slots {args.slots} is fewer than --clients {args.clients}")

    def progress(text: str) -> None:
        print(f"duplex bench serve: {text}", file=sys.stderr)

    try:
        _server_threads(args)
        engine = None if args.url else build_engine(args, args.slots or args.clients)
        report = flood.soak_server(engine, args.url, clients=args.clients, minutes=args.soak, formats=args.formats,
                                   nice=args.client_nice, token=args.token, progress=progress)
    except KeyboardInterrupt:  # the clients and the server are stopped by then
        print("duplex bench serve: interrupted (Ctrl-C): no report", file=sys.stderr)
        return 130
    print(flood.format_soak_report(report))
    write_json(report, args)
    return 1 if any("exception" in c for c in report["clients"]) else 0


def _add_age_option(p) -> None:
    p.add_argument("--age", type=seconds, metavar="SECONDS", help="time sessions this many seconds into their "
                   "conversations (a step attends only the KV ring written so far; 30: the issue's figure); default: "
                   "a full ring, the steady state of a long conversation")


def _add_timing_options(p, batch_sizes, what: str = "frames") -> None:
    """The options of the benchmarks that time frames; the defaults are the benchmarks' own."""
    p.add_argument("--batch-sizes", type=positive, nargs="+", default=list(batch_sizes), metavar="B",
                   help="batch sizes to time")
    p.add_argument("--frames", type=positive, default=codec_bench.FRAMES, help=f"timed {what} per batch size")
    p.add_argument("--warmup", type=non_negative, default=codec_bench.WARMUP, help=f"untimed {what} first")
    p.add_argument("--threads", type=non_negative, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", metavar="PATH", help="also write the JSON report here")


def _variant(value: str) -> Variant:
    try:
        return parse_variant(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_variants_option(p, how: str) -> None:
    p.add_argument("--variants", type=_variant, nargs="+", metavar="V",
                   help="time several quantization variants in one run, e.g. none int8 fp8kv int8+fp8kv (weights "
                   f"none/int8/fp8, ring dtype + 'kv', joined by '+'), each compared with none: {how}")


def register(commands) -> None:
    """``duplex bench codec | lm | kyutai | latency | memory | lora | serve | turns | codec-quality``."""
    bench = commands.add_parser("bench", help="benchmarks")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    p = bench_commands.add_parser("codec", help="streaming codec encode + decode time per 80 ms frame")
    p.add_argument("--checkpoint", metavar="PATH", help="time this codec file (default: the shipped codec, the one "
                   "duplex serve runs)")
    p.add_argument("--config", metavar="JSON", help="'official' times Kyutai's Mimi shape (random weights); a "
                   "config JSON times that shape; with --checkpoint, its config (default: NAME.json beside it, or "
                   "its training run's config.json, else official Mimi)")
    p.add_argument("--num-codebooks", type=int, default=codec_bench.NUM_CODEBOOKS, metavar="N",
                   help="codebooks encoded and decoded")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    _add_timing_options(p, codec_bench.BATCH_SIZES)
    p.set_defaults(run=run_bench_codec)
    p = bench_commands.add_parser("lm", help="LM generator step time per 80 ms frame (temporal + depth + sampling)")
    p.add_argument("--config", default=None,
                   help="preset (default, small, moshi_7b: random weights of that shape) or a JSON config in the "
                   "official keyword layout (default: the shipped LM; with --checkpoint, the config beside it)")
    p.add_argument("--checkpoint", metavar="PATH", help="time real weights (default: the shipped LM; with --config alone, random weights)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights and "
                   "activations")
    add_quantization_options(p)
    _add_variants_option(p, "generators take turns step by step")
    _add_timing_options(p, lm.BATCH_SIZES, what="steps")
    _add_age_option(p)
    p.set_defaults(run=run_bench_lm)
    p = bench_commands.add_parser("kyutai", help="ours and Kyutai's implementation side by side on the CPU, steps in "
                                  "turns: the LM step and the codec (needs Kyutai's moshi package)")
    p.add_argument("--parts", nargs="+", choices=kyutai.PARTS, default=list(kyutai.PARTS), help="what to time")
    p.add_argument("--lm-config", default=kyutai.LM_CONFIG, help="the LM preset or config JSON (random weights)")
    _add_timing_options(p, kyutai.BATCH_SIZES, what="steps of each")
    p.set_defaults(frames=kyutai.FRAMES, warmup=kyutai.WARMUP, device="cpu")
    _add_age_option(p)
    p.add_argument("--plot", metavar="PNG", help="draw the side-by-side bars here")
    p.add_argument("--compile", action="store_true", help="our LM's depth stage and our codec's encoder and decoder "
                   "compiled (torch.compile, in the untimed steps; minutes on a CPU), as --compile runs them in the "
                   "engine")
    p.set_defaults(run=run_bench_kyutai)
    p = bench_commands.add_parser("latency", help="whole-engine ms per frame by stage and batch size (JSON + plot)")
    p.add_argument("--model", default="default", help="default (shipped small model), default-official-codec (its "
                   "LM with the official Mimi architecture) or moshi_7b (7B shapes, random weights); or pass --lm "
                   "(and --mimi)")
    add_model_options(p)
    _add_variants_option(p, "engines take turns frame by frame off CUDA; on CUDA one weight format is loaded at a "
                         "time and its engines run one after another, each with its peak memory")
    _add_timing_options(p, latency.BATCH_SIZES)
    p.add_argument("--modes", nargs="+", default=list(latency.MODES), choices=latency.MODES,
                   help="graphs only on CUDA")
    p.add_argument("--plot", metavar="PNG", help="draw ms/frame against batch size here")
    _add_age_option(p)
    p.set_defaults(run=run_bench_latency)
    p = bench_commands.add_parser("memory", help="GPU memory of the engine computed from the shapes (weights per "
                                  "format, KV ring and state per session, sessions per GPU size); checked on CUDA")
    p.add_argument("--config", default="moshi_7b", help="moshi_7b (default), personaplex_7b, shipped (the shipped "
                   "model), another LM preset or an LM config JSON (with the official Mimi unless --codec-config)")
    p.add_argument("--codec-config", metavar="JSON", help="the codec's config (default: official Mimi; the shipped "
                   "codec for --config shipped)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                   help="the LM's compute dtype (bfloat16, as on a GPU by default)")
    p.add_argument("--reserve", type=positive_float, default=memory.RESERVE_GIB, metavar="GIB",
                   help="GiB kept free on every card for the CUDA context, activations and graph pools")
    p.add_argument("--device", default="auto", help="where to check the figures: cuda builds every engine and reads "
                   "torch.cuda.max_memory_allocated; cpu or no GPU: computed only (auto, the default: CUDA if any)")
    p.add_argument("--measure-batch", type=positive, nargs="+", default=[1], metavar="B",
                   help="on CUDA: the batch sizes to build and step (default 1)")
    p.add_argument("--measured", metavar="JSON", help="check against the memory a 'bench latency --device cuda' "
                   "report recorded instead of building engines")
    p.add_argument("--json", metavar="PATH", help="also write the JSON report here")
    p.set_defaults(run=run_bench_memory)
    p = bench_commands.add_parser("lora", help="LoRA training steps on a random model (duplex train lm --lora's "
                                  "step): step time, frames/s, peak GPU memory beside the computed figure")
    p.add_argument("--model", default="moshi_7b", help="LM preset with random weights (moshi_7b, the default: all "
                   "32 temporal layers and the full depth transformer; personaplex_7b; small; default, the shipped "
                   "model's shape: seconds on a CPU) or an LM config JSON")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: CUDA if any)")
    p.add_argument("--quantize", choices=lora_bench.WEIGHTS, default="int8",
                   help="the frozen base's linear weights (int8, the default: built directly as codes; none: the "
                        "device's dtype, bfloat16 on CUDA)")
    p.add_argument("--lora-rank", type=positive, default=lora_bench.RANK, metavar="R", help="adapter rank")
    p.add_argument("--lora-scaling", type=positive_float, default=lora_bench.SCALING, metavar="S",
                   help="adapter scaling")
    p.add_argument("--batch-size", type=positive, default=1, help="segments per step")
    p.add_argument("--segment-seconds", type=positive_float, default=lora_bench.SEGMENT_SECONDS,
                   help="seconds of random codes per segment (12.5 frames a second)")
    p.add_argument("--steps", type=positive, default=lora_bench.STEPS, help="timed steps")
    p.add_argument("--warmup", type=non_negative, default=lora_bench.WARMUP, help="untimed steps first")
    p.add_argument("--seed", type=int, default=0, help="the random weights, adapter and codes")
    p.add_argument("--threads", type=non_negative, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", metavar="PATH", help="also write the JSON report here")
    p.add_argument("--append", action="store_true", help="add this run to the runs of the report already at --json "
                   "(one report for several runs, each in its own process)")
    p.set_defaults(run=run_bench_lora)
    p = bench_commands.add_parser("serve", help="N time-synchronous clients x S seconds against a voice server: "
                                  "reply rate, late and lost replies, deadline misses, step time")
    p.add_argument("--clients", type=positive, help="concurrent clients, one process each (default 4)")
    p.add_argument("--seconds", type=positive_float, help="how long every client talks (default 20)")
    p.add_argument("--format", dest="formats", choices=["mixed", "opus", "pcm16"], default="mixed",
                   help="client audio: Ogg/Opus (Kyutai's), raw pcm16, or mixed (every other client)")
    p.add_argument("--url", help="a running server to load (default: start one here on the model options)")
    p.add_argument("--token", help="the server's token, if it requires one")
    p.add_argument("--slots", type=positive, help="slots of the server started here (default: --clients)")
    p.add_argument("--threads", type=non_negative, default=0,
                   help="CPU threads of the server started here (default: as duplex serve, all cores but one on "
                        "the CPU)")
    p.add_argument("--client-nice", type=int_in(0, 19, "a niceness 0-19"), default=10,
                   help="niceness of the client processes: real clients run elsewhere, so on the server's machine "
                        "they yield the CPU to it (0: equal terms)")
    p.add_argument("--fuzz", type=positive, metavar="N",
                   help="instead of the load: N hostile messages in families (malformed, oversized, Opus bombs, "
                        "floods, connection churn, a jammed queue, HTTP garbage), a health check after each")
    p.add_argument("--seed", type=int, default=0, help="with --fuzz: the same seed sends the same messages")
    p.add_argument("--flood", choices=flood.KINDS,
                   help="instead of the load: one live client talks for --seconds while a flooder process sends "
                        "GET /api/stats (stats), a missing path (404), refused WebSocket upgrades (upgrade) or "
                        "joins and leaves the admission queue (churn); reports late ticks, the client's largest "
                        "gap and late replies, and the flood's request rate")
    p.add_argument("--soak", type=positive_float, metavar="MINUTES",
                   help="the load (--clients, default 4) for MINUTES instead of --seconds, with the resident memory "
                        "and open descriptors of a server started here when it listens and after the clients leave")
    p.add_argument("--flood-peers", type=positive, metavar="N",
                   help="with --flood: N concurrent flooders, each one request at a time (default 1)")
    add_model_options(p)
    p.add_argument("--json", metavar="PATH", help="also write the JSON report here")
    p.set_defaults(run=run_bench_serve)
    turns.register(bench_commands)
    fidelity.register(bench_commands)
    p = bench_commands.add_parser("teacher-forced", help="an LM's predictions of a corpus's reply words given the "
                                  "true past (word tokens, answer keys by topic): whether it learnt the answers, "
                                  "apart from its timing")
    p.add_argument("--data", required=True, help="corpus folder made by 'duplex data synth', encoded with the LM's "
                   "codec ('duplex data encode')")
    p.add_argument("--split", default="heldout", help="corpus split (heldout or train)")
    p.add_argument("--lm", metavar="PATH", help="LM checkpoint (default: the shipped default model)")
    p.add_argument("--tokenizer", metavar="PATH", help="its tokenizer (default: tokenizer.model beside it)")
    p.add_argument("--lm-config", metavar="JSON", help="its config (default: NAME.json or config.json beside it)")
    p.add_argument("--lora", metavar="FILE", action="append", default=[], help="a LoRA adapter to apply")
    p.add_argument("--max-files", type=positive, default=teacher_forced.MAX_FILES,
                   help="conversations to read at most")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--json", metavar="PATH", help="also write the JSON report here")
    p.set_defaults(run=run_bench_teacher_forced, hf_repo=None, mimi=None, mimi_config=None)
    p = bench_commands.add_parser("codec-quality", help="reconstruction quality on a corpus split (JSON + PNG)")
    p.add_argument("--data", required=True, help="corpus folder made by 'duplex data synth'")
    p.add_argument("--split", default=codec_quality.SPLIT, help="corpus split to measure (heldout or train)")
    p.add_argument("--checkpoint", metavar="PATH", help="codec .safetensors (default: the codec shipped with duplex)")
    p.add_argument("--config", metavar="JSON", help="its config "
                   "(default: NAME.json beside it, or its training run's config.json, else official Mimi)")
    p.add_argument("--num-codebooks", type=int, default=codec_quality.NUM_CODEBOOKS,
                   help="codebooks of the reconstruction")
    p.add_argument("--max-clips", type=positive, default=codec_quality.MAX_CLIPS, help="channels to evaluate at most")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--json", metavar="PATH", help="also write the JSON report here")
    p.add_argument("--plot", metavar="PNG", help="spectrograms of original vs reconstruction")
    p.set_defaults(run=run_bench_codec_quality)
