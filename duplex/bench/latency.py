"""Latency benchmark of the whole engine: per-stage and total milliseconds per 80 ms frame, by batch size and
execution mode (eager / CUDA graphs), the largest batch that stays real time, and the latency budget.

Every slot of an engine of ``batch`` slots is active every frame (the worst case). Inputs are low-level noise.
"""

from __future__ import annotations

import time
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from codec import Mimi
from codec.eval.bench import FRAMES, RTF_NOTE, WARMUP, caveats
from codec.utils.stats import describe_device

from ..model.config import LMConfig
from ..model.lm import MoshiLM, default_dtype
from ..runtime.checkpoints import ModelFiles
from ..runtime.engine import STAGES, Engine, SamplingOptions

FRAME_MS = 80.0
ACOUSTIC_DELAY_MS = 80.0
BATCH_SIZES = (1, 2, 4, 8)
MODES = ("eager", "graphs")
TABLE_STAGES = ("encode", "temporal", "depth", "decode")  # the table's columns (the JSON and plot have all STAGES)


DEFAULT_SEED = 20261124  # the random weights of the shapes this benchmark times by name
# The models this benchmark builds by name (the LM presets with random weights), besides model files.
MODELS = ("default", "default-official-codec", *sorted(set(LMConfig.PRESETS) - {"default"}))


def load_models(model: str, device: torch.device, dtype: Optional[torch.dtype],
                files: Optional[ModelFiles] = None) -> Tuple[MoshiLM, Mimi, str]:
    """(LM, codec, description) of ``files`` when given, else of a model named in ``MODELS``: 'default' (the shipped
    small model), 'default-official-codec' (its LM with the official Mimi architecture, random weights: the sizes
    docs/benchmarks.md compares with Kyutai's implementation), or an LM preset such as 'moshi_7b' (its shapes,
    random weights)."""
    if dtype is None:
        dtype = default_dtype(device)
    if files is not None:
        lm, mimi, _ = files.load(device, dtype)
        return lm, mimi, f"model files {files.source or files.lm}"
    if model == "default":
        lm, mimi, _ = ModelFiles.default().load(device, dtype)
        return lm, mimi, "default model (shipped LM and codec)"
    if model == "default-official-codec":  # the sizes Kyutai's implementation is compared at
        lm = ModelFiles.default().load_lm(device, dtype)
        return (lm, Mimi.random(None, seed=DEFAULT_SEED, device=device),
                "the shipped LM with the official Mimi architecture (random weights)")
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}: {', '.join(MODELS)}")
    cfg = LMConfig.preset(model)
    return (MoshiLM.random(cfg, seed=DEFAULT_SEED, device=device, dtype=dtype),
            Mimi.random(None, seed=DEFAULT_SEED, device=device), f"{model} shapes, random weights")


def _frames_ms(engine: Engine, frames: int, warmup: int, progress=None, label="") -> dict:
    slots = [engine.open(seed=i) for i in range(engine.slots)]
    rng = np.random.default_rng(0)
    pcm = (0.05 * rng.standard_normal((8, engine.slots, engine.frame_size))).astype(np.float32)
    engine.timer.clear()
    for i in range(warmup + frames):
        if i == warmup:
            engine.timer.clear()
        engine.step({s: pcm[i % 8, s] for s in slots})
        if progress is not None:
            progress(label, i + 1, warmup + frames)
    return engine.timer.summary()


def device_notes(device: str, modes: Sequence[str]) -> List[str]:
    """What ``bench_latency`` will do otherwise than asked on ``device``, to say before it runs: off CUDA there
    are no CUDA graphs, and the 'graphs' mode is timed once, as eager."""
    if torch.device(device).type != "cuda" and "graphs" in modes:
        return ["note: CUDA graphs exist only on CUDA; on the CPU the step runs eagerly (timed once, as eager)"]
    return []


def bench_latency(model: str = "default", device: str = "cpu", dtype: Optional[torch.dtype] = None,
                  batch_sizes: Sequence[int] = BATCH_SIZES, modes: Sequence[str] = MODES,
                  frames: int = FRAMES, warmup: int = WARMUP, files: Optional[ModelFiles] = None,
                  progress=None) -> dict:
    dev = torch.device(device)
    lm, mimi, description = load_models(model, dev, dtype, files)
    if dev.type != "cuda":
        modes = [m for m in modes if m == "eager"] or ["eager"]
    runs = []
    for mode in modes:
        for batch in batch_sizes:
            engine = Engine(lm, mimi, slots=batch, cuda_graphs=(mode == "graphs"), sampling=SamplingOptions())
            summary = _frames_ms(engine, frames, warmup, progress, f"{mode} batch {batch}")
            if mode == "graphs" and not engine.cuda_graphs:
                summary["note"] = "graph capture failed; these are eager timings"
            total = summary["total"]
            runs.append({
                "mode": mode, "batch_size": batch, "stages_ms": {k: summary[k] for k in STAGES}, "total_ms": total,
                "ms_per_stream": total["p50"] / batch, "real_time_factor": total["p50"] / FRAME_MS,
                "real_time": total["p99"] < FRAME_MS,
                "latency_budget_ms": {"frame": FRAME_MS, "acoustic_delay": ACOUSTIC_DELAY_MS,
                                      "compute_p50": total["p50"], "total_p50": FRAME_MS + ACOUSTIC_DELAY_MS
                                      + total["p50"], "total_p99": FRAME_MS + ACOUSTIC_DELAY_MS + total["p99"]},
                **({"note": summary["note"]} if "note" in summary else {}),
            })
            del engine
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    largest = {}
    for mode in modes:
        ok = [r["batch_size"] for r in runs if r["mode"] == mode and r["real_time"]]
        largest[mode] = max(ok) if ok else 0
    return {
        "benchmark": "engine frame step (codec encode + LM temporal + depth with sampling + codec decode)",
        "model": description,
        "lm_parameters": sum(p.numel() for p in lm.parameters()),
        "dtype": str(lm.dtype).replace("torch.", ""),
        "device": str(dev), "hardware": describe_device(dev), "torch": torch.__version__,
        "frames": frames, "warmup": warmup, "date": time.strftime("%Y-%m-%d"),
        "largest_real_time_batch": largest,
        "runs": runs,
    }


def format_table(report: dict) -> str:
    """The report of ``bench_latency`` as a person reads it: a header line, one row per mode and batch size (stage
    medians, total median and p99, RTF, latency budget), the largest real-time batch per mode, what the columns
    mean."""
    rows = [f"# {report['benchmark']} -- {report['model']}, {report['dtype']}, {report['hardware']}, "
            f"torch {report['torch']}",
            f"{'mode':>6} {'batch':>5} " + " ".join(f"{s:>8}" for s in TABLE_STAGES)
            + f" {'total':>7} {'p99':>7} {'RTF':>6} {'budget ms':>9}"]
    for r in report["runs"]:
        rows.append(f"{r['mode']:>6} {r['batch_size']:>5} "
                    + " ".join(f"{r['stages_ms'][s]['p50']:>8.2f}" for s in TABLE_STAGES)
                    + f" {r['total_ms']['p50']:>7.2f} {r['total_ms']['p99']:>7.2f} {r['real_time_factor']:>6.3f}"
                    f" {r['latency_budget_ms']['total_p50']:>9.1f}")
    largest = ", ".join(f"{mode} {batch}" for mode, batch in report["largest_real_time_batch"].items())
    rows.append(f"largest batch in real time (p99 < {FRAME_MS:.0f} ms): {largest}")
    rows.append(f"ms: medians per frame; {RTF_NOTE}; budget: {FRAME_MS:.0f} ms frame + {ACOUSTIC_DELAY_MS:.0f} ms "
                "acoustic delay + median compute")
    return "\n".join(rows)


def report_caveats(report: dict) -> List[str]:
    """What the figures of a ``bench_latency`` report cannot mean (``codec.eval.bench.caveats``)."""
    return caveats(report["frames"], [(f"{r['mode']} batch {r['batch_size']}", r["total_ms"]["p50"],
                                       r["total_ms"]["p90"]) for r in report["runs"]])


def plot_latency(report: dict, path: str) -> None:
    """ms per frame against batch size: per-stage stacked bars of the medians (one group per mode), the p99 as a
    black tick above each bar, and the 80 ms deadline. Batch sizes are categories (evenly spaced, labelled with
    their values); the y axis starts at 0."""
    from matplotlib.figure import Figure  # noqa: PLC0415  optional, slow to import; no pyplot: backend left alone

    stages = ["input", "encode", "temporal", "depth", "decode", "output"]
    modes = sorted({r["mode"] for r in report["runs"]})
    batches = sorted({r["batch_size"] for r in report["runs"]})
    width = 0.8 / len(modes)
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    colors = {stage: f"C{i}" for i, stage in enumerate(stages)}
    for m, mode in enumerate(modes):
        runs = {r["batch_size"]: r for r in report["runs"] if r["mode"] == mode}
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
