"""The server's frame clock, in a thread of its own: every 80 ms one engine step for every live session.

Why a thread apart from the event loop: the loop also parses every HTTP request, handshake and message of every
peer, and a tick that has to wait its turn there is late whenever those come fast (measured: a peer polling
``/api/stats`` made most ticks late, docs/security.md). Here the clock waits on its own (``time.sleep`` until the
tick is due, on ``runtime/clock.FrameSchedule``), takes each session's next frame from its input buffer (a lock of
its own per session, held for a deque operation), steps the engine, and hands the replies to the event loop
through one bounded queue. Nothing the network does can hold the tick except the GIL, which the engine's
operations release while they compute.

The hand-offs are bounded both ways: the input buffers by the session's own limit, the replies by ``max_pending``
ticks. Should the event loop fall behind by more than that, the oldest tick's replies are not handed over (they
would be older than a client may get, ``reply_max_age``); each session counts them as stale audio dropped.

Engine calls from elsewhere (opening and closing slots) take ``engine_lock``, as the step does, so the engine's
state is never changed by two threads at once. A slot opened with a system prompt steps one prompt frame per tick
inside the same batched step (the engine does it) until the prompt is done; the clock tells the event loop then
(``prompting``), and only then does the session join the live ones and get its handshake.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable, Dict, Optional, Sequence

from ..runtime.clock import ClockStats, FrameSchedule
from .session import worth_logging

log = logging.getLogger(__name__)


class Ticker:
    """Runs ``engine.step`` once per frame period for the sessions ``live()`` returns (a tuple, replaced as a
    whole by the event loop when sessions come and go), and calls ``hand_off()`` (thread-safe; the server makes it
    ``loop.call_soon_threadsafe``) when replies wait in ``take()``."""

    def __init__(self, engine, live: Callable[[], Sequence], hand_off: Callable[[], None], clock: ClockStats,
                 engine_lock: threading.Lock, max_pending: int, period: Optional[float] = None,
                 catch_up: float = 0.0, prompting: Optional[Callable[[], Sequence]] = None):
        self.engine, self._live, self._hand_off = engine, live, hand_off
        # (slot, finished) of the slots stepping a system prompt (a tuple replaced as a whole, as live()): the
        # engine steps their prompt frames in every step, so the clock ticks while any is there, and calls
        # finished() (thread-safe) at each tick that finds the slot's prompt done, read under the engine's lock
        self._prompting = prompting or (lambda: ())
        self.clock, self.engine_lock = clock, engine_lock
        self.period = period if period is not None else engine.frame_size / engine.sample_rate
        self.max_pending = max(1, max_pending)
        self.catch_up = catch_up  # FrameSchedule.catch_up: periods of lateness made up by ticks back to back
        self._pending: collections.deque = collections.deque()  # (stamp, sessions, outputs), oldest first
        self._expired: Dict[object, int] = {}  # session: its replies not handed over (the loop fell behind)
        self._lock = threading.Lock()  # _pending, _expired, _scheduled
        self._scheduled = False  # a hand_off() is on its way and has not been taken yet
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.failures = 0  # engine steps in a row that raised

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="duplex-clock", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the step under way (if any); waits for the thread up to ``timeout`` s."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -------------------------------------------------------------------------------------- the clock thread
    def _run(self) -> None:
        schedule = FrameSchedule(self.period, catch_up=self.catch_up)
        now = time.monotonic
        while not self._stopping.is_set():
            delay = schedule.wait(now())
            if delay > 0 and self._stopping.wait(delay):
                return
            sessions = tuple(self._live())
            busy = bool(sessions) or bool(self._prompting())
            work_ms = self._tick(sessions) if busy else None
            late = schedule.done(now(), idle=not busy)
            self.clock.record(late, work_ms=work_ms)
            if late and worth_logging(self.clock.misses):
                log.warning("frame step late by %.1f ms (%d deadline misses)", late * 1e3, self.clock.misses)

    def _tick(self, sessions) -> Optional[float]:
        """One step for ``sessions``; its work time in ms (None if it failed: one bad frame must not stop the
        clock, the sessions continue with the next tick)."""
        try:
            frames = {s.slot: s.next_frame() for s in sessions}
            t0 = time.perf_counter()
            with self.engine_lock:
                outputs = self.engine.step(frames)
                work_ms = (time.perf_counter() - t0) * 1e3
                # Read under the lock: a slot is closed (under it) only after its waiter has gone from the tuple.
                finished = [done for slot, done in self._prompting() if not self.engine.prompting(slot)]
            self.failures = 0
        except Exception:
            self.failures += 1
            if worth_logging(self.failures):
                log.exception("frame step failed (%d in a row); sessions continue with the next tick", self.failures)
            return None
        for done in finished:
            try:
                done()
            except RuntimeError:  # the event loop is closed: the server is stopping
                pass
        if sessions:
            self._give(time.monotonic(), sessions, outputs)
        return work_ms

    def _give(self, stamp: float, sessions, outputs) -> None:
        with self._lock:
            self._pending.append((stamp, sessions, outputs))
            while len(self._pending) > self.max_pending:  # the event loop is that far behind
                _, old_sessions, old_outputs = self._pending.popleft()
                for s in old_sessions:
                    if s.slot in old_outputs:
                        self._expired[s] = self._expired.get(s, 0) + 1
            wake, self._scheduled = not self._scheduled, True
        if wake:
            try:
                self._hand_off()
            except RuntimeError:  # the event loop is closed: the server is stopping
                pass

    # --------------------------------------------------------------------------------------- the event loop
    def take(self):
        """What waits for the event loop: the ticks' replies, oldest first, as (stamp, sessions, outputs), and
        {session: replies not handed over}. Called from the loop, once per ``hand_off``."""
        with self._lock:
            pending, self._pending = self._pending, collections.deque()
            expired, self._expired = self._expired, {}
            self._scheduled = False
        return pending, expired
