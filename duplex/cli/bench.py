"""``duplex bench codec | lm | latency | serve | codec-quality``: the benchmarks, each printed as a table."""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import torch

from codec.eval.bench import bench_codec

from ..errors import UsageError
from .common import (
    add_bench_options,
    add_model_options,
    check_output_path,
    int_in,
    non_negative,
    pick_device,
    positive,
    positive_float,
)


def _check_report_paths(args) -> None:
    """--json and --plot are checked before minutes of measuring, not after."""
    for path in (getattr(args, "json", None), getattr(args, "plot", None)):
        if path:
            check_output_path(path, audio=False)


def _common(args):
    """Validate the options every benchmark shares; returns (device, progress callback)."""
    _check_report_paths(args)
    if args.threads:
        torch.set_num_threads(args.threads)

    def progress(batch, done, total):
        if sys.stderr.isatty():
            print(f"\rbatch {batch}: frame {done}/{total}", end="" if done < total else "\n", file=sys.stderr)

    return pick_device(args.device), progress


def _emit_file(report: dict, args) -> None:
    """Write the report to ``--json``, with the command line that made it."""
    report.setdefault("command", getattr(args, "command_line", None))
    with open(args.json, "w", encoding="utf-8") as f:
        f.write(json.dumps(report, indent=2) + "\n")


RTF_NOTE = "RTF (real-time factor): compute time per 80 ms frame / 80 ms; below 1 keeps up with real time"


def _warn_about_figures(frames: int, rows) -> None:
    """Say when the figures cannot mean what they seem: too few frames for a p99, or a spread that says another
    process was using the machine. ``rows``: (label, p50, p90) per line of the table."""
    if frames < 100:
        print(f"note: with {frames} timed frames, p99 is about the largest one (use --frames 100 or more)",
              file=sys.stderr)
    for label, p50, p90 in rows:
        if p50 > 0 and p90 > 1.5 * p50:
            print(f"warning: {label}: p90 {p90:.1f} ms against p50 {p50:.1f} ms; the machine was probably busy "
                  "with something else (rerun, or compare side by side in one run)", file=sys.stderr)


def _emit(report: dict, args) -> None:
    """The report goes to ``--json`` only: the table on stdout is what a person reads."""
    if args.json:
        _emit_file(report, args)


def run_bench_codec(args) -> int:
    from codec import SHIPPED_CODEC, SHIPPED_CONFIG

    from .model_paths import mimi_config_for

    device, progress = _common(args)
    if args.checkpoint:
        checkpoint, config = args.checkpoint, mimi_config_for(args.checkpoint, args.config)
    elif args.config == "official":  # Kyutai's Mimi shape, random weights (the timing does not depend on them)
        checkpoint, config = None, None
    elif args.config:
        checkpoint, config = None, args.config
    else:  # the codec duplex serve runs by default
        checkpoint, config = SHIPPED_CODEC, SHIPPED_CONFIG
    report = bench_codec(config=config, checkpoint=checkpoint,
                         device=str(device), batch_sizes=args.batch_sizes, frames=args.frames, warmup=args.warmup,
                         num_codebooks=args.num_codebooks, progress=progress)
    print(f"# {report['benchmark']} -- {report['model']}, {report['config']}, {report['hardware']}, "
          f"torch {report['torch']}")
    print(f"{'batch':>5} {'encode ms':>10} {'decode ms':>10} {'total ms':>9} {'p99 ms':>8} {'ms/stream':>9} "
          f"{'RTF':>6}")
    for r in report["results"]:
        print(f"{r['batch_size']:>5} {r['encode_ms']['median']:>10.2f} {r['decode_ms']['median']:>10.2f} "
              f"{r['total_ms']['median']:>9.2f} {r['total_ms']['p99']:>8.2f} {r['ms_per_stream']:>9.2f} "
              f"{r['real_time_factor']:>6.3f}")
    print(RTF_NOTE)
    _warn_about_figures(args.frames, [(f"batch {r['batch_size']}", r["total_ms"]["median"], r["total_ms"]["p90"])
                                      for r in report["results"]])
    _emit(report, args)
    return 0


def run_bench_lm(args) -> int:
    from duplex.bench.lm import bench_lm

    from ..model.config import lm_config_beside
    from ..runtime.defaults import SHIPPED_LM, SHIPPED_LM_CONFIG

    device, progress = _common(args)
    checkpoint, config = args.checkpoint, args.config
    if checkpoint is None and config is None:
        checkpoint, config = SHIPPED_LM, SHIPPED_LM_CONFIG
    elif checkpoint is not None and config is None:
        config = lm_config_beside(checkpoint)
    report = bench_lm(config=config, checkpoint=checkpoint, device=str(device),
                      dtype=getattr(torch, args.dtype), batch_sizes=args.batch_sizes, frames=args.frames,
                      warmup=args.warmup, progress=progress)
    print(f"# {report['benchmark']} -- {report['model']}, config {report['config']} "
          f"({report['parameters'] / 1e6:.1f} M parameters), {report['dtype']}, {report['hardware']}, "
          f"torch {report['torch']}")
    print(f"{'batch':>5} {'step ms':>8} {'p90 ms':>7} {'p99 ms':>7} {'ms/stream':>9} {'RTF':>6}")
    for r in report["results"]:
        s = r["step_ms"]
        print(f"{r['batch_size']:>5} {s['median']:>8.2f} {s['p90']:>7.2f} {s['p99']:>7.2f} "
              f"{r['ms_per_stream']:>9.2f} {r['real_time_factor']:>6.3f}")
    print(RTF_NOTE)
    _warn_about_figures(args.frames, [(f"batch {r['batch_size']}", r["step_ms"]["median"], r["step_ms"]["p90"])
                                      for r in report["results"]])
    _emit(report, args)
    return 0


def run_bench_latency(args) -> int:
    from duplex.bench.latency import MODELS, bench_latency, plot_latency

    from .common import check_model_paths, lm_codec, lm_config
    from .hf_repo import apply_hf_repo

    apply_hf_repo(args)
    check_model_paths(args)
    mimi, mimi_config = lm_codec(args) if args.lm else (None, None)
    if not args.lm and args.model not in MODELS:
        raise UsageError(f"unknown --model {args.model!r}: {', '.join(MODELS)} (the LM presets with random "
                         "weights); or pass --lm")
    device, progress = _common(args)
    if device.type != "cuda" and "graphs" in args.modes:
        print("note: CUDA graphs exist only on CUDA; on the CPU the step runs eagerly (timed once, as eager)",
              file=sys.stderr)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    report = bench_latency(model=args.model, device=str(device), dtype=dtype,
                           batch_sizes=args.batch_sizes, modes=args.modes, frames=args.frames, warmup=args.warmup,
                           lm_path=args.lm, mimi_path=mimi, lm_config=lm_config(args) if args.lm else None,
                           mimi_config=mimi_config,
                           progress=progress)
    print(f"# {report['benchmark']} -- {report['model']}, {report['dtype']}, {report['hardware']}, "
          f"torch {report['torch']}")
    stages = ["encode", "temporal", "depth", "decode"]
    print(f"{'mode':>6} {'batch':>5} " + " ".join(f"{s:>8}" for s in stages)
          + f" {'total':>7} {'p99':>7} {'RTF':>6} {'budget ms':>9}")
    for r in report["runs"]:
        print(f"{r['mode']:>6} {r['batch_size']:>5} "
              + " ".join(f"{r['stages_ms'][s]['p50']:>8.2f}" for s in stages)
              + f" {r['total_ms']['p50']:>7.2f} {r['total_ms']['p99']:>7.2f} {r['real_time_factor']:>6.3f}"
              f" {r['latency_budget_ms']['total_p50']:>9.1f}")
    print(f"largest batch in real time (p99 < 80 ms): {report['largest_real_time_batch']}")
    print(RTF_NOTE + "; budget: 80 ms frame + 80 ms acoustic delay + median compute")
    _warn_about_figures(args.frames, [(f"{r['mode']} batch {r['batch_size']}", r["total_ms"]["p50"],
                                       r["total_ms"]["p90"]) for r in report["runs"]])
    if args.plot:
        plot_latency(report, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    _emit(report, args)
    return 0


def _pitch_summary(report: dict) -> str:
    if report["pitch_error"] is None:
        return "no voiced frames to compare pitch"
    return (f"pitch error {report['pitch_error']:.1%} median, {report['gross_pitch_error']:.0%} of "
            f"{report['voiced_frames']} voiced frames more than 20% off")


def run_bench_codec_quality(args) -> int:
    import numpy as np

    from codec import Mimi
    from codec.eval.quality import evaluate, plot_spectrograms

    from ..data.codec_crops import CorpusAudio
    from .model_paths import config_hint, resolve_mimi_checkpoint

    _check_report_paths(args)
    checkpoint, config = resolve_mimi_checkpoint(args.checkpoint, args.config)
    with config_hint(checkpoint, config):
        mimi = Mimi.from_checkpoint(checkpoint, config=config, device=pick_device(args.device))
    try:
        corpus = CorpusAudio(args.data, args.split)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    clips = [c.astype(np.float32) / 32768.0 for c in corpus.clips[: args.max_clips]]
    report = evaluate(mimi, clips, args.num_codebooks, speech_masks=corpus.speech_masks[: args.max_clips])
    report.update(checkpoint=checkpoint, split=args.split)
    print(f"{report['clips']} clips, {report['num_codebooks']} codebooks ({report['kbps']:.2f} kbps): "
          f"STOI {report['stoi']:.3f}, SI-SNR {report['si_snr']:.2f} dB, mel distance {report['mel_distance']:.3f}, "
          f"{_pitch_summary(report)}, "
          f"smallest codebook perplexity {report['min_speech_perplexity_fraction']:.1%} of its size on speech frames "
          f"({report['speech_frames_fraction']:.0%} of frames), {report['min_perplexity_fraction']:.1%} on all frames")
    if args.plot:
        plot_spectrograms(mimi, clips[0], args.plot, args.num_codebooks)
    _emit(report, args)
    return 0


def run_bench_serve(args) -> int:
    from ..bench.fuzz import format_fuzz_report
    from ..bench.serve import format_report

    _check_report_paths(args)
    try:  # a server started here logs errors only meanwhile (bench.serve.serve_here)
        report = _bench_serve(args)
    except KeyboardInterrupt:  # the clients and the server are stopped by then
        print("duplex bench serve: interrupted (Ctrl-C): no report", file=sys.stderr)
        return 130
    where = args.url or f"a server started here ({report['hardware']}, torch {report['torch']})"
    if args.fuzz:
        print(f"# serve --fuzz {args.fuzz} (seed {args.seed}) against {where}")
        print(format_fuzz_report(report))
        if "resident_mb" in report:
            memory = report["resident_mb"]
            print(f"resident memory of this process (server and fuzzer): {memory['before']:.0f} MB before, "
                  f"{memory['after']:.0f} MB after")
    else:
        print(f"# serve -- {args.clients} x {args.seconds:g} s ({args.formats}) against {where}")
        print(format_report(report))
    if args.json:
        _emit_file(report, args)
    if args.fuzz:
        return 0 if report["healthy"] else 1
    return 1 if any("exception" in c for c in report["clients"]) else 0


def _resident_mb() -> float:
    import resource

    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * resource.getpagesize() / 2**20, 1)
    except OSError:  # not Linux
        return float("nan")


def _bench_serve(args) -> dict:
    import asyncio

    from ..bench.fuzz import LogWatcher, fuzz
    from ..bench.serve import bench_serve

    def progress(text: str) -> None:
        print(f"duplex bench serve: {text}", file=sys.stderr)

    if args.url:
        if args.lm or args.mimi or args.slots:
            raise UsageError("--url loads a running server: the model and --slots options are for one started here")
        if args.fuzz:  # what the server logs cannot be watched from here: the health checks only
            return {"url": args.url, **asyncio.run(fuzz(args.url, messages=args.fuzz, seed=args.seed,
                                                        token=args.token, progress=progress))}
        return bench_serve(url=args.url, clients=args.clients, seconds=args.seconds, formats=args.formats,
                           nice=args.client_nice, token=args.token, progress=progress)
    from ..runtime.realtime import freeze_startup_objects
    from .common import build_engine

    slots = args.slots or (2 if args.fuzz else args.clients)
    if slots < (2 if args.fuzz else args.clients):
        raise UsageError(f"--slots {slots} is fewer than --clients {args.clients}" if not args.fuzz else
                         "--fuzz needs --slots 2 or more (a hostile client and the health check's)")
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = build_engine(args, slots)
    freeze_startup_objects()  # as duplex serve does
    try:
        if args.fuzz:
            from ..bench.serve import serve_here

            before = _resident_mb()
            with LogWatcher() as watcher:
                report = serve_here(engine, lambda url: fuzz(url, messages=args.fuzz, seed=args.seed,
                                                             log_problems=watcher.take, progress=progress),
                                    max_waiting=1)
            report["resident_mb"] = {"before": before, "after": _resident_mb()}  # server and fuzzer together
            return report
        return bench_serve(engine=engine, clients=args.clients, seconds=args.seconds, formats=args.formats,
                           nice=args.client_nice, token=args.token, progress=progress)
    finally:
        gc.unfreeze()  # a caller of main() in the same process keeps its collector as it was


def run_turns_score(args) -> int:
    from ..bench.turntaking.score import format_table, score_dir

    _check_report_paths(args)

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\rscored {done}/{total} samples", end="" if done < total else "\n", file=sys.stderr)

    report = score_dir(args.dir, backchannel_truth=args.backchannel_gt, rule=args.backchannel_rule,
                       vad=not args.no_vad, progress=progress)
    print(format_table(report))
    if args.json:
        _emit_file(report, args)
    if args.plots:
        from ..bench.turntaking.plots import plot_report

        written = plot_report(Path(args.dir), report, Path(args.plots))
        print(f"{len(written)} figures -> {args.plots} (overview.png and one timeline per sample)", file=sys.stderr)
    return 0


def run_turns_run(args) -> int:
    from ..bench.turntaking.runner import run_samples
    from ..bench.turntaking.score import format_table, score_dir
    from ..runtime.realtime import freeze_startup_objects
    from .common import build_engine

    _check_report_paths(args)
    source, out = Path(args.dir), Path(args.out)
    if not source.is_dir():
        raise UsageError(f"{source}: not a folder")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} is not empty: give a new folder for the outputs")
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = build_engine(args, args.slots)
    freeze_startup_objects()
    bar = None

    def progress(done: int, total: int, audio: float, audio_total: float, wall: float) -> None:
        nonlocal bar
        speed = audio / wall if wall > 0 else 0.0
        eta = (audio_total - audio) / speed if speed > 0 else float("nan")
        if sys.stderr.isatty():
            if bar is None:
                from tqdm import tqdm

                bar = tqdm(total=total, unit="sample")
            bar.update(done - bar.n)
            bar.set_postfix_str(f"{speed:.2f}x real time, ETA {eta:.0f} s")
        elif done == total or done % 10 == 0:
            print(f"{done}/{total} samples, {speed:.2f}x real time, ETA {eta:.0f} s", file=sys.stderr)

    try:
        ran = run_samples(engine, source, out, seed=args.seed, progress=progress)
    finally:
        gc.unfreeze()
        if bar is not None:
            bar.close()
    if not ran["samples"]:
        raise UsageError(f"{source}: no FDB sample folder (input.wav with an annotation, or under a *backchannel* "
                         "folder)")
    print(f"{ran['samples']} samples, {ran['audio_seconds']:.1f} s of audio in {ran['wall_seconds']:.1f} s "
          f"({ran['audio_seconds'] / max(ran['wall_seconds'], 1e-9):.2f}x real time, {args.slots} slot"
          f"{'' if args.slots == 1 else 's'}) -> {out}",
          file=sys.stderr)
    report = score_dir(out, backchannel_truth=args.backchannel_gt, rule=args.backchannel_rule)
    report["run"] = {**ran, "slots": args.slots, "seed": args.seed}
    print(format_table(report))
    if args.json:
        _emit_file(report, args)
    return 0


def run_turns_make_set(args) -> int:
    from ..bench.turntaking.make_set import make_set

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} is not empty: give a new folder for the set")
    try:
        counts = make_set(Path(args.corpus), out, split=args.split, per_task=args.per_task, reference=args.reference)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    print(", ".join(f"{task}: {n}" for task, n in counts.items()) + f" samples -> {out}", file=sys.stderr)
    return 0


def register(commands) -> None:
    """``duplex bench codec | lm | latency | serve | codec-quality``."""
    bench = commands.add_parser("bench", help="benchmarks")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    p = bench_commands.add_parser("codec", help="streaming codec encode + decode time per 80 ms frame")
    p.add_argument("--checkpoint", metavar="PATH", help="time this codec file (default: the shipped codec, the one "
                   "duplex serve runs)")
    p.add_argument("--config", metavar="JSON", help="'official' times Kyutai's Mimi shape (random weights); a "
                   "config JSON times that shape; with --checkpoint, its config (default: NAME.json beside it, or "
                   "its training run's config.json, else official Mimi)")
    p.add_argument("--num-codebooks", type=int, default=8, metavar="N", help="codebooks encoded and decoded")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    add_bench_options(p, [1, 8])
    p.set_defaults(run=run_bench_codec)
    p = bench_commands.add_parser("lm", help="LM generator step time per 80 ms frame (temporal + depth + sampling)")
    p.add_argument("--config", default=None,
                   help="preset (default, small, moshi_7b: random weights of that shape) or a JSON config in the "
                   "official keyword layout (default: the shipped LM; with --checkpoint, the config beside it)")
    p.add_argument("--checkpoint", metavar="PATH", help="time real weights (default: random weights)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights and "
                   "activations")
    add_bench_options(p, [1, 8], what="steps")
    p.set_defaults(run=run_bench_lm)
    p = bench_commands.add_parser("latency", help="whole-engine ms per frame by stage and batch size (JSON + plot)")
    p.add_argument("--model", default="default", help="default (shipped small model), default-official-codec (its "
                   "LM with the official Mimi architecture) or moshi_7b (7B shapes, random weights); or pass --lm "
                   "(and --mimi)")
    add_model_options(p)
    add_bench_options(p, [1, 2, 4, 8])
    p.add_argument("--modes", nargs="+", default=["eager", "graphs"], choices=["eager", "graphs"],
                   help="graphs only on CUDA")
    p.add_argument("--plot", metavar="PNG", help="draw ms/frame against batch size here")
    p.set_defaults(run=run_bench_latency)
    p = bench_commands.add_parser("serve", help="N time-synchronous clients x S seconds against a voice server: "
                                  "reply rate, late and lost replies, deadline misses, step time")
    p.add_argument("--clients", type=positive, default=4, help="concurrent clients, one process each")
    p.add_argument("--seconds", type=positive_float, default=20.0, help="how long every client talks")
    p.add_argument("--format", dest="formats", choices=["mixed", "opus", "pcm16"], default="mixed",
                   help="client audio: Ogg/Opus (Kyutai's), raw pcm16, or mixed (every other client)")
    p.add_argument("--url", help="a running server to load (default: start one here on the model options)")
    p.add_argument("--token", help="the server's token, if it requires one")
    p.add_argument("--slots", type=positive, help="slots of the server started here (default: --clients)")
    p.add_argument("--threads", type=non_negative, default=0,
                   help="CPU threads of the server started here (default: torch's choice)")
    p.add_argument("--client-nice", type=int_in(0, 19, "a niceness 0-19"), default=10,
                   help="niceness of the client processes: real clients run elsewhere, so on the server's machine "
                        "they yield the CPU to it (0: equal terms)")
    p.add_argument("--fuzz", type=positive, metavar="N",
                   help="instead of the load: N hostile messages in families (malformed, oversized, Opus bombs, "
                        "floods, connection churn, a jammed queue, HTTP garbage), a health check after each")
    p.add_argument("--seed", type=int, default=0, help="with --fuzz: the same seed sends the same messages")
    add_model_options(p)
    p.add_argument("--json", metavar="PATH", help="also write the JSON report here")
    p.set_defaults(run=run_bench_serve)
    turns = bench_commands.add_parser("turns", help="the turn-taking benchmark (Full-Duplex-Bench compatible)")
    turns_commands = turns.add_subparsers(dest="turns_command", required=True, metavar="ACTION")
    p = turns_commands.add_parser("run", help="run the model over FDB sample folders (many at once, offline), "
                                  "write output.wav and output.json in the same layout, then score them")
    p.add_argument("dir", help="a folder of FDB sample folders (each with input.wav and its annotation)")
    p.add_argument("out", help="a new folder for the outputs (DIR's layout)")
    add_model_options(p)
    p.add_argument("--slots", type=positive, default=4, help="samples run at once")
    p.add_argument("--threads", type=non_negative, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (sample i uses seed + i): same seed, same run")
    p.add_argument("--json", metavar="PATH", help="also write the report here")
    p.add_argument("--backchannel-gt", metavar="JSON", help="FDB's icc_gt_distribution.json (for the JSD)")
    p.add_argument("--backchannel-rule", choices=["current", "published"], default="current",
                   help="as for score")
    p.set_defaults(run=run_turns_run)
    p = turns_commands.add_parser("make-set", help="FDB-layout sample folders cut from a synthetic corpus, one task "
                                  "folder per scenario, with the expected answers")
    p.add_argument("corpus", help="a corpus made by 'duplex data synth'")
    p.add_argument("out", help="a new folder for the set")
    p.add_argument("--split", default="heldout", help="which conversations (heldout or train)")
    p.add_argument("--per-task", type=positive, default=20, help="samples per task at most")
    p.add_argument("--reference", action="store_true",
                   help="also write the corpus's own assistant channel as output.wav/output.json (scoring it gives "
                        "the timings the corpus was made with)")
    p.set_defaults(run=run_turns_make_set)
    p = turns_commands.add_parser("score", help="FDB v1 figures (TOR, latency, backchannel) and v1.5 VAD timing of "
                                  "sample folders holding output.json and/or output.wav")
    p.add_argument("dir", help="a folder of FDB sample folders (each with input.wav and its annotation)")
    p.add_argument("--json", metavar="PATH", help="also write the report (tasks, folders, samples) here")
    p.add_argument("--backchannel-gt", metavar="JSON", help="FDB's icc_gt_distribution.json (for the JSD)")
    p.add_argument("--backchannel-rule", choices=["current", "published"], default="current",
                   help="which short segments count for frequency and JSD: FDB's code since 2026-02 (current) or "
                        "the code of its published Moshi figures")
    p.add_argument("--no-vad", action="store_true", help="words only: no backchannel or v1.5 timing figures")
    p.add_argument("--plots", metavar="DIR", help="write a timeline PNG per sample and overview.png here")
    p.set_defaults(run=run_turns_score)
    p = bench_commands.add_parser("codec-quality", help="reconstruction quality on a corpus split (JSON + PNG)")
    p.add_argument("--data", required=True, help="corpus folder made by 'duplex data synth'")
    p.add_argument("--split", default="heldout", help="corpus split to measure (heldout or train)")
    p.add_argument("--checkpoint", metavar="PATH", help="codec .safetensors (default: the codec shipped with duplex)")
    p.add_argument("--config", metavar="JSON", help="its config "
                   "(default: NAME.json beside it, or its training run's config.json, else official Mimi)")
    p.add_argument("--num-codebooks", type=int, default=8, help="codebooks of the reconstruction")
    p.add_argument("--max-clips", type=positive, default=40, help="channels to evaluate at most (default 40)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--json", metavar="PATH", help="also write the JSON report here")
    p.add_argument("--plot", metavar="PNG", help="spectrograms of original vs reconstruction")
    p.set_defaults(run=run_bench_codec_quality)
