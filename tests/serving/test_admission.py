"""The queue of clients waiting for a slot (serving/admission.py and the server's use of it), with fake connections:
first come first served, a freed slot wakes the head only, leaving wakes nobody, position notices are coalesced.
The work churn costs is counted (wake-ups, tasks created, engine calls, notices sent), never timed."""

import asyncio
import contextlib
import random

from helpers import EchoEngine, FakeConnection

from duplex.serving.admission import Admission, Waiter
from duplex.serving.protocol import ERROR, SessionOptions, error_message
from duplex.serving.server import ServerOptions, VoiceServer

NEVER = 3600.0  # a notice interval no test outlives: every pass after the first is still pending at the end


class CountingEngine(EchoEngine):
    """The engine as the admission code sees it: slots to open and close, and how often ``open`` was called."""

    def step(self, frames):
        return {}


@contextlib.contextmanager
def counting_tasks():
    """Every task created on the running loop meanwhile, in a list."""
    loop, created = asyncio.get_running_loop(), []

    def factory(loop, coro, **kwargs):
        task = asyncio.Task(coro, loop=loop, **kwargs)
        created.append(task)
        return task

    loop.set_task_factory(factory)
    try:
        yield created
    finally:
        loop.set_task_factory(None)


async def until(condition, tries=2000):
    for _ in range(tries):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the condition never held")


def notice(position):
    return error_message(f"all 1 conversation slots are in use; you are number {position} in the queue")


def admission(max_waiting=100, interval=NEVER, timeout=5.0):
    return Admission(max_waiting, timeout, notice, interval=interval)


async def settle():
    """Let the waiters' tasks (their notices, their wait for a turn) run."""
    for _ in range(5):
        await asyncio.sleep(0)


# ------------------------------------------------------------------------------------------ the queue alone
def test_the_queue_is_first_come_first_served_and_refuses_past_its_size():
    async def main():
        queue = admission(max_waiting=3)
        connections = [FakeConnection(i) for i in range(4)]
        waiters = [queue.join(c, queue.frees) for c in connections]
        await settle()
        assert waiters[3] is None and queue.waiting == 3 and queue.counts.refused == 1  # full
        assert [w.connection for w in queue] == connections[:3]
        assert [c.positions() for c in connections[:3]] == [[1], [2], [3]]  # told its place on joining
        served = []
        for _ in range(3):
            queue.slot_freed()
            head = queue.head()
            assert await head.wait_turn()
            queue.leave(head, served=True)
            served.append(head.connection)
        assert served == connections[:3] and queue.waiting == 0

    asyncio.run(main())


def test_leaving_wakes_nobody_and_creates_no_task():
    async def main():
        queue = admission()
        waiters = [queue.join(FakeConnection(i), queue.frees) for i in range(50)]
        await settle()
        with counting_tasks() as created:
            for waiter in random.Random(0).sample(waiters, 30):  # the head among others, in any order
                queue.leave(waiter)
            assert created == []
            await settle()  # the pass telling those who moved up their new places: one send each, nothing else
            assert {t.get_coro().__qualname__ for t in created} == {"FakeConnection.send"}
            assert len(created) == queue.counts.notices - 50 <= 20
        assert queue.counts.wakeups == 0 and not any(w.turn.done() for w in waiters)
        assert queue.counts.left == 30 and queue.waiting == 20

    asyncio.run(main())


def test_a_freed_slot_wakes_exactly_the_head():
    async def main():
        queue = admission()
        waiters = [queue.join(FakeConnection(i), queue.frees) for i in range(20)]
        await settle()
        queue.slot_freed()
        assert [w.turn.done() for w in waiters] == [True] + [False] * 19
        assert queue.counts.wakeups == 1
        queue.slot_freed()  # a second one before the head tried: the server hands it on once the head is served
        assert queue.counts.wakeups == 1 and not waiters[1].turn.done()
        assert await waiters[0].wait_turn()
        queue.slot_freed()  # freed while the head tries to open one: handed again, not lost
        assert await asyncio.wait_for(waiters[0].wait_turn(), 1)
        assert queue.counts.wakeups == 2

    asyncio.run(main())


def test_a_head_that_leaves_with_its_turn_hands_it_on():
    async def main():
        queue = admission()
        waiters = [queue.join(FakeConnection(i), queue.frees) for i in range(3)]
        queue.slot_freed()
        queue.leave(waiters[0])  # gone before it tried: the slot goes to the next in line
        assert waiters[1].turn.done() and not waiters[2].turn.done()
        assert await waiters[1].wait_turn()  # it tries, then goes (its try failed otherwise than EngineFull)
        queue.leave(waiters[1])
        assert waiters[2].turn.done() and queue.counts.wakeups == 3
        waiters[2].connection.leave()  # a client that went away with its turn handed: wait_turn says so
        await settle()
        assert not await waiters[2].wait_turn()

    asyncio.run(main())


def test_a_slot_freed_while_a_client_is_being_queued_is_not_missed():
    """A slot freed between a client's failed open and its joining, with nobody in the queue to take it, is handed
    to it on joining."""
    async def main():
        queue = admission()
        seen = queue.frees
        queue.slot_freed()  # a session closes in the gap: nobody waits yet
        waiter = queue.join(FakeConnection(), seen)
        assert await asyncio.wait_for(waiter.wait_turn(), 1)
        late = queue.join(FakeConnection(), queue.frees)  # one that saw the free count after it: not woken
        assert not late.turn.done()

    asyncio.run(main())


def test_position_notices_are_coalesced():
    """The head leaving and rejoining, over and over, moves everyone up each time; each waiter is told its place
    at most once per interval, and only when it changed."""
    async def main():
        queue = admission()
        connections = [FakeConnection(i) for i in range(50)]
        for c in connections:
            queue.join(c, queue.frees)
        await settle()
        for _ in range(200):
            head = queue.head()
            queue.leave(head)
            head.connection.leave()
            connection = FakeConnection()
            queue.join(connection, queue.frees)
            connections.append(connection)
            await settle()
        assert queue.counts.passes == 1  # the first pass at once, the rest coalesced into one not yet due
        assert max(len(c.sent) for c in connections) <= 2  # its place on joining, then at most one pass
        queue.tell_positions()  # the pending pass
        await settle()
        waiting = list(queue)
        assert [w.connection.positions()[-1] for w in waiting] == list(range(1, 51))
        told = queue.counts.notices
        queue.leave(waiting[-1])  # the last one leaves: nobody else's place changes ...
        queue.tell_positions()
        assert queue.counts.notices == told  # ... and nobody is told anything

    asyncio.run(main())


def test_passes_run_once_per_interval_at_most():
    async def main():
        queue = admission(interval=0.05)
        connections = [FakeConnection(i) for i in range(5)]
        waiters = [queue.join(c, queue.frees) for c in connections]
        queue.leave(waiters[0])
        await settle()
        assert queue.counts.passes == 1 and connections[1].positions() == [2, 1]  # the first at once
        queue.leave(waiters[1])
        queue.leave(waiters[2])
        await settle()
        assert queue.counts.passes == 1  # not due yet
        await until(lambda: queue.counts.passes == 2)
        await settle()
        assert connections[3].positions() == [4, 3, 1] and connections[4].positions() == [5, 4, 2]

    asyncio.run(main())


def test_a_waiter_that_does_not_read_its_notices_is_dropped_alone():
    async def main():
        queue = admission(timeout=0.05)
        stalled, patient = FakeConnection("stalled", stalled=True), FakeConnection("patient")
        queue.join(stalled, queue.frees)
        queue.join(patient, queue.frees)
        await settle()
        assert patient.positions() == [2]  # not held up by the stalled one's notice
        await until(stalled.closed.is_set)  # dropped after the notice timeout

    asyncio.run(main())


def test_a_waiter_that_leaves_just_after_a_notice_leaves_no_task_behind():
    """Stopped just as its notice's send completed: the sender used to go on waiting for the next notice for good
    (asyncio.wait_for, before Python 3.12, returned the send's result instead of the cancellation), holding its
    connection: one task leaked per such waiter."""
    async def main():
        connection = FakeConnection()
        waiter = Waiter(connection, 5.0)
        waiter.tell(notice(1))
        while not connection.sent:  # the send ran; the sender has not resumed yet
            await asyncio.sleep(0)
        waiter.stop()
        await settle()
        return [t.get_coro().__name__ for t in asyncio.all_tasks() if not t.done()]

    assert asyncio.run(main()) == ["main"]


# ------------------------------------------------------------------------------------- through the server
async def started(slots, max_waiting, interval=NEVER):
    server = VoiceServer(CountingEngine(slots), ServerOptions(port=0, max_waiting=max_waiting))
    await server.start()
    server.admission.interval = interval
    return server


async def free_a_slot(server, slot):
    """What a session's end does: close its slot, then wake the queue."""
    server.engine.close(slot)
    await server._wake_queue()


def test_the_server_serves_waiters_in_order_and_no_one_jumps_the_queue():
    async def main():
        server = await started(slots=2, max_waiting=10)
        try:
            assert [await server._open_slot(FakeConnection(), SessionOptions()) for _ in range(2)] == [0, 1]
            connections = [FakeConnection(i) for i in range(6)]
            tasks = []
            for c in connections:
                tasks.append(asyncio.create_task(server._open_slot(c, SessionOptions())))
                await until(lambda: server.waiting == len(tasks))
            await free_a_slot(server, 0)
            await free_a_slot(server, 1)  # two free at once: the first two in line get them, in order
            assert await asyncio.wait_for(tasks[0], 2) == 0 and await asyncio.wait_for(tasks[1], 2) == 1
            late = asyncio.create_task(server._open_slot(FakeConnection("late"), SessionOptions()))
            await until(lambda: server.waiting == 5)
            server.engine.close(0)  # a free slot, not yet handed on: the newcomer queues behind the others
            assert not late.done()
            await server._wake_queue()
            assert await asyncio.wait_for(tasks[2], 2) == 0
            assert [t.done() for t in tasks[3:]] == [False] * 3 and not late.done()
            for c in connections[3:]:
                c.leave()
            late_connection_gone = asyncio.gather(*tasks[3:])
            assert await asyncio.wait_for(late_connection_gone, 2) == [None] * 3
            await free_a_slot(server, 1)
            assert await asyncio.wait_for(late, 2) == 1 and server.waiting == 0
        finally:
            await server.stop()

    asyncio.run(main())


def test_a_full_queue_refuses_through_the_server():
    async def main():
        server = await started(slots=1, max_waiting=1)
        try:
            assert await server._open_slot(FakeConnection(), SessionOptions()) == 0
            waiter = asyncio.create_task(server._open_slot(FakeConnection(), SessionOptions()))
            await until(lambda: server.waiting == 1)
            refused = FakeConnection()
            assert await server._open_slot(refused, SessionOptions()) is None
            assert refused.sent[0][:1] == bytes([ERROR]) and b"server full" in refused.sent[0]
            assert server.refused == 1 and refused.closed.is_set()
            waiter.cancel()
        finally:
            await server.stop()

    asyncio.run(main())


def test_churn_in_a_long_queue_costs_the_same_as_in_a_short_one():
    """Issue 23: the head of a 50-place queue leaving and a newcomer joining, 50 times over. Before, every event
    woke every waiter (each created two tasks and, with the head, tried the engine) and told everyone behind the
    leaver its new place at once: O(waiting) work per event. Now an event wakes nobody, creates only the joiner's
    own tasks, costs no engine call while no slot is free, and places are told in coalesced passes."""
    async def main():
        server = await started(slots=1, max_waiting=50)
        try:
            assert await server._open_slot(FakeConnection(), SessionOptions()) == 0  # the one slot is taken
            connections, tasks = [], []

            def join():
                connections.append(FakeConnection(len(connections)))
                tasks.append(asyncio.create_task(server._open_slot(connections[-1], SessionOptions())))

            for _ in range(50):
                join()
                await until(lambda: server.waiting == len(tasks))
            opens, original = server.engine.opens, connections[:50]
            with counting_tasks() as created:
                for i in range(50):
                    connections[i].leave()  # the head goes ...
                    await until(lambda: tasks[i].done())
                    join()  # ... and comes back at the end
                    await until(lambda: server.waiting == 50)
                await settle()
            assert server.engine.opens == opens  # no engine call: no slot was free
            assert server.admission.counts.wakeups == 0
            # Per join: the client's handler (created by this test), its notice sender, its disconnect watcher and
            # the send of its first notice (wait_for's task); then one send per waiter in the one pass that ran.
            assert len(created) <= 4 * 50 + 50
            assert max(len(c.sent) for c in original) <= 2  # its place on joining, then one pass at most
            for c in connections[50:]:
                c.leave()
            await asyncio.wait_for(asyncio.gather(*tasks), 5)
        finally:
            await server.stop()

    asyncio.run(main())
