"""The frame clock runs in a thread of its own (serving/ticker.py): nothing the event loop does can hold a tick
back, and what the clock hands the loop is bounded (issue 23, deliverable 1)."""

import asyncio
import time

import numpy as np
from websockets.asyncio.client import connect

from duplex.serving.protocol import AUDIO, HANDSHAKE, message, pcm16_bytes
from tests.helpers import EchoEngine, serve

FRAME = 1920


async def until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.02)


async def open_session(url):
    ws = await connect(url + "/api/chat?format=pcm16")
    assert await ws.recv() == message(HANDSHAKE)
    return ws


def test_ticks_go_on_while_the_event_loop_is_blocked():
    """Request handling, a slow callback, the GIL held by network code: whatever keeps the event loop busy, the
    clock keeps stepping the live sessions (before, the tick ran on the loop and waited with everything else)."""
    async def test(server, url):
        ws = await open_session(url)
        await until(lambda: server.clock.ticks > 2)
        before = server.clock.ticks
        time.sleep(1.0)  # the event loop does nothing else for a second (12 periods)
        during = server.clock.ticks - before
        await ws.close()
        return during

    assert serve(test, engine=EchoEngine(1)) >= 5


def test_replies_the_loop_takes_too_late_are_dropped_and_counted():
    """The replies wait for the loop in a bounded queue: a loop held for longer than the max reply age gets the
    newest ticks' replies only, and the session counts the others as stale audio, as it does for a client that
    does not read."""
    async def test(server, url):
        ws = await open_session(url)
        await until(lambda: server.clock.ticks > 2)
        session = next(iter(server.sessions.values()))
        time.sleep(1.5)  # ~18 ticks while the loop cannot take their replies; it may hold 0.3 s of them
        await until(lambda: session.stats.stale_audio_dropped > 0)
        queued_at_once = len(session.outbox)
        stale = session.stats.stale_audio_dropped
        await ws.close()
        return stale, queued_at_once, server._ticker.max_pending

    stale, queued, bound = serve(test, engine=EchoEngine(1), reply_max_age=0.3)
    assert stale >= 5
    assert queued <= bound + 2  # no more than the hand-off holds (and the ticks since)


def test_a_session_still_hears_every_frame_in_order_through_the_thread():
    """The input buffer is shared by two threads now: frames still reach the engine once each, in order."""
    async def test(server, url):
        ws = await open_session(url)
        pcm = (np.arange(8 * FRAME) % 1000 / 2000).astype(np.float32)
        await ws.send(message(AUDIO, pcm16_bytes(pcm)))
        heard = []
        while len(heard) < 8:
            reply = await asyncio.wait_for(ws.recv(), 10)
            if reply[:1] == bytes([AUDIO]):
                samples = np.frombuffer(reply[1:], dtype="<i2")
                if samples.any():
                    heard.append(samples)
        await ws.close()
        return np.concatenate(heard)

    heard = serve(test, engine=EchoEngine(1))
    expected = np.round((np.arange(8 * FRAME) % 1000 / 2000) * 32767).astype(np.int16)
    assert np.abs(heard.astype(np.int32) - expected).max() <= 1
