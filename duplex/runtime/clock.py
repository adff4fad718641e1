"""The frame clock: run the engine once per 80 ms in real time (or as fast as possible offline).

The real-time rule lives here once, as ``FrameSchedule``, a pure object that never sleeps: told when a tick's
work ended, it says when the next tick is due and how late this one was. The offline/microphone loop
(``FrameClock``, with ``time.sleep``) and the server's clock thread (``serving.ticker.Ticker``, with
a stop event's timed wait) only wait for what it says, and count in ``ClockStats``.

The rule: tick k is due one period after tick k-1 was due, and its work must end one period after it was due. A
tick whose work ends after that deadline is a miss, and what to do then is one policy, ``FrameSchedule.behind``:
a miss of at most ``catch_up`` periods keeps the schedule, so the next ticks run back to back until they are on
it again (a slow step costs no tick: the clients' frames are all heard and all their replies made); a longer one
(a stall: a paused process, a machine out of CPU for seconds) re-anchors the schedule at the moment the late work
ended, so the next tick starts at once but the ticks after it are spaced by the period again, and a stall never
turns into a burst of steps on stale input. ``catch_up`` is 0 (always re-anchor) unless the caller sets it; the
server's is ``ServerOptions.catch_up_frames`` (docs/serving.md says why). While idle (no one is owed a reply) a
late tick is no miss, but a schedule more than a period old is dropped, so the first tick after an idle stretch
does not start behind.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional

import numpy as np


@dataclass
class FrameSchedule:
    """When the next tick is due, on any clock (seconds, as ``time.perf_counter`` or ``loop.time()`` give)."""

    period: float
    due: Optional[float] = None  # the next tick's due time; None until the first ``wait``
    catch_up: float = 0.0  # periods of lateness made up by ticks back to back; later than that, re-anchored

    def __post_init__(self):
        if not self.period > 0:
            raise ValueError(f"the frame period must be positive, got {self.period}")
        if not self.catch_up >= 0:
            raise ValueError(f"catch_up must be at least 0 periods, got {self.catch_up}")

    def wait(self, now: float) -> float:
        """Seconds to wait from ``now`` until the next tick is due (0: due already). The first call starts the
        schedule at ``now``."""
        if self.due is None:
            self.due = now
        return max(0.0, self.due - now)

    def done(self, end: float, idle: bool = False) -> float:
        """The tick due at ``due`` ended its work at ``end``: schedule the next one and return how late the work
        ended past its deadline, in seconds (0.0: on time). ``idle``: nobody was owed this tick's reply, so it
        is never late."""
        if self.due is None:
            raise RuntimeError("done() before wait(): the schedule has not started")
        deadline = self.due + self.period
        if end <= deadline:
            # Exactly one period after the last due time, not after the wake-up: sleep overshoots do not add up
            # into a clock that runs slow.
            self.due = deadline
            return 0.0
        if idle:
            self.due = deadline if end - deadline <= self.period else end  # no schedule from long ago
            return 0.0
        self.due = self.behind(end, deadline)
        return end - deadline

    def behind(self, end: float, deadline: float) -> float:
        """The catch-up policy: when the next tick is due after one that ended at ``end``, past its ``deadline``.
        At most ``catch_up`` periods late: at its deadline, as if on time (it starts at once, and the ticks after
        it too until the schedule is met). Later: re-anchor at ``end`` (the next tick at once, then the period
        again; the lost ticks are not made up)."""
        return deadline if end - deadline <= self.catch_up * self.period else end


@dataclass
class ClockStats:
    """What a frame loop counts: ticks, misses (ticks late past their deadline, see FrameSchedule), the worst
    lateness, and the work time of the latest ``window`` ticks that did work."""

    ticks: int = 0
    misses: int = 0
    max_late_ms: float = 0.0
    window: int = 10_000
    work_ms: collections.deque = field(init=False)

    def __post_init__(self):
        self.work_ms = collections.deque(maxlen=self.window)

    def record(self, late_s: float, work_ms: Optional[float] = None) -> None:
        """One tick: ``late_s`` as FrameSchedule.done returned it; ``work_ms`` if it did work."""
        self.ticks += 1
        if work_ms is not None:
            self.work_ms.append(work_ms)
        if late_s > 0:
            self.misses += 1
            self.max_late_ms = max(self.max_late_ms, late_s * 1e3)

    def lateness(self) -> str:
        """One phrase, e.g. '3 of 250 frames late (max 95 ms)'."""
        return f"{self.misses} of {self.ticks} frames late (max {self.max_late_ms:.0f} ms)"

    def work_percentile(self, q: float) -> Optional[float]:
        """The ``q``-th percentile of the recorded work times in ms (None before any)."""
        times = list(self.work_ms)  # one copy, taken at once: the server's clock thread appends meanwhile
        return float(np.percentile(times, q)) if times else None


class FrameClock:
    """A FrameSchedule with a blocking sleep: ``wait()`` before a tick's work, ``done()`` after it. Offline
    (``realtime=False``) it never sleeps and nothing is late."""

    def __init__(self, period_s: float = 0.08, realtime: bool = True, now: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep):
        self.schedule = FrameSchedule(period_s)
        self.period = period_s
        self.realtime = realtime
        self._now, self._sleep = now, sleep
        self._tick_start = 0.0
        self.stats = ClockStats()

    def wait(self) -> None:
        """Block until the next tick is due (never, offline)."""
        now = self._now()
        delay = self.schedule.wait(now)
        if self.realtime and delay > 0:
            self._sleep(delay)
            now = self._now()
        self._tick_start = now

    def done(self) -> None:
        """Record the end of this tick's work and schedule the next tick."""
        end = self._now()
        late = self.schedule.done(end, idle=not self.realtime)
        self.stats.record(late, work_ms=(end - self._tick_start) * 1e3)


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
