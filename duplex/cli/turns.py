"""``duplex bench turns run | make-set | score``: the turn-taking benchmark (Full-Duplex-Bench compatible). Parsing
and printing only; the work, the checks and the report's format are in ``duplex.bench.turntaking``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from ..bench.turntaking import make_set, metrics, runner
from ..bench.turntaking.plots import plot_report
from ..bench.turntaking.score import console_progress, format_table, score_dir
from ..model.config import LMConfig
from ..runtime.checkpoints import ModelFiles
from .common import add_model_options, build_engine, model_files, non_negative, pick_device, positive
from .offline import add_adapter_option, chosen_adapter
from .prompts import add_prompt_options, system_prompt
from .reports import check_report_paths, write_json


def run_score(args) -> int:
    check_report_paths(args)
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


def run_run(args) -> int:
    check_report_paths(args)
    files = model_files(args)
    adapter = chosen_adapter(args, files)
    setup = run_setup(args, files)
    runner.check_output(args.dir, args.out, args.seed, args.slots, setup)  # before minutes of loading the model
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = build_engine(args, args.slots, files)
    prompt = system_prompt(args, engine)
    try:
        with runner.ConsoleProgress() as shown:
            ran = runner.run_samples(engine, args.dir, args.out, seed=args.seed, progress=shown, prompt=prompt,
                                     setup=setup, adapter=adapter)
    except runner.RunInterrupted as e:
        print(f"duplex: {e}", file=sys.stderr)
        return 130
    print(runner.format_run(ran, args.slots, args.out), file=sys.stderr)
    report = score_dir(args.out, backchannel_truth=args.backchannel_gt, rule=args.backchannel_rule)
    report["run"] = {**ran, "slots": args.slots, "seed": args.seed, "setup": setup,
                     "quantization": getattr(engine, "quantization", None)}  # what ran (stand-ins have none)
    print(format_table(report))
    write_json(report, args)
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
    """``duplex bench turns run | make-set | score``."""
    turns = bench_commands.add_parser("turns", help="the turn-taking benchmark (Full-Duplex-Bench compatible)")
    commands = turns.add_subparsers(dest="turns_command", required=True, metavar="ACTION")
    p = commands.add_parser("run", help="run the model over FDB sample folders (many at once, offline), write "
                            "output.wav and output.json in the same layout, then score them")
    p.add_argument("dir", help="a folder of FDB sample folders (each with input.wav and its annotation)")
    p.add_argument("out", help="a new folder for the outputs (DIR's layout); an interrupted run's folder resumes")
    add_model_options(p)
    add_adapter_option(p)
    p.add_argument("--slots", type=positive, default=runner.SLOTS, help="samples run at once")
    p.add_argument("--threads", type=non_negative, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=runner.SEED,
                   help="sampling seed (sample i uses seed + i): same seed, same run")
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
    p = commands.add_parser("score", help="FDB v1 figures (TOR, latency, backchannel) and v1.5 VAD timing of sample "
                            "folders holding output.json and/or output.wav")
    p.add_argument("dir", help="a folder of FDB sample folders (each with input.wav and its annotation)")
    p.add_argument("--json", metavar="PATH", help="also write the report (tasks, folders, samples) here")
    _add_scoring_options(p, "which short segments count for frequency and JSD: FDB's code since 2026-02 (current) "
                         "or the code of its published Moshi figures")
    p.add_argument("--no-vad", action="store_true", help="words only: no backchannel or v1.5 timing figures")
    p.add_argument("--plots", metavar="DIR", help="write a timeline PNG per sample and overview.png here")
    p.set_defaults(run=run_score)
