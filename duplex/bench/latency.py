"""Latency benchmark of the whole engine: per-stage and total milliseconds per 80 ms frame, by batch size and
execution mode (eager / CUDA graphs), the largest batch that stays real time, and the latency budget. ``compile``:
every engine with those stages compiled (``Engine(compile=...)``: True for all); each run then says how long
each took (in the warm-up frames, untimed), or that it fell back to eager.

Every slot of an engine of ``batch`` slots is active every frame (the worst case). Inputs are low-level noise.
"""

from __future__ import annotations

import time
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from codec import Mimi
from codec.eval.bench import FRAMES, RTF_NOTE, WARMUP, caveats
from codec.modules.quantized import SCB
from codec.utils.stats import describe_device

from ..model.config import LMConfig
from ..model.lm import MoshiLM, default_dtype
from ..runtime.checkpoints import ModelFiles
from ..runtime.engine import STAGES, Engine, SamplingOptions
from ..runtime.quantization import check_quantize
from .lm import age_frames
from .variants import Variant, baseline_of

FRAME_MS = 80.0
ACOUSTIC_DELAY_MS = 80.0
BATCH_SIZES = (1, 2, 4, 8)
MODES = ("eager", "graphs")
TABLE_STAGES = ("encode", "temporal", "depth", "decode")  # the table's columns (the JSON and plot have all STAGES)


DEFAULT_SEED = 20261124  # the random weights of the shapes this benchmark times by name
# The models this benchmark builds by name (the LM presets with random weights), besides model files.
MODELS = ("default", "default-official-codec", *sorted(set(LMConfig.PRESETS) - {"default"}))


def load_models(model: str, device: torch.device, dtype: Optional[torch.dtype],
                files: Optional[ModelFiles] = None, quantize: Optional[str] = None) -> Tuple[MoshiLM, Mimi, str]:
    """(LM, codec, description) of ``files`` when given, else of a model named in ``MODELS``: 'default' (the shipped
    small model), 'default-official-codec' (its LM with the official Mimi architecture, random weights: the sizes
    docs/benchmarks.md compares with Kyutai's implementation), or an LM preset such as 'moshi_7b' (its shapes,
    random weights). ``quantize`` ("int8", "fp8"): the LM's linear weights quantized (random weights: made in
    ``dtype`` on ``device``, then quantized there, one matrix at a time)."""
    if dtype is None:
        dtype = default_dtype(device)
    quantize = check_quantize(quantize)
    if files is not None:
        lm, mimi, _ = files.load(device, dtype, quantize=quantize)
        return lm, mimi, f"model files {files.source or files.lm}"
    if model == "default":
        lm, mimi, _ = ModelFiles.default().load(device, dtype, quantize=quantize)
        return lm, mimi, "default model (shipped LM and codec)"
    if model == "default-official-codec":  # the sizes Kyutai's implementation is compared at
        lm = ModelFiles.default().load_lm(device, dtype, quantize=quantize)
        return (lm, Mimi.random(None, seed=DEFAULT_SEED, device=device),
                "the shipped LM with the official Mimi architecture (random weights)")
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}: {', '.join(MODELS)}")
    cfg = LMConfig.preset(model)
    lm = MoshiLM.random(cfg, seed=DEFAULT_SEED, device=device, dtype=dtype)
    if quantize:
        lm.quantize_(quantize)
    return lm, Mimi.random(None, seed=DEFAULT_SEED, device=device), f"{model} shapes, random weights"


def _frames_ms(engines: Sequence[Engine], frames: int, warmup: int, progress=None, label="",
               age: Optional[float] = None) -> List[dict]:
    """Per-stage timings of each engine, its sessions ``age`` seconds into their conversations (``lm.age_frames``);
    the engines take turns frame by frame (one round: one frame of each), so variants timed together see the same
    machine state."""
    slots = [[engine.open(seed=i) for i in range(engine.slots)] for engine in engines]
    for engine, open_slots in zip(engines, slots):
        for slot in open_slots:
            engine.advance_to(slot, age_frames(age, engine.ring_capacity))
    rng = np.random.default_rng(0)
    batch = engines[0].slots
    pcm = (0.05 * rng.standard_normal((8, batch, engines[0].frame_size))).astype(np.float32)
    for engine in engines:
        engine.timer.clear()
    for i in range(warmup + frames):
        if i == warmup:
            for engine in engines:
                engine.timer.clear()
        for engine, open_slots in zip(engines, slots):
            engine.step({s: pcm[i % 8, s] for s in open_slots})
        if progress is not None:
            progress(label, i + 1, warmup + frames)
    return [engine.timer.summary() for engine in engines]


def device_notes(device: str, modes: Sequence[str]) -> List[str]:
    """What ``bench_latency`` will do otherwise than asked on ``device``, to say before it runs: off CUDA there
    are no CUDA graphs, and the 'graphs' mode is timed once, as eager."""
    if torch.device(device).type != "cuda" and "graphs" in modes:
        return ["note: CUDA graphs exist only on CUDA; on the CPU the step runs eagerly (timed once, as eager)"]
    return []


def parameter_count(lm: MoshiLM) -> int:
    """The LM's weights, counted as numbers (a quantized weight's codes count once; its row maxima do not)."""
    return sum(t.numel() for name, t in lm.state_dict().items() if not name.endswith(SCB))


def _compiled(engine: Engine) -> dict:
    """What a compiled engine's stages did: {stage: compile seconds, or the error it fell back to eager on}."""
    return {name: (round(stage.compile_seconds, 1) if stage.compiled else f"eager: {stage.error or 'not compiled'}")
            for name, stage in engine.compiled.items()}


def _run(variant: Variant, engine: Engine, mode: str, batch: int, summary: dict) -> dict:
    if mode == "graphs" and not engine.cuda_graphs:
        summary["note"] = "graph capture failed; these are eager timings"
    total = summary["total"]
    return {
        **({"compiled": _compiled(engine)} if engine.compiled else {}),
        "variant": variant.name, "quantization": engine.quantization,
        "mode": mode, "batch_size": batch, "stages_ms": {k: summary[k] for k in STAGES}, "total_ms": total,
        "ms_per_stream": total["p50"] / batch, "real_time_factor": total["p50"] / FRAME_MS,
        "real_time": total["p99"] < FRAME_MS,
        "latency_budget_ms": {"frame": FRAME_MS, "acoustic_delay": ACOUSTIC_DELAY_MS,
                              "compute_p50": total["p50"], "total_p50": FRAME_MS + ACOUSTIC_DELAY_MS
                              + total["p50"], "total_p99": FRAME_MS + ACOUSTIC_DELAY_MS + total["p99"]},
        **({"note": summary["note"]} if "note" in summary else {}),
    }


def _engine(lm: MoshiLM, mimi: Mimi, variant: Variant, mode: str, batch: int, compile=False) -> Engine:
    return Engine(lm, mimi, slots=batch, cuda_graphs=(mode == "graphs"), sampling=SamplingOptions(),
                  kv_dtype=variant.kv_dtype, compile=compile)


def _timed_alone(lm: MoshiLM, mimi: Mimi, variant: Variant, mode: str, batch: int, frames: int, warmup: int,
                 progress, age: Optional[float] = None, compile=False) -> dict:
    """One engine timed on its own. On CUDA also its memory: ``torch.cuda.memory_allocated`` once built and
    ``max_memory_allocated`` over the run (both with the models, which are all that is allocated before), and an
    engine that does not fit is a run with ``"error": "out of memory"`` instead of the end of the benchmark."""
    dev = lm.device
    cuda = dev.type == "cuda"
    engine = None
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    try:
        engine = _engine(lm, mimi, variant, mode, batch, compile)
        built = torch.cuda.memory_allocated(dev) if cuda else None
        (summary,) = _frames_ms([engine], frames, warmup, progress, f"{variant.name} {mode} batch {batch}", age)
        run = _run(variant, engine, mode, batch, summary)
        if cuda:
            run["memory"] = {"allocated_after_build_bytes": built, "peak_bytes": torch.cuda.max_memory_allocated(dev)}
    except torch.cuda.OutOfMemoryError:
        run = {"variant": variant.name, "mode": mode, "batch_size": batch, "error": "out of memory",
               "quantization": {"weights": lm.quantization, "kv": variant.kv}}
    del engine
    if cuda:
        torch.cuda.empty_cache()
    return run


def bench_latency(model: str = "default", device: str = "cpu", dtype: Optional[torch.dtype] = None,
                  batch_sizes: Sequence[int] = BATCH_SIZES, modes: Sequence[str] = MODES,
                  frames: int = FRAMES, warmup: int = WARMUP, files: Optional[ModelFiles] = None,
                  progress=None, variants: Optional[Sequence[Variant]] = None,
                  interleave: Optional[bool] = None, age: Optional[float] = None, compile=False) -> dict:
    """Time the engine's frame step for each variant (``bench.variants``; default: the model as loaded), mode and
    batch size. ``interleave`` (default: off CUDA): every variant's models are loaded at once and their engines of
    one mode and batch size take turns frame by frame, so a comparison is made in the same seconds; otherwise (on
    CUDA, where the 7B variants do not fit together) one weight format is loaded at a time and its engines are
    timed one after the other, each with its memory (``_timed_alone``). ``age``: the sessions' age in seconds
    when timing starts (a step attends the KV ring written so far); None: a full ring (the steady state)."""
    dev = torch.device(device)
    variants = list(variants or [Variant()])
    interleave = dev.type != "cuda" if interleave is None else interleave
    if dev.type != "cuda":
        modes = [m for m in modes if m == "eager"] or ["eager"]
    formats = list(dict.fromkeys(v.weights for v in variants))
    loaded: dict = {}

    def load(weights: str) -> MoshiLM:
        lm, mimi, description = load_models(model, dev, dtype, files, quantize=weights)
        if not loaded:  # one codec for every variant (only the LM's weights differ)
            loaded.update(mimi=mimi, description=description, parameters=parameter_count(lm),
                          dtype=str(lm.dtype).replace("torch.", ""))
        return lm

    runs = []
    if interleave:
        lms = {weights: load(weights) for weights in formats}
        for mode in modes:
            for batch in batch_sizes:
                engines = [_engine(lms[v.weights], loaded["mimi"], v, mode, batch, compile) for v in variants]
                summaries = _frames_ms(engines, frames, warmup, progress, f"{mode} batch {batch}", age)
                runs += [_run(v, e, mode, batch, s) for v, e, s in zip(variants, engines, summaries)]
                del engines
        del lms
    else:
        for weights in formats:
            lm = load(weights)
            for variant in (v for v in variants if v.weights == weights):
                for mode in modes:
                    for batch in batch_sizes:
                        runs.append(_timed_alone(lm, loaded["mimi"], variant, mode, batch, frames, warmup, progress,
                                                 age, compile))
            del lm
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        order = [v.name for v in variants]
        runs.sort(key=lambda r: (modes.index(r["mode"]), batch_sizes.index(r["batch_size"]), order.index(r["variant"])))
    baseline = baseline_of(variants).name
    _compare(runs, baseline)
    largest = {}
    for variant in variants:
        for mode in modes:
            ok = [r["batch_size"] for r in runs if r["mode"] == mode and r["variant"] == variant.name
                  and r.get("real_time")]
            largest[mode if len(variants) == 1 else f"{variant.name} {mode}"] = max(ok) if ok else 0
    return {
        "benchmark": "engine frame step (codec encode + LM temporal + depth with sampling + codec decode)",
        "model": loaded["description"],
        "lm_parameters": loaded["parameters"],
        "dtype": loaded["dtype"],
        "variants": [{"name": v.name, "weights": v.weights, "kv": v.kv} for v in variants],
        "baseline": baseline, "interleaved": interleave,
        "compile": next((list(r["compiled"]) for r in runs if "compiled" in r), []),
        "device": str(dev), "hardware": describe_device(dev), "torch": torch.__version__,
        "frames": frames, "warmup": warmup, "date": time.strftime("%Y-%m-%d"),
        "age_s": age,  # None: a full KV ring
        "largest_real_time_batch": largest,
        "runs": runs,
    }


def _compare(runs: List[dict], baseline: str) -> None:
    """Each timed run's ``speedup``: the baseline variant's median at the same mode and batch size over its own
    (above 1: faster than the baseline)."""
    base = {(r["mode"], r["batch_size"]): r["total_ms"]["p50"] for r in runs
            if r["variant"] == baseline and "total_ms" in r}
    for r in runs:
        key = (r["mode"], r["batch_size"])
        if "total_ms" in r and key in base:
            r["speedup"] = base[key] / r["total_ms"]["p50"]


def timed(report: dict) -> List[dict]:
    """The runs of a report that were timed (not those that ran out of memory)."""
    return [r for r in report["runs"] if "total_ms" in r]


def format_table(report: dict) -> str:
    """The report of ``bench_latency`` as a person reads it: a header line, one row per variant, mode and batch
    size (stage medians, total median and p99, the speedup over the baseline variant when there are several, RTF,
    latency budget), the largest real-time batch per mode, what the columns mean."""
    several = len(report.get("variants", ())) > 1
    age = report.get("age_s")
    rows = [f"# {report['benchmark']} -- {report['model']}, {report['dtype']}, {report['hardware']}, "
            f"torch {report['torch']}, sessions " + ("with a full KV ring" if age is None else f"{age:g} s in")
            + (f", compiled: {' '.join(report['compile'])} (torch.compile)" if report.get("compile") else ""),
            (f"{'variant':>12} " if several else "") + f"{'mode':>6} {'batch':>5} "
            + " ".join(f"{s:>8}" for s in TABLE_STAGES) + f" {'total':>7} {'p99':>7}"
            + (f" {'vs ' + report['baseline']:>9}" if several else "") + f" {'RTF':>6} {'budget ms':>9}"]
    for r in report["runs"]:
        head = (f"{r['variant']:>12} " if several else "") + f"{r['mode']:>6} {r['batch_size']:>5} "
        if "total_ms" not in r:
            rows.append(head + r["error"])
            continue
        speedup = f" {r['speedup']:>8.2f}x" if "speedup" in r else f" {'':>9}"
        rows.append(head + " ".join(f"{r['stages_ms'][s]['p50']:>8.2f}" for s in TABLE_STAGES)
                    + f" {r['total_ms']['p50']:>7.2f} {r['total_ms']['p99']:>7.2f}" + (speedup if several else "")
                    + f" {r['real_time_factor']:>6.3f} {r['latency_budget_ms']['total_p50']:>9.1f}")
    largest = ", ".join(f"{mode} {batch}" for mode, batch in report["largest_real_time_batch"].items())
    rows.append(f"largest batch in real time (p99 < {FRAME_MS:.0f} ms): {largest}")
    rows.append(f"ms: medians per frame; {RTF_NOTE}; budget: {FRAME_MS:.0f} ms frame + {ACOUSTIC_DELAY_MS:.0f} ms "
                "acoustic delay + median compute")
    compiled = [(f"{r['variant']} " if several else "") + f"{r['mode']} batch {r['batch_size']}: "
                + ", ".join(f"{name} {value} s" if isinstance(value, float) else f"{name} {value}"
                            for name, value in r["compiled"].items()) for r in report["runs"] if "compiled" in r]
    if compiled:
        rows.append("compiled (in the warm-up frames): " + "; ".join(compiled))
    if several:
        rows.append(f"vs {report['baseline']}: its median over the variant's (above 1: faster); variants "
                    + ("timed in turns, frame by frame" if report.get("interleaved") else "timed one after another"))
    return "\n".join(rows)


def report_caveats(report: dict) -> List[str]:
    """What the figures of a ``bench_latency`` report cannot mean (``codec.eval.bench.caveats``)."""
    return caveats(report["frames"], [(f"{r.get('variant', '')} {r['mode']} batch {r['batch_size']}".strip(),
                                       r["total_ms"]["p50"], r["total_ms"]["p90"]) for r in timed(report)])


def plot_latency(report: dict, path: str) -> None:
    """ms per frame against batch size: per-stage stacked bars of the medians (one group per mode), the p99 as a
    black tick above each bar, and the 80 ms deadline. Batch sizes are categories (evenly spaced, labelled with
    their values); the y axis starts at 0. With several variants, the baseline variant's runs."""
    from matplotlib.figure import Figure  # noqa: PLC0415  optional, slow to import; no pyplot: backend left alone

    stages = ["input", "encode", "temporal", "depth", "decode", "output"]
    runs_timed = [r for r in timed(report) if r.get("variant", report.get("baseline")) == report.get("baseline")]
    modes = sorted({r["mode"] for r in runs_timed})
    batches = sorted({r["batch_size"] for r in runs_timed})
    width = 0.8 / len(modes)
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    colors = {stage: f"C{i}" for i, stage in enumerate(stages)}
    for m, mode in enumerate(modes):
        runs = {r["batch_size"]: r for r in runs_timed if r["mode"] == mode}
        x = [batches.index(b) + (m - (len(modes) - 1) / 2) * width for b in runs]
        bottom = [0.0] * len(runs)
        for stage in stages:
            heights = [runs[b]["stages_ms"].get(stage, {}).get("p50", 0.0) for b in runs]
            ax.bar(x, heights, width * 0.9, bottom=bottom, color=colors[stage],
                   label=stage if m == 0 else None, hatch="//" if mode == "graphs" else None)
            bottom = [lo + h for lo, h in zip(bottom, heights)]
        ax.scatter(x, [runs[b]["total_ms"]["p99"] for b in runs], marker="_", s=200, color="black",
                   label="p99 (whole step)" if m == 0 else None, zorder=3)
    ax.axhline(FRAME_MS, color="red", linestyle="--", linewidth=1, label="80 ms frame (real time)")
    ax.set_xticks(range(len(batches)), [str(b) for b in batches])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("concurrent sessions (batch size)" + ("; hatched: CUDA graphs" if "graphs" in modes else ""))
    ax.set_ylabel("ms per frame (stage medians, stacked)")
    ax.set_title(f"{report['model']}\n{report['hardware']}, {report['dtype']}", fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
