"""``duplex bench turns run | make-set | scale-set | score | compare``: the turn-taking benchmark (Full-Duplex-Bench
compatible). Parsing and printing only; the work, the checks and the report's format are in
``duplex.bench.turntaking``."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from codec.utils.stats import describe_device

from ..bench import latency
from ..bench.turntaking import compare, make_set, metrics, runner, scale_set
from ..bench.turntaking.plots import plot_report
from ..bench.turntaking.score import console_progress, format_table, score_dir
from ..errors import UsageError
from ..model.config import LMConfig
from ..model.sampling import SlotSampling
from ..runtime.checkpoints import ModelFiles
from ..runtime.engine import Engine
from ..runtime.quantization import kv_dtype
from .common import (
    MODEL_FILE_OPTIONS,
    add_model_options,
    build_engine,
    model_files,
    non_negative,
    pick_device,
    positive,
    positive_float,
)
from .offline import add_adapter_option, add_sampling_options, chosen_adapter, sampling_settings
from .prompts import add_prompt_options, system_prompt
from .reports import check_report_paths, write_json


def run_score(args) -> int:
    check_report_paths(args)
    if (Path(args.dir) / runner.MARK).is_file():  # figures of part of a run read like a whole run's otherwise
        print(f"note: {args.dir} holds an unfinished run (bench turns run again to finish it): these figures are of "
              "the samples finished so far", file=sys.stderr)
    report = score_dir(args.dir, backchannel_truth=args.backchannel_gt, rule=args.backchannel_rule,
                       vad=not args.no_vad, progress=console_progress)
    print(format_table(report))
    write_json(report, args)
    if args.plots:
        written = plot_report(Path(args.dir), report, Path(args.plots))
        print(f"{len(written)} figures -> {args.plots} (overview.png and one timeline per sample)", file=sys.stderr)
    return 0


def run_setup(args, files: ModelFiles) -> dict:
    """What changes a run's outputs besides the set, the seed and the slot count, as known before the model loads:
    the model's files, the system prompt options, the LM's dtype and device type, the weights' quantization and
    the KV rings' dtype; with LoRA adapters, their files, whether they are fused and the one every sample runs. A
    resumed run must have the same (``runner.check_output``)."""
    def path(value):
        return None if value is None else os.path.abspath(value)

    config = files.lm_config
    voice = args.voice_prompt
    # Recorded only with adapters: a run without them has the setup it had before adapters existed (and resumes).
    lora = {} if not files.lora_adapters else {
        "lora": [path(adapter) for adapter in files.lora_adapters], "fuse": files.fuse_lora,
        "adapter": None if files.fuse_lora else (chosen_adapter(args, files) or files.adapter_names()[0])}
    return {"model": files.name, "lm": path(files.lm),
            "lm_config": config if isinstance(config, str) and config in LMConfig.PRESETS else
            path(config) if isinstance(config, (str, os.PathLike)) else repr(config),
            "mimi": path(files.mimi), "mimi_config": path(files.mimi_config), "tokenizer": path(files.tokenizer),
            "voice_prompt": path(voice) if voice is not None and os.path.exists(voice) else voice,
            "voice_prompt_dir": path(args.voice_prompt_dir), "text_prompt": args.text_prompt,
            "dtype": args.dtype, "device": pick_device(args.device).type,
            "quantize": args.quantize, "kv_dtype": args.kv_dtype, **lora}


def run_sampling(args) -> dict:
    """The sampling options that differ from the engine's defaults (Kyutai's), as ``Engine.open`` changes: every
    sample's slot samples so, with its own seed (``--seed`` + its index)."""
    default = SlotSampling()
    return {name: value for name, value in sampling_settings(args).items() if getattr(default, name) != value}


def random_model(args) -> bool:
    """Whether ``--model`` names random weights of a shape (``bench latency``'s models other than the shipped
    one), after checking that no option names model files beside it."""
    if args.model is None or args.model == "default":
        return False
    if args.model not in latency.MODELS:
        raise UsageError(f"unknown --model {args.model!r}: {', '.join(latency.MODELS)} (random weights of those "
                         "shapes; 'default' is the shipped model)")
    given = [flag for flag, attr in (("--hf-repo", "hf_repo"), *MODEL_FILE_OPTIONS, ("--adapter", "adapter"))
             if getattr(args, attr, None) is not None] + (["--lora"] if args.lora else []) \
        + (["--fuse"] if args.fuse else [])
    if given:
        raise UsageError(f"--model {args.model} runs random weights of that shape: leave out {', '.join(given)}")
    return True


def random_setup(args) -> dict:
    """``run_setup`` of a model of random weights: its name and seed instead of files."""
    weights = f"random, seed {latency.DEFAULT_SEED}"
    if args.model == "default-official-codec":
        weights = f"the shipped LM; the official Mimi architecture, {weights}"
    return {"model": args.model, "weights": weights,
            "voice_prompt": args.voice_prompt, "voice_prompt_dir": args.voice_prompt_dir and
            os.path.abspath(args.voice_prompt_dir), "text_prompt": args.text_prompt, "dtype": args.dtype,
            "device": pick_device(args.device).type, "quantize": args.quantize, "kv_dtype": args.kv_dtype}


def random_engine(args, slots: int) -> Engine:
    """The engine on ``--model``'s random weights (``bench latency``'s ``load_models``), no tokenizer: its text
    stream has no pieces, so its outputs have no words."""
    device = pick_device(args.device)
    lm, mimi, _ = latency.load_models(args.model, device, getattr(torch, args.dtype) if args.dtype else None,
                                      quantize=args.quantize)
    return Engine(lm, mimi, None, slots=slots, cuda_graphs=not args.no_cuda_graphs,
                  kv_dtype=kv_dtype(args.kv_dtype))


RANDOM_NOTE = "random weights: the outputs time the engine, their turn-taking scores mean nothing"


def run_run(args) -> int:
    check_report_paths(args)
    if random_model(args):
        files, adapter, setup = None, None, random_setup(args)
    else:
        files = model_files(args)
        adapter = chosen_adapter(args, files)
        setup = run_setup(args, files)
        if files.tokenizer is None:  # the scores count words: without them every turn looks missed
            print(f"warning: no tokenizer found for {files.lm} (give --tokenizer): its text stream is not read, so "
                  "the figures that count words (TOR, latencies, answers) see none", file=sys.stderr)
    sampling = run_sampling(args)
    if sampling:  # recorded only when not the defaults: a default run has the setup it had before the options
        setup["sampling"] = sampling
    runner.check_output(args.dir, args.out, args.seed, args.slots, setup)  # before minutes of loading the model
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    engine = build_engine(args, args.slots, files) if files is not None else random_engine(args, args.slots)
    # random weights have no tokenizer: no role text unless asked (then the engine says it needs one)
    prompt = system_prompt(args, engine) if files is not None else system_prompt(args, engine, persona_default=None)
    loaded = time.perf_counter() - started
    try:
        with runner.ConsoleProgress() as shown:
            ran = runner.run_samples(engine, args.dir, args.out, seed=args.seed, progress=shown, prompt=prompt,
                                     setup=setup, adapter=adapter, sampling=sampling)
    except runner.RunInterrupted as e:
        print(f"duplex: {e}", file=sys.stderr)
        return 130
    print(runner.format_run(ran, args.slots, args.out), file=sys.stderr)
    device = getattr(getattr(engine, "lm", None), "device", None)  # (stand-ins have no model)
    run = {**ran, "set": str(Path(args.dir).resolve()), "load_seconds": loaded, "seed": args.seed, "setup": setup,
           "quantization": getattr(engine, "quantization", None),  # what ran (stand-ins have none)
           "hardware": describe_device(device) if device is not None else None, "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d")}
    if files is None:
        run["note"] = RANDOM_NOTE
    print(runner.format_run_table(run))
    report = {}
    if not args.no_score:
        if files is None:
            print(f"note: {RANDOM_NOTE}", file=sys.stderr)
        scoring = time.perf_counter()
        report = score_dir(args.out, backchannel_truth=args.backchannel_gt, rule=args.backchannel_rule)
        run["score_seconds"] = time.perf_counter() - scoring
        print()
        print(format_table(report))
    report["run"] = run
    write_json(report, args)
    return 0


def run_compare(args) -> int:
    check_report_paths(args)
    rows = compare.compare(compare.load(args.reports))
    print(compare.format_markdown(rows))
    write_json(compare.as_json(rows), args)
    return 0


def run_scale_set(args) -> int:
    made = scale_set.scale_set(Path(args.src), Path(args.out), samples=args.samples, hours=args.hours,
                               seed=args.seed)
    print(scale_set.format_scaled(made, args.out), file=sys.stderr)
    return 0


def run_make_set(args) -> int:
    counts = make_set.make_set(Path(args.corpus), Path(args.out), split=args.split, per_task=args.per_task,
                               reference=args.reference)
    print(make_set.format_counts(counts, args.out), file=sys.stderr)
    return 0


def _add_scoring_options(p, rule_help: str) -> None:
    p.add_argument("--backchannel-gt", metavar="JSON", help="FDB's icc_gt_distribution.json (for the JSD)")
    p.add_argument("--backchannel-rule", choices=metrics.RULES, default=metrics.RULES[0], help=rule_help)


def register(bench_commands) -> None:
    """``duplex bench turns run | make-set | scale-set | score | compare``."""
    turns = bench_commands.add_parser("turns", help="the turn-taking benchmark (Full-Duplex-Bench compatible)")
    commands = turns.add_subparsers(dest="turns_command", required=True, metavar="ACTION")
    p = commands.add_parser("run", help="run the model over FDB sample folders (many at once, offline), write "
                            "output.wav and output.json in the same layout, then score them")
    p.add_argument("dir", help="a folder of FDB sample folders (each with input.wav and its annotation)")
    p.add_argument("out", help="a new folder for the outputs (DIR's layout); an interrupted run's folder resumes")
    p.add_argument("--model", metavar="NAME", help="random weights of a shape instead of model files: "
                   f"{', '.join(m for m in latency.MODELS if m != 'default')} (as bench latency; no checkpoint "
                   "needed, for timing: their scores mean nothing); default: the model options' files")
    add_model_options(p)
    add_adapter_option(p)
    p.add_argument("--slots", type=positive, default=runner.SLOTS, help="samples run at once")
    p.add_argument("--no-score", action="store_true", help="run only: no scoring after (the report holds the "
                   "run's figures)")
    p.add_argument("--threads", type=non_negative, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=runner.SEED,
                   help="sampling seed (sample i uses seed + i): same seed, same run")
    add_sampling_options(p, seed=False)
    p.add_argument("--json", metavar="PATH", help="also write the report here")
    add_prompt_options(p, "default: for PersonaPlex, NVIDIA's assistant role, the prompt its README gives for "
                       "Full-Duplex-Bench; none for other models")
    _add_scoring_options(p, "as for score")
    p.set_defaults(run=run_run)
    p = commands.add_parser("make-set", help="FDB-layout sample folders cut from a synthetic corpus, one task folder "
                            "per scenario, with the expected answers")
    p.add_argument("corpus", help="a corpus made by 'duplex data synth'")
    p.add_argument("out", help="a new folder for the set")
    p.add_argument("--split", default=make_set.SPLIT, help="which conversations (heldout or train)")
    p.add_argument("--per-task", type=positive, default=make_set.PER_TASK, help="samples per task at most")
    p.add_argument("--reference", action="store_true",
                   help="also write the corpus's own assistant channel as output.wav/output.json (scoring it gives "
                        "the timings the corpus was made with)")
    p.set_defaults(run=run_make_set)
    p = commands.add_parser("scale-set", help="an FDB-layout set of any size from a small one (its samples in turn, "
                            "each lengthened by a quiet tail): FDB v1's size by default, for timing runs")
    p.add_argument("src", help="a set of FDB sample folders, such as demos/fdb-synthetic")
    p.add_argument("out", help="a new folder for the set")
    p.add_argument("--samples", type=positive, default=scale_set.SAMPLES, help="sample folders to write")
    p.add_argument("--hours", type=positive_float, default=scale_set.HOURS, help="their audio in all")
    p.add_argument("--seed", type=int, default=scale_set.SEED, help="the tails' lengths and noise: same seed, same "
                   "set")
    p.set_defaults(run=run_scale_set)
    p = commands.add_parser("score", help="FDB v1 figures (TOR, latency, backchannel) and v1.5 VAD timing of sample "
                            "folders holding output.json and/or output.wav")
    p.add_argument("dir", help="a folder of FDB sample folders (each with input.wav and its annotation)")
    p.add_argument("--json", metavar="PATH", help="also write the report (tasks, folders, samples) here")
    _add_scoring_options(p, "which short segments count for frequency and JSD: FDB's code since 2026-02 (current) "
                         "or the code of its published Moshi figures")
    p.add_argument("--no-vad", action="store_true", help="words only: no backchannel or v1.5 timing figures")
    p.add_argument("--plots", metavar="DIR", help="write a timeline PNG per sample and overview.png here")
    p.set_defaults(run=run_score)
    p = commands.add_parser("compare", help="'run' reports side by side: one row per set and model, the mean over "
                            "their runs (seeds), with the default model's targets (a markdown table)",
                            description="One markdown row per set and model: the task figures are means over their "
                            "runs (the sampling seeds; a run without a figure, e.g. no takeover and so no latency, is "
                            "left out of that mean), the answers are summed over the runs, and 'talks early' is the "
                            "share of smooth turn-taking samples with 2 or more words more than 0.3 s before the end "
                            "of the user's turn. Issue 28's targets are the last row. Reads 'run --json' reports and "
                            "the result bundles of benchmarks/results (their 'runs').")
    p.add_argument("reports", nargs="+", metavar="REPORT", help="JSON reports written by 'run --json', or result "
                   "bundles of benchmarks/results")
    p.add_argument("--json", metavar="PATH", help="also write the rows here")
    p.set_defaults(run=run_compare)
