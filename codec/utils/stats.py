"""Summaries of measurements shared by the benchmarks and the engine's stage timer: percentiles, a timing
summary, and a one-line description of the device that was measured."""

from __future__ import annotations

import platform
import statistics
from typing import Sequence

import torch


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"{_cpu_name()}, {threads} thread{'' if threads == 1 else 's'}"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank); NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(ms: Sequence[float]) -> dict:
    """Median, p90, p99, mean and minimum of timings (milliseconds)."""
    return {"median": statistics.median(ms), "p90": percentile(ms, 90), "p99": percentile(ms, 99),
            "mean": statistics.fmean(ms), "min": min(ms)}
