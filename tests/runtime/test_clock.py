"""The frame schedule (the real-time rule, written once) and the clocks on it, on a fake time source: deadlines,
misses, no pile-up, the idle rule."""

import gc

import pytest

from duplex.runtime.clock import ClockStats, FrameClock, FrameSchedule, run_engine
from duplex.runtime.realtime import freeze_startup_objects


def run_schedule(work, idle=False, period=0.08, catch_up=0.0):
    """Tick a FrameSchedule on a fake clock that waits exactly as told: (start times, lateness of each tick)."""
    schedule, t, starts, lateness = FrameSchedule(period, catch_up=catch_up), 0.0, [], []
    for w in work:
        t += schedule.wait(t)
        starts.append(round(t, 6))
        t += w
        lateness.append(round(schedule.done(t, idle=idle), 6))
    return starts, lateness


def test_the_schedule_spaces_on_time_ticks_by_exactly_one_period():
    starts, lateness = run_schedule([0.03, 0.079, 0.0, 0.08])  # ending exactly on the deadline is on time
    assert starts == [0.0, 0.08, 0.16, 0.24] and lateness == [0.0] * 4


def test_a_late_wake_up_does_not_shift_the_schedule():
    """Due times advance from the last due time, not from when the sleep returned: overshoots do not add up."""
    schedule = FrameSchedule(0.08)
    assert schedule.wait(10.0) == 0.0  # the first tick starts the schedule
    assert schedule.done(10.01) == 0.0
    assert schedule.wait(10.01) == pytest.approx(0.07)
    # the sleep overshot by 5 ms: the next tick is still due at 10.16
    assert schedule.done(10.085 + 0.03) == 0.0 and schedule.due == pytest.approx(10.16)


def test_a_late_tick_reports_its_lateness_and_re_anchors():
    """The catch-up policy (FrameSchedule.behind): the next tick at once, then the period again, no burst."""
    starts, lateness = run_schedule([0.03, 0.5, 0.03, 0.03])
    assert lateness == [0.0, 0.42, 0.0, 0.0]  # tick 1 was due at 0.08 with its deadline at 0.16, ended at 0.58
    assert starts == [0.0, 0.08, 0.58, 0.66]


def test_a_tick_late_by_less_than_the_catch_up_limit_is_made_up_by_ticks_back_to_back():
    """Lost time within ``catch_up`` periods is won back: the ticks after a slow one start at once until they are
    on the schedule again, and then keep it (no tick lost: every frame heard, every reply made)."""
    starts, lateness = run_schedule([0.03, 0.2, 0.03, 0.03, 0.03, 0.03], catch_up=3)
    # tick 1 (deadline 0.16) ended at 0.28; ticks 2 (due 0.16) and 3 (due 0.24) start at once, one after the
    # other, and end after their own deadlines too (0.24, 0.32): late, but not lost; tick 4 is on time again
    assert lateness == [0.0, 0.12, 0.07, 0.02, 0.0, 0.0]
    assert starts == [0.0, 0.08, 0.28, 0.31, 0.34, 0.4]


def test_a_stall_past_the_catch_up_limit_re_anchors_rather_than_bursting():
    """A stall longer than the limit (a paused process) is not made up: steps on seconds-old input would make
    replies nobody waits for any more. The schedule starts again from the end of the stall."""
    starts, lateness = run_schedule([0.03, 5.0, 0.03, 0.03], catch_up=3)
    assert lateness == [0.0, 4.92, 0.0, 0.0]
    assert starts == [0.0, 0.08, 5.08, 5.16]


def test_catch_up_must_not_be_negative():
    with pytest.raises(ValueError):
        FrameSchedule(0.08, catch_up=-1)


def test_idle_ticks_are_never_late_and_drop_a_schedule_from_long_ago():
    starts, lateness = run_schedule([0.03, 0.12, 0.03, 0.5, 0.03], idle=True)
    assert lateness == [0.0] * 5
    # up to a period behind, the schedule holds: tick 1 (due 0.08) ended at 0.2, tick 2 was due at 0.16 and starts
    # at once, tick 3 is due at 0.24; further behind it is dropped: tick 3 ended at 0.74, tick 4 starts then
    assert starts == [0.0, 0.08, 0.2, 0.24, 0.74]


def test_the_schedule_refuses_a_period_that_is_not_positive_and_done_before_wait():
    with pytest.raises(ValueError):
        FrameSchedule(0.0)
    with pytest.raises(RuntimeError):
        FrameSchedule(0.08).done(1.0)


def test_clock_stats_count_ticks_misses_and_keep_a_window_of_work_times():
    stats = ClockStats(window=3)
    assert stats.work_percentile(50) is None
    for late, work in [(0.0, 10.0), (0.02, 90.0), (0.0, None), (0.005, 85.0), (0.0, 20.0)]:
        stats.record(late, work_ms=work)
    assert stats.ticks == 5 and stats.misses == 2 and stats.max_late_ms == pytest.approx(20.0)
    assert list(stats.work_ms) == [90.0, 85.0, 20.0] and stats.work_percentile(50) == 85.0


class FakeTime:
    def __init__(self):
        self.t = 0.0
        self.sleeps = []

    def now(self):
        return self.t

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.t += seconds


def test_on_time_ticks_are_spaced_by_the_period():
    time = FakeTime()
    clock = FrameClock(0.08, now=time.now, sleep=time.sleep)
    starts = []
    for _ in range(5):
        clock.wait()
        starts.append(time.t)
        time.t += 0.03  # work
        clock.done()
    assert [round(s, 6) for s in starts] == [0.0, 0.08, 0.16, 0.24, 0.32]
    assert clock.stats.misses == 0 and clock.stats.ticks == 5


def test_a_stall_counts_one_miss_and_never_bursts():
    time = FakeTime()
    clock = FrameClock(0.08, now=time.now, sleep=time.sleep)
    work = [0.03, 0.5, 0.03, 0.03, 0.03]  # the second tick stalls for 500 ms
    starts = []
    for w in work:
        clock.wait()
        starts.append(time.t)
        time.t += w
        clock.done()
    assert clock.stats.misses == 1
    assert abs(clock.stats.max_late_ms - 420.0) < 1e-6
    # after the stall: one immediate tick, then the period again (no catch-up burst of back-to-back ticks)
    gaps = [round(b - a, 6) for a, b in zip(starts, starts[1:])]
    assert gaps == [0.08, 0.5, 0.08, 0.08]


def test_offline_never_sleeps():
    time = FakeTime()
    clock = FrameClock(0.08, realtime=False, now=time.now, sleep=time.sleep)
    for _ in range(10):
        clock.wait()
        time.t += 0.2
        clock.done()
    assert time.sleeps == [] and clock.stats.misses == 0 and clock.stats.ticks == 10


class CountingEngine:
    frame_size, sample_rate = 1920, 24000

    def __init__(self):
        self.calls = []

    def step(self, frames):
        self.calls.append(dict(frames))
        return {slot: ("audio", None) for slot in frames}


def test_run_engine_feeds_and_collects():
    time = FakeTime()
    engine = CountingEngine()
    got = []
    stats = run_engine(engine, source=lambda tick: {0: tick}, sink=lambda tick, out: got.append((tick, out)),
                       ticks=4, clock=FrameClock(0.08, now=time.now, sleep=time.sleep))
    assert [c[0] for c in engine.calls] == [0, 1, 2, 3]
    assert [t for t, _ in got] == [0, 1, 2, 3] and stats.ticks == 4


def test_startup_objects_are_frozen_out_of_the_garbage_collector():
    """What exists when real-time work starts is never walked by a later collection (a ~140 ms pause with the
    default model loaded); what is created afterwards still is."""
    startup = [[i] for i in range(1000)]
    try:
        assert freeze_startup_objects() >= 1000
        tracked = {id(o) for o in gc.get_objects()}
        assert id(startup) not in tracked
        later = [[0]]
        assert any(o is later for o in gc.get_objects())
    finally:
        gc.unfreeze()
