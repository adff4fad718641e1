"""Clients waiting for a slot, first come first served, at a cost that does not grow with the queue.

Every event is O(1) for everyone but the client it concerns: a freed slot is handed to the head of the queue only
(its own future; nobody else wakes), a client that leaves is taken out of an ordered dict (nobody wakes), and a
client that joins is told its place at once. The only work that grows with the queue is telling waiters their new
places after others left or were served, and that is coalesced: one pass at most every ``interval`` seconds, which
tells only the waiters whose place changed since they were last told. So churn at any rate costs the live
sessions (whose clock shares this event loop) at most one O(waiting) pass a second.

Each waiter's notices go out from its own task, newest only, so one that does not read them holds up no one; it is
dropped once a send does not complete within the notice timeout.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import OrderedDict
from typing import Callable, Iterator, Optional

log = logging.getLogger(__name__)

NOTICE_INTERVAL = 1.0  # seconds: at most one pass of position notices per interval, however fast the queue churns


@dataclasses.dataclass
class AdmissionCounts:
    """What the queue has done since start-up: the work churn costs, counted (tests and benchmarks read it)."""

    joined: int = 0
    refused: int = 0  # the queue was full
    left: int = 0  # went away (or were dropped) while waiting
    served: int = 0  # left the queue with a slot
    wakeups: int = 0  # freed slots handed to a waiter (only ever the head)
    notices: int = 0  # position notices handed to waiters' senders (newest only: a slow reader gets fewer)
    passes: int = 0  # coalesced passes that told waiters their new places


class Waiter:
    """A client waiting for a slot. Its queue notices go out from its own task, newest only: if the client does
    not read them (a send that does not complete within ``timeout``), its connection is dropped, and nobody
    else waits for it. ``turn`` is set when a freed slot is handed to it (only ever as the head of the queue)."""

    def __init__(self, connection, timeout: float):
        self.connection, self.timeout = connection, timeout
        self.position: Optional[int] = None  # the place it was last told
        self.turn: asyncio.Future = asyncio.get_running_loop().create_future()
        self.trying = False  # its turn came and it is trying to open a slot
        self._notice: Optional[bytes] = None
        self._ready = asyncio.Event()
        self._stopped = False
        self._sender = asyncio.create_task(self._send_notices())
        # one watcher for the whole wait, so that waiting for a turn again creates no task
        self._gone = asyncio.ensure_future(connection.wait_closed())

    def tell(self, notice: bytes) -> None:
        self._notice = notice
        self._ready.set()

    def hand(self) -> bool:
        """Hand a freed slot to this waiter; False if it already holds one it has not tried yet."""
        if self.turn.done():
            return False
        self.turn.set_result(None)
        return True

    async def wait_turn(self) -> bool:
        """Wait until a slot is handed to this waiter (True) or its client goes away (False). The turn is taken
        before returning: a slot freed while the caller tries to open one is handed again and not lost."""
        self.trying = False  # the last try, if any, found no free slot
        if not self.turn.done() and not self._gone.done():
            await asyncio.wait((self.turn, self._gone), return_when=asyncio.FIRST_COMPLETED)
        if self._gone.done():
            return False
        self.turn = asyncio.get_running_loop().create_future()
        self.trying = True
        return True

    def stop(self) -> None:
        self._stopped = True
        self._sender.cancel()
        self._gone.cancel()

    async def _send_notices(self) -> None:
        while not self._stopped:
            await self._ready.wait()
            self._ready.clear()
            notice, self._notice = self._notice, None
            # asyncio.wait, not wait_for: before Python 3.12, wait_for swallows a cancellation that arrives just
            # as the send completes, and this task would outlive its waiter (and hold its connection) for good
            send = asyncio.ensure_future(self.connection.send(notice))
            try:
                await asyncio.wait((send,), timeout=self.timeout)
            except BaseException:
                send.cancel()
                raise
            if not send.done():
                send.cancel()
                log.info("a waiting client does not read its queue notices; dropped")
                self.connection.transport.abort()
                return
            if send.cancelled() or send.exception() is not None:
                return  # the client left (ConnectionClosed): its handler removes it from the queue


class Admission:
    """The queue of clients waiting for a slot (at most ``max_waiting``), first come first served.

    ``notice(position)`` makes the message that tells a waiter its place. The server calls ``join`` for a client
    that found no free slot, ``slot_freed`` when a session ends, ``leave`` when a waiter goes (``served``: with a
    slot). A waiter tries to open a slot only when ``wait_turn`` returns True."""

    def __init__(self, max_waiting: int, notice_timeout: float, notice: Callable[[int], bytes],
                 interval: float = NOTICE_INTERVAL):
        self.max_waiting, self.notice_timeout, self.notice, self.interval = max_waiting, notice_timeout, notice, interval
        self.counts = AdmissionCounts()
        self.frees = 0  # slots freed so far: a joiner compares it with what it saw before it found no free slot
        self._queue: "OrderedDict[object, Waiter]" = OrderedDict()  # O(1) at both ends and to remove any one
        self._pass: Optional[asyncio.TimerHandle] = None  # the pending pass of position notices, if any
        self._last_pass = float("-inf")

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[Waiter]:
        """The waiters, first in line first."""
        return iter(list(self._queue.values()))

    def head(self) -> Optional[Waiter]:
        return next(iter(self._queue.values()), None)

    def join(self, connection, seen: int) -> Optional[Waiter]:
        """Queue ``connection`` at the end and tell it its place, or None if the queue is full. ``seen``: the free
        count before it found no free slot; a slot freed since then, while nobody was there to take it, is
        handed to the head at once."""
        if len(self._queue) >= self.max_waiting:
            self.counts.refused += 1
            return None
        waiter = self._queue[connection] = Waiter(connection, self.notice_timeout)
        self.counts.joined += 1
        self._tell(waiter, len(self._queue))  # the joiner's place is the queue's length; nobody else's changed
        if self.frees != seen:
            self.wake_head()
        return waiter

    def slot_freed(self) -> None:
        """A slot was freed: the head of the queue (only) is handed it."""
        self.frees += 1
        self.wake_head()

    def wake_head(self) -> None:
        head = self.head()
        if head is not None and head.hand():
            self.counts.wakeups += 1

    def leave(self, waiter: Waiter, served: bool = False) -> None:
        """Take ``waiter`` out of the queue (O(1)). A waiter that goes without a slot, having been handed one (not
        tried yet, or its try failed otherwise than by finding none), passes it on to the new head; those behind it
        learn their new places in the next pass."""
        if self._queue.get(waiter.connection) is not waiter:
            return
        del self._queue[waiter.connection]
        waiter.stop()
        if served:
            self.counts.served += 1
        else:
            self.counts.left += 1
            if waiter.turn.done() or waiter.trying:  # handed a slot it will not use
                self.wake_head()
        self._places_changed()

    def tell_positions(self) -> None:
        """One pass: tell every waiter whose place changed since it was last told where it stands now."""
        self._pass = None
        self._last_pass = asyncio.get_running_loop().time()
        self.counts.passes += 1
        for position, waiter in enumerate(self._queue.values(), start=1):
            if waiter.position != position:
                self._tell(waiter, position)

    def close(self) -> None:
        """Stop every waiter's notices and the pending pass (the server is stopping)."""
        if self._pass is not None:
            self._pass.cancel()
            self._pass = None
        for waiter in self._queue.values():
            waiter.stop()

    def _tell(self, waiter: Waiter, position: int) -> None:
        waiter.position = position
        waiter.tell(self.notice(position))
        self.counts.notices += 1

    def _places_changed(self) -> None:
        """Schedule a pass (one pending at most, at most one per interval): events in between are coalesced."""
        if self._pass is None and self._queue:
            loop = asyncio.get_running_loop()
            self._pass = loop.call_at(max(loop.time(), self._last_pass + self.interval), self.tell_positions)
