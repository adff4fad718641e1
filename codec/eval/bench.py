"""Streaming codec benchmark: time per 80 ms frame of encode + decode, per batch size.

Random weights are fine for timing (the work per frame does not depend on the values); pass a checkpoint to time
real weights. Inputs are low-level noise so no activation saturates or turns denormal.
"""

from __future__ import annotations

import sys
import time
from typing import List, Optional, Sequence

import torch

from ..model import ConfigLike, Mimi
from ..utils.stats import describe_device, summary

BATCH_SIZES = (1, 8)  # the defaults of the codec benchmark
FRAMES = 50  # timed frames per batch size
WARMUP = 5  # untimed frames first
NUM_CODEBOOKS = 8
RTF_NOTE = "RTF (real-time factor): compute time per 80 ms frame / 80 ms; below 1 keeps up with real time"


@torch.no_grad()
def bench_codec(config: ConfigLike = None, checkpoint: Optional[str] = None, device: str = "cpu",
                batch_sizes: Sequence[int] = BATCH_SIZES, frames: int = FRAMES, warmup: int = WARMUP,
                num_codebooks: int = NUM_CODEBOOKS, progress=None) -> dict:
    """Time ``frames`` streaming frames (after ``warmup``) for each batch size; returns a JSON-ready dict."""
    dev = torch.device(device)
    if checkpoint:
        model = Mimi.from_checkpoint(checkpoint, config=config, num_codebooks=num_codebooks, device=dev)
    else:
        model = Mimi.random(config, num_codebooks=num_codebooks, device=dev)
    frame_ms = 1000.0 / model.frame_rate

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    results = []
    for batch in batch_sizes:
        encoder_state = model.new_encoder_state(batch)
        decoder_state = model.new_decoder_state(batch)
        generator = torch.Generator().manual_seed(batch)
        enc_ms, dec_ms, total_ms = [], [], []
        for i in range(warmup + frames):
            frame = (0.05 * torch.randn(batch, 1, model.frame_size, generator=generator)).to(dev)
            sync()
            t0 = time.perf_counter()
            codes = model.encode_step(frame, encoder_state)
            sync()
            t1 = time.perf_counter()
            model.decode_step(codes, decoder_state)
            sync()
            t2 = time.perf_counter()
            if i >= warmup:
                enc_ms.append((t1 - t0) * 1e3)
                dec_ms.append((t2 - t1) * 1e3)
                total_ms.append((t2 - t0) * 1e3)
            if progress is not None:
                progress(batch, i + 1, warmup + frames)
        total = summary(total_ms)
        results.append({
            "batch_size": batch,
            "encode_ms": summary(enc_ms),
            "decode_ms": summary(dec_ms),
            "total_ms": total,
            "ms_per_stream": total["median"] / batch,
            "real_time_factor": total["median"] / frame_ms,
            "real_time": total["p99"] < frame_ms,
        })
    return {
        "benchmark": "codec streaming encode + decode per frame",
        "model": "checkpoint " + str(checkpoint) if checkpoint else "random weights",
        "config": "official Mimi" if config is None else str(config) if not isinstance(config, dict) else "dict",
        "num_codebooks": num_codebooks,
        "frame_ms": frame_ms,
        "device": str(dev),
        "hardware": describe_device(dev),
        "torch": torch.__version__,
        "frames": frames,
        "warmup": warmup,
        "date": time.strftime("%Y-%m-%d"),
        "results": results,
    }


def console_progress(batch, done: int, total: int) -> None:
    """A ``progress`` callback of the frame benchmarks for a person: ``batch B: frame D/T`` rewritten in place on a
    terminal's stderr, ending its line at the last frame; nothing when stderr is a file or a pipe (a log would fill
    with one line per frame)."""
    if sys.stderr.isatty():
        print(f"\rbatch {batch}: frame {done}/{total}", end="" if done < total else "\n", file=sys.stderr)


def caveats(frames: int, rows) -> List[str]:
    """What the figures cannot mean although they seem to: too few frames for a p99, or a spread that says another
    process was using the machine. ``rows``: (label, p50, p90) per line of the table. Shared by the benchmarks that
    time frames (codec, LM, engine)."""
    notes = []
    if frames < 100:
        notes.append(f"note: with {frames} timed frames, p99 is about the largest one (use 100 frames or more)")
    for label, p50, p90 in rows:
        if p50 > 0 and p90 > 1.5 * p50:
            notes.append(f"warning: {label}: p90 {p90:.1f} ms against p50 {p50:.1f} ms; the machine was probably "
                         "busy with something else (rerun, or compare side by side in one run)")
    return notes


def format_table(report: dict) -> str:
    """The report of ``bench_codec`` as a person reads it: a header line, one row per batch size, what RTF means."""
    rows = [f"# {report['benchmark']} -- {report['model']}, {report['config']}, {report['hardware']}, "
            f"torch {report['torch']}",
            f"{'batch':>5} {'encode ms':>10} {'decode ms':>10} {'total ms':>9} {'p99 ms':>8} {'ms/stream':>9} "
            f"{'RTF':>6}"]
    for r in report["results"]:
        rows.append(f"{r['batch_size']:>5} {r['encode_ms']['median']:>10.2f} {r['decode_ms']['median']:>10.2f} "
                    f"{r['total_ms']['median']:>9.2f} {r['total_ms']['p99']:>8.2f} {r['ms_per_stream']:>9.2f} "
                    f"{r['real_time_factor']:>6.3f}")
    rows.append(RTF_NOTE)
    return "\n".join(rows)


def report_caveats(report: dict) -> List[str]:
    """``caveats`` of a ``bench_codec`` report."""
    return caveats(report["frames"], [(f"batch {r['batch_size']}", r["total_ms"]["median"], r["total_ms"]["p90"])
                                      for r in report["results"]])
