"""Replies bounded by age (issue 23, deliverable 5): a client that stops reading gets, when it reads again, no more
than about the max reply age of old audio; what was dropped is counted; a client that reads loses nothing; the
Ogg/Opus stream stays one valid stream; text is never lost."""

import asyncio
import json
import socket
import urllib.request

import numpy as np
import pytest
import sphn
from helpers import speech
from websockets.asyncio.client import connect

from duplex.serving import session as session_module
from duplex.serving.client import converse
from duplex.serving.options import ServerOptions
from duplex.serving.protocol import AUDIO, HANDSHAKE, PING, TEXT, message, parse_query
from duplex.serving.server import VoiceServer
from duplex.serving.session import Session

FRAME = 1920
FRAME_SECONDS = FRAME / 24000


class Clock:
    """Stands in for the session's ``time`` module: the tests say when each tick is."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now


class Collecting:
    """Stands in for a connection: keeps what is sent."""

    def __init__(self):
        self.sent = []

    async def send(self, msg):
        self.sent.append(msg)

    async def ping(self):  # answered at once: a client that reads
        pong = asyncio.get_running_loop().create_future()
        pong.set_result(0.0)
        return pong


def send_all(session):
    """Run the session's send loop until its outbox is empty."""
    async def drain():
        task = asyncio.create_task(session.send_loop())
        while session.outbox:
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(drain())


def a_session(monkeypatch, query="/api/chat", **options):
    clock = Clock()
    monkeypatch.setattr(session_module, "time", clock)
    connection = Collecting()
    session = Session(connection, 0, parse_query(query), FRAME, 24000, ServerOptions(**options))
    return session, connection, clock


def decode(sent):
    """The audio a Kyutai client decodes from the audio messages (sphn's reader raises on a broken stream)."""
    reader, samples = sphn.OpusStreamReader(24000), 0
    for msg in sent:
        if msg[0] == AUDIO:
            out = reader.append_bytes(msg[1:])
            samples += 0 if out is None else np.asarray(out).size
    return samples


@pytest.mark.parametrize("query", ["/api/chat", "/api/chat?format=pcm16"])
def test_audio_older_than_the_max_age_is_dropped_and_counted_text_is_kept(monkeypatch, query):
    """5 s of replies queue while the client reads nothing; when it reads, it gets the last second of audio (the
    ticks within the max age), every text piece in order, and the drops are counted. The Opus stream it gets
    is one valid stream (headers first), since only the audio that is sent is encoded."""
    session, connection, clock = a_session(monkeypatch, query)
    pcm = speech(5.0)
    ticks = len(pcm) // FRAME
    for i in range(ticks):
        clock.now += FRAME_SECONDS
        session.deliver(pcm[i * FRAME:(i + 1) * FRAME], f"w{i} ")
    send_all(session)
    audio = [m for m in connection.sent if m[0] == AUDIO]
    fresh = int(session.limits.reply_max_age / FRAME_SECONDS) + 1  # the ticks within the last max age
    assert len(audio) <= fresh
    assert session.stats.stale_audio_dropped == ticks - len(audio) >= ticks - fresh
    assert session.stats.dropped_out >= session.stats.stale_audio_dropped
    text = "".join(m[1:].decode() for m in connection.sent if m[0] == TEXT)
    assert text == "".join(f"w{i} " for i in range(ticks))  # no word lost, none out of order
    if not session.options.raw:
        assert b"OpusHead" in audio[0]
        assert decode(connection.sent) > 0


def test_a_client_that_reads_loses_nothing(monkeypatch):
    session, connection, clock = a_session(monkeypatch)
    pcm = speech(4.0)
    ticks = len(pcm) // FRAME
    for i in range(ticks):
        clock.now += FRAME_SECONDS
        session.deliver(pcm[i * FRAME:(i + 1) * FRAME], "x" if i % 3 == 0 else None)
        send_all(session)
    assert session.stats.dropped_out == session.stats.stale_audio_dropped == 0
    assert sum(m[0] == TEXT for m in connection.sent) == len(range(0, ticks, 3))
    assert decode(connection.sent) >= (ticks - 2) * FRAME  # the encoder holds back at most a page


def test_a_full_outbox_drops_audio_first_and_joins_text_rather_than_lose_it(monkeypatch):
    """Within the max age (a tiny outbox, all fresh): text pieces next to each other are joined, so the words a
    client shows are the same; else the oldest audio goes."""
    session, connection, clock = a_session(monkeypatch, output_queue_messages=4)
    for i in range(10):
        session.deliver(np.zeros(FRAME, dtype=np.float32), f"t{i}")
    assert len(session.outbox) == 4 and session.stats.stale_audio_dropped == 0
    send_all(session)
    assert sum(m[0] == AUDIO for m in connection.sent) + session.stats.dropped_out == 10
    assert [m[0] for m in connection.sent][-1:] == [TEXT]  # the newest reply is kept
    text = "".join(m[1:].decode() for m in connection.sent if m[0] == TEXT)
    assert text == "".join(f"t{i}" for i in range(10))


def test_send_buffers_are_sized_for_a_few_replies():
    """Below the outbox nothing can be dropped: websockets' write buffer and the kernel's send buffer hold a
    few replies, not the megabytes the kernel would grow to."""
    class Transport:
        def __init__(self, sock):
            self.sock, self.high = sock, None

        def set_write_buffer_limits(self, high=None, low=None):
            self.high = high

        def get_extra_info(self, name):
            return self.sock if name == "socket" else None

    class Connection:
        def __init__(self, sock):
            self.transport = Transport(sock)

    options = ServerOptions()
    with socket.socket() as sock:
        connection = Connection(sock)
        Session(connection, 0, parse_query("/api/chat?format=pcm16"), FRAME, 24000, options)
        assert connection.transport.high == options.send_buffer_frames * (1 + 2 * FRAME)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) <= 2 * connection.transport.high  # Linux doubles


class SpeakingEngine:
    """Stands in for the engine (no model: the test is the clock and the outbox): each slot says the next 80 ms of
    a speech-like signal, whatever it hears (silence would make Opus pages of a few bytes)."""

    frame_size, sample_rate = FRAME, 24000

    def __init__(self, slots=1):
        self.slots, self.open_slots = slots, set()
        self.said, self.voice = 0, speech(2.0)

    @property
    def free_slots(self):
        return self.slots - len(self.open_slots)

    def open(self, **options):
        slot = min(set(range(self.slots)) - self.open_slots)
        self.open_slots.add(slot)
        return slot

    def close(self, slot):
        self.open_slots.discard(slot)

    def step(self, frames):
        start = self.said % (len(self.voice) // FRAME) * FRAME
        self.said += 1
        return {slot: (self.voice[start:start + FRAME].copy(), None) for slot in frames}


async def pause_then_resume(port, query, pause_s, small_client_buffers):
    """A WebSocket client stops reading for ``pause_s``, then sends a ping and reads until its echo: what came
    before the echo was queued before it resumed. Returns those messages. With ``small_client_buffers`` its own
    receive buffer and message queue are small; else it is websockets' client as it comes (a 16-message queue,
    the kernel's default receive buffer)."""
    sock = socket.create_connection(("127.0.0.1", port))
    if small_client_buffers:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    # close_timeout: with its small queue the client reads no further once it has the echo, so the server's
    # closing frame waits in its buffers and a close handshake would time out (websockets' default: 10 s)
    async with connect(f"ws://127.0.0.1:{port}{query}", sock=sock, max_queue=1 if small_client_buffers else 16,
                       compression=None, close_timeout=0.5) as ws:
        assert await asyncio.wait_for(ws.recv(), 5) == message(HANDSHAKE)
        await asyncio.sleep(pause_s)
        await ws.send(message(PING, b"resume"))
        before = []
        while True:
            msg = await asyncio.wait_for(ws.recv(), 10)
            if msg == message(PING, b"resume"):
                return before
            before.append(msg)


def api_stats(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/stats", timeout=5) as response:
        return json.loads(response.read())


def stop_then_resume(pause_s, query, small_client_buffers=True, max_age=0.5, front=False):
    """Serve one client that stops reading for ``pause_s``; returns the messages it got on resuming that had
    been queued before, the server's options and /api/stats. ``front``: through the front process (front.py), as
    ``duplex serve`` runs."""
    options = ServerOptions(port=0, reply_max_age=max_age, front=front)

    async def main():
        server = VoiceServer(SpeakingEngine(), options)
        await server.start()
        try:
            before = await pause_then_resume(server.port, query, pause_s, small_client_buffers)
            return before, await asyncio.to_thread(api_stats, server.port)
        finally:
            await server.stop()

    before, stats = asyncio.run(main())
    return [m for m in before if m[0] == AUDIO], options, stats


def assert_drops_counted(stats, audio, made):
    dropped = stats["totals"]["stale_audio_dropped"]
    assert dropped > 0 and dropped + len(audio) >= made * 0.7 and stats["totals"]["dropped_out"] >= dropped


@pytest.mark.slow
@pytest.mark.parametrize("front", [False, True])
def test_a_pcm16_client_that_stops_reading_gets_at_most_about_the_max_age_of_old_audio(front):
    """4 s without reading (50 ticks): on resuming, the client gets no more old audio messages than the max age
    holds (twice: the time it takes to find the client stopped, the replies waiting meanwhile) plus what the
    sized buffers below the outbox hold, not the 50 the server made meanwhile (before: all of them, from the
    kernel's buffers); the drops show in /api/stats. The same through the front: its buffers hold only what the
    server sent before its pings went unanswered."""
    pause_s = 4.0
    audio, options, stats = stop_then_resume(pause_s, "/api/chat?format=pcm16", front=front)
    made = pause_s / FRAME_SECONDS
    # the max age's ticks, twice; the write buffer and the kernel's send buffer (a few replies each); the
    # reply being sent; the client's small receive buffer and its one queued message
    bound = 2 * options.reply_max_age / FRAME_SECONDS + 3 * options.send_buffer_frames + 4
    assert len(audio) <= bound < made * 0.7
    assert_drops_counted(stats, audio, made)


@pytest.mark.slow
@pytest.mark.parametrize("query", ["/api/chat", "/api/chat?format=pcm16"])
def test_any_client_that_stops_reading_gets_a_bounded_backlog_that_still_decodes(query):
    """websockets' client as it comes, as Kyutai's clients and browsers are: its own buffers hold 16 messages
    and tens of seconds of Opus, which only it could make smaller; the server stops sending once its pings go
    unanswered, so what it holds is not filled with old audio. 6 s without reading (75 ticks): the backlog is
    the client's queue and about twice the max age, and Opus replies still make one valid stream."""
    pause_s = 6.0
    audio, options, stats = stop_then_resume(pause_s, query, small_client_buffers=False)
    made = pause_s / FRAME_SECONDS
    bound = 16 + 2 * options.reply_max_age / FRAME_SECONDS + 3 * options.send_buffer_frames + 4
    assert len(audio) <= bound < made * 0.8
    if "pcm16" not in query:
        assert decode(audio) > 0
    assert_drops_counted(stats, audio, made)


@pytest.mark.slow
def test_a_client_that_reads_loses_nothing_on_loopback():
    """Kyutai's protocol end to end (Ogg/Opus both ways) with the pings and the sized buffers: every reply of a
    3 s conversation comes, none is dropped."""
    async def main():
        server = VoiceServer(SpeakingEngine(), ServerOptions(port=0))
        await server.start()
        try:
            result = await converse(f"ws://127.0.0.1:{server.port}", speech(3.0))
            return result, await asyncio.to_thread(api_stats, server.port)
        finally:
            await server.stop()

    result, stats = asyncio.run(main())
    assert result.complete and result.audio_messages == 38 and not result.errors  # 3 s: 38 frames of 80 ms
    assert stats["totals"]["stale_audio_dropped"] == stats["totals"]["dropped_out"] == 0
