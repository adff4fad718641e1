"""The frame clock on a fake time source: deadlines, misses, no pile-up."""

from duplex.runtime.clock import FrameClock, freeze_startup_objects, run_engine


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
    import gc

    startup = [[i] for i in range(1000)]
    try:
        assert freeze_startup_objects() >= 1000
        tracked = {id(o) for o in gc.get_objects()}
        assert id(startup) not in tracked
        later = [[0]]
        assert any(o is later for o in gc.get_objects())
    finally:
        gc.unfreeze()
