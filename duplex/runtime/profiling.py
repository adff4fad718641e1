"""Per-stage timing of the frame step: CUDA events on a GPU (no host synchronisation between stages),
perf_counter on a CPU."""

from __future__ import annotations

import time
from collections import deque
from typing import Dict, List, Sequence

import torch

from codec.utils.stats import percentile


class StageTimer:
    """Marks taken between stages of one frame; ``finish`` turns them into milliseconds per stage."""

    def __init__(self, stages: Sequence[str], device: torch.device, history: int = 100_000):
        self.stages = list(stages)
        self.cuda = device.type == "cuda"
        self.history: Dict[str, deque] = {name: deque(maxlen=history) for name in self.stages + ["total"]}
        if self.cuda:
            self._events = [torch.cuda.Event(enable_timing=True) for _ in range(len(self.stages) + 1)]
        self._marks: List[float] = []

    def begin(self) -> None:
        self._marks = []
        self.mark()

    def mark(self) -> None:
        """Call after each stage (and once in ``begin``)."""
        if self.cuda:
            self._events[len(self._marks)].record()
            self._marks.append(0.0)
        else:
            self._marks.append(time.perf_counter())

    def finish(self) -> Dict[str, float]:
        """Milliseconds of each stage of the frame just run (synchronises with the GPU's last event)."""
        if self.cuda:
            self._events[-1].synchronize()
            ms = [self._events[i].elapsed_time(self._events[i + 1]) for i in range(len(self.stages))]
        else:
            ms = [(self._marks[i + 1] - self._marks[i]) * 1e3 for i in range(len(self.stages))]
        result = dict(zip(self.stages, ms))
        result["total"] = sum(ms)
        for name, value in result.items():
            self.history[name].append(value)
        return result

    def summary(self) -> Dict[str, Dict[str, float]]:
        return {name: {"p50": percentile(v, 50), "p90": percentile(v, 90), "p99": percentile(v, 99),
                       "mean": sum(v) / len(v) if v else float("nan")}
                for name, v in self.history.items()}

    def clear(self) -> None:
        for v in self.history.values():
            v.clear()
