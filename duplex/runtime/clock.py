"""The frame clock: run the engine once per 80 ms in real time (or as fast as possible offline).

A tick whose work ends after its deadline counts as a miss, and the schedule is re-anchored at the moment the
late work ended: the next tick starts at once, but the ticks after it are spaced by the frame period again, so a
stall never turns into a burst of catch-up steps.
"""

from __future__ import annotations

import collections
import gc
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional


def freeze_startup_objects() -> int:
    """Move every object alive now (PyTorch, the models, the server) out of the cyclic garbage collector's reach.

    A full collection walks all of them, which can take longer than a frame (docs/benchmarks.md, "Garbage
    collection"), at a moment nobody chooses. Frozen, a later full collection only walks what was created since.
    Call it once the engine is built, before real-time work starts. Returns the number of frozen objects."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


@dataclass
class ClockStats:
    ticks: int = 0
    misses: int = 0
    max_late_ms: float = 0.0
    work_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=10_000))  # latest ticks


class FrameClock:
    def __init__(self, period_s: float = 0.08, realtime: bool = True, now: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep):
        if period_s <= 0:
            raise ValueError("period_s must be positive")
        self.period = period_s
        self.realtime = realtime
        self._now, self._sleep = now, sleep
        self._next: Optional[float] = None
        self._tick_start = 0.0
        self.stats = ClockStats()

    def wait(self) -> None:
        """Block until the next tick is due (never, offline)."""
        now = self._now()
        if self._next is None:
            self._next = now
        if self.realtime and self._next > now:
            self._sleep(self._next - now)
            now = self._now()
        self._tick_start = max(now, self._next) if self.realtime else now

    def done(self) -> None:
        """Record the end of this tick's work and schedule the next tick."""
        end = self._now()
        deadline = self._tick_start + self.period
        self.stats.ticks += 1
        self.stats.work_ms.append((end - self._tick_start) * 1e3)
        if self.realtime and end > deadline:
            self.stats.misses += 1
            self.stats.max_late_ms = max(self.stats.max_late_ms, (end - deadline) * 1e3)
            self._next = end  # re-anchor: no catch-up burst
        else:
            # The schedule advances by exactly one period from the previous tick's due time, so wake-up
            # overshoots do not accumulate into a clock that runs slow.
            self._next = (self._next if self._next is not None else self._tick_start) + self.period


def run_engine(engine, source: Callable[[int], Mapping[int, object]],
               sink: Optional[Callable[[int, Dict[int, tuple]], None]] = None, ticks: Optional[int] = None,
               clock: Optional[FrameClock] = None, stop: Optional[Callable[[], bool]] = None) -> ClockStats:
    """Tick ``engine`` with ``source(tick) -> {slot: frame}`` (the frames available at that tick), handing the
    outputs to ``sink(tick, outputs)``; stops after ``ticks`` ticks or when ``stop()`` is true."""
    clock = clock or FrameClock(engine.frame_size / engine.sample_rate)
    tick = 0
    while (ticks is None or tick < ticks) and not (stop is not None and stop()):
        clock.wait()
        outputs = engine.step(source(tick))
        if sink is not None:
            sink(tick, outputs)
        clock.done()
        tick += 1
    return clock.stats
