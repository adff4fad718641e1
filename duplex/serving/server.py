"""The WebSocket voice server: many conversations on one batched engine (``duplex serve``).

``GET /api/chat`` speaks Kyutai's protocol (Ogg/Opus both ways), so Kyutai's own clients work unchanged;
``/api/chat?format=pcm16`` is the same with raw 16-bit PCM at 24 kHz (any chunk size) for simple clients and the
browser page at ``/``; ``/api/stats`` reports counters as JSON.

The server is clocked, not input-clocked: every 80 ms one engine step advances every session, with the session's
next received frame or, when none has arrived (network jitter, a muted client), silence. So each session gets
exactly one audio message per 80 ms from its handshake on, and browser clients never hit their 10 s inactivity
timeout. Per-session buffers are bounded both ways: audio arriving faster than real time and messages a client
does not read fast enough are dropped (oldest first) with a counter and a log line, so a slow or stalled client
never delays anyone else. Engine calls run on one worker thread, in order.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import hmac
import http
import json
import logging
import ssl as ssl_module
import time
from dataclasses import dataclass
from importlib import resources
from typing import Callable, Dict, List, Optional
from urllib.parse import urlsplit

import numpy as np
from websockets.protocol import State

from ..runtime.engine import Engine, EngineFull
from .protocol import (AUDIO, CONTROL, HANDSHAKE, KIND_NAMES, PING, OggPage, OggPageReader, SessionOptions,
                       error_message, message, parse_query, pcm16_bytes, pcm16_samples, text_message)

log = logging.getLogger("duplex.serving.server")


@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8998
    token: Optional[str] = None  # required from clients when set (?token= or "Authorization: Bearer")
    origins: Optional[List[str]] = None  # allowed Origin headers (None: any)
    max_message_bytes: int = 1 << 20  # larger incoming messages close the connection (1009)
    read_queue_messages: int = 4  # received, not yet handled (a paused reader): then TCP pushes back
    max_waiting: int = 0  # clients that may wait for a free slot (0: refuse at once)
    input_buffer_frames: int = 10  # 800 ms of received audio at most (network jitter); older frames are dropped
    output_queue_messages: int = 64  # ~2.5 s of replies at most; older messages are dropped
    # How fast one connection's messages are read: past this the server stops reading it for a while, so TCP
    # pushes back on a client that floods (it would otherwise take the event loop, and the GIL, from everyone).
    read_messages_per_second: float = 1000.0  # Opus clients send ~12-50 pages a second, PCM ones any chunk size
    read_realtime_factor: float = 4.0  # bytes: 4x raw 16-bit PCM in real time
    max_throttled_seconds: float = 5.0  # a client this far over its budget is closed (1008)
    max_ogg_pages: int = 256  # per Ogg/Opus message (~10 s of a usual stream); a message with more is dropped
    max_opus_packets: int = 1024
    close_timeout: float = 2.0  # how long a closing handshake may take before the connection is dropped
    notice_timeout: float = 5.0  # a refused or queued client that does not take a notice within this is dropped
    ssl_cert: Optional[str] = None
    ssl_key: Optional[str] = None


_OGG_STREAM_START = b"OggS\x00\x02"  # an Ogg page with the beginning-of-stream flag: the stream's headers


def _worth_logging(count: int) -> bool:
    """Repeated events are logged the 1st, 10th and 100th time, then every 1000th (a flood must not flood the
    log too)."""
    return count in (1, 10, 100) or count % 1000 == 0


def tls_context(cert: str, key: Optional[str]) -> ssl_module.SSLContext:
    """The server's TLS context, or a ValueError that names the file at fault."""
    import os

    for flag, path in (("--ssl-cert", cert), ("--ssl-key", key)):
        if not path or not os.path.isfile(path):
            raise ValueError(f"{flag} {path}: no such file")
    context = ssl_module.SSLContext(ssl_module.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (ssl_module.SSLError, OSError) as e:
        raise ValueError(f"--ssl-cert {cert} with --ssl-key {key}: not a PEM certificate and its private key "
                         f"({e.reason if getattr(e, 'reason', None) else e})") from None
    return context


class ReadBudget:
    """A token bucket per connection: ``spend`` returns how long to pause reading before the next message, and
    ``throttled_for`` how long the client has been at or over its budget without the budget refilling to half
    (a flood, not jitter)."""

    def __init__(self, messages_per_second: float, bytes_per_second: float, burst_bytes: float,
                 clock: Callable[[], float] = time.monotonic):
        self.rates = (messages_per_second, bytes_per_second)
        self.capacity = (messages_per_second, burst_bytes)  # one second of messages; one largest message
        self.tokens = list(self.capacity)
        self.clock = clock
        self.last = clock()
        self._throttled_since: Optional[float] = None

    def spend(self, size: int) -> float:
        now = self.clock()
        elapsed, self.last = now - self.last, now
        delay = 0.0
        # Every message costs at least 64 bytes, so a stream of tiny ones meets the byte budget too.
        for i, cost in enumerate((1.0, float(max(size, 64)))):
            self.tokens[i] = min(self.capacity[i], self.tokens[i] + elapsed * self.rates[i]) - cost
            if self.tokens[i] < 0:
                delay = max(delay, -self.tokens[i] / self.rates[i])
        # Throttling ends when the budget has refilled to half, not when one message happens to fit: a flood
        # paced just at the budget's rate (each message fitting after the pause before it) stays a flood.
        if delay == 0 and all(t >= c / 2 for t, c in zip(self.tokens, self.capacity)):
            self._throttled_since = None
        elif delay > 0 and self._throttled_since is None:
            self._throttled_since = now
        return delay

    @property
    def throttled_for(self) -> float:
        return 0.0 if self._throttled_since is None else self.clock() - self._throttled_since


@dataclass
class SessionStats:
    frames_in: int = 0
    steps: int = 0
    underruns: int = 0  # ticks with no received frame (silence was used)
    dropped_in: int = 0  # received frames dropped because the client sent faster than real time
    dropped_out: int = 0  # replies dropped because the client did not read them
    bad_messages: int = 0


SESSION_COUNTERS = [f.name for f in dataclasses.fields(SessionStats)]


class Session:
    def __init__(self, connection, slot: int, options: SessionOptions, frame_size: int, sample_rate: int,
                 server_options: ServerOptions):
        self.connection, self.slot, self.options = connection, slot, options
        self.frame_size, self.sample_rate = frame_size, sample_rate
        self.limits = server_options
        self.stats = SessionStats()
        self.frames: collections.deque = collections.deque()
        self._pending = np.zeros(0, dtype=np.float32)
        self._raw_leftover = b""
        self._drop_events = 0
        # Replies waiting to be sent: (message, droppable). The Ogg/Opus stream's first message (its OpusHead and
        # OpusTags pages) is never dropped: without it a client's decoder cannot start.
        self.outbox: collections.deque = collections.deque()
        self._outbox_ready = asyncio.Event()
        self._reader = self._writer = None
        self.last_audio_samples = 0  # audio in the last message received (what it costs the read budget)
        if not options.raw:
            import sphn

            self._pages = OggPageReader(sample_rate, server_options.max_ogg_pages, server_options.max_opus_packets)
            self._reader = sphn.OpusStreamReader(sample_rate)
            self._writer = sphn.OpusStreamWriter(sample_rate)

    # ------------------------------------------------------------------------------------------------ input
    def receive(self, data) -> Optional[str]:
        """Handle one incoming message; returns an error text to send back, or None."""
        if not isinstance(data, (bytes, bytearray)):
            self.stats.bad_messages += 1
            return "text messages are not part of the protocol; send binary messages [kind][payload]"
        if len(data) == 0:
            self.stats.bad_messages += 1
            return "empty message"
        kind, payload = data[0], bytes(data[1:])
        self.last_audio_samples = 0
        if kind == AUDIO:
            return self._audio(payload)
        if kind == CONTROL:
            return None  # Kyutai's start/endTurn/pause controls mean nothing in full duplex: ignored
        if kind == PING:
            self.post(message(PING, payload[:64]))  # echoed: the page measures the round trip with it
            return None
        self.stats.bad_messages += 1
        return f"unknown message kind {kind} ({KIND_NAMES.get(kind, 'not in the protocol')}); ignored"

    def _audio(self, payload: bytes) -> Optional[str]:
        if self.options.raw:
            data = self._raw_leftover + payload
            usable = len(data) - len(data) % 2
            self._raw_leftover = data[usable:]
            samples = pcm16_samples(data[:usable])
            self.last_audio_samples = samples.size
            return self._frames_from(samples)
        pages, problem = self._pages.feed(payload)
        if problem:
            self.stats.bad_messages += 1
        self.last_audio_samples = sum(page.samples for page in pages)
        pages = self._usable(pages)
        decoded = []
        try:
            for i in range(0, len(pages), 16):  # sphn's reader fails on one call that decodes more than ~5 s
                out = self._reader.append_bytes(b"".join(page.data for page in pages[i:i + 16]))
                if out is not None:
                    decoded.append(np.asarray(out, dtype=np.float32).reshape(-1))
        except Exception as e:  # malformed Opus: drop this stream state and start a new one
            import sphn

            self._reader = sphn.OpusStreamReader(self.sample_rate)
            self.stats.bad_messages += 1
            problem = f"malformed Ogg/Opus audio ({e}); the audio stream was restarted"
        if not decoded:
            return problem
        samples = np.concatenate(decoded) if len(decoded) > 1 else decoded[0]
        return self._frames_from(samples) or problem  # what decoded before any damage is kept

    def _usable(self, pages: List[OggPage]) -> List[OggPage]:
        """The pages worth decoding: the newest that fit in the input buffer (older audio would be dropped from
        it right away), and every page without audio (the stream's headers). Audio is counted before it is
        decoded, so a message claiming hours of audio (a 2-byte Opus packet conceals 120 ms) costs no more to
        decode than the buffer holds."""
        room, first = self.limits.input_buffer_frames * self.frame_size, len(pages)
        while first > 0 and pages[first - 1].samples <= room:
            first -= 1
            room -= pages[first].samples
        skipped = sum(page.samples for page in pages[:first]) // self.frame_size
        if skipped:
            self.stats.frames_in += skipped
            self._count_dropped(skipped)
        return [page for page in pages[:first] if page.samples == 0] + pages[first:]
    def _frames_from(self, samples: np.ndarray) -> Optional[str]:
        if samples.size and not np.isfinite(samples).all():
            self.stats.bad_messages += 1
            return "audio contains non-finite samples; ignored"
        pending = np.concatenate([self._pending, samples]) if self._pending.size else samples
        whole = pending.size // self.frame_size
        for i in range(whole):
            self.frames.append(pending[i * self.frame_size:(i + 1) * self.frame_size])
            self.stats.frames_in += 1
        self._pending = pending[whole * self.frame_size:].copy()
        excess = len(self.frames) - self.limits.input_buffer_frames
        for _ in range(max(0, excess)):
            self.frames.popleft()
        if excess > 0:
            self._count_dropped(excess)
        return None

    def _count_dropped(self, frames: int) -> None:
        self.stats.dropped_in += frames
        self._drop_events += 1
        if _worth_logging(self._drop_events):
            log.warning("session %d: client sends faster than real time, dropped %d frame(s) (%d so far)",
                        self.slot, frames, self.stats.dropped_in)

    def next_frame(self) -> np.ndarray:
        self.stats.steps += 1
        if self.frames:
            return self.frames.popleft()
        self.stats.underruns += 1
        return np.zeros(self.frame_size, dtype=np.float32)

    # ----------------------------------------------------------------------------------------------- output
    def deliver(self, audio: np.ndarray, text: Optional[str]) -> None:
        """Queue the replies of one step: audio first, then text (as Kyutai's server)."""
        if self.options.raw:
            self.post(message(AUDIO, pcm16_bytes(audio)))
        else:
            pages = self._writer.append_pcm(audio)
            if pages:
                self.post(message(AUDIO, pages), droppable=not pages.startswith(_OGG_STREAM_START))
        if text:
            self.post(text_message(text))

    def post(self, msg: bytes, droppable: bool = True) -> None:
        if len(self.outbox) >= self.limits.output_queue_messages:
            oldest = next((i for i, (_, can_drop) in enumerate(self.outbox) if can_drop), None)
            if oldest is not None:
                del self.outbox[oldest]
                self.stats.dropped_out += 1
                if _worth_logging(self.stats.dropped_out):
                    log.warning("session %d: client does not read its replies, dropped %d message(s)", self.slot,
                                self.stats.dropped_out)
        self.outbox.append((msg, droppable))
        self._outbox_ready.set()

    async def send_loop(self) -> None:
        while True:
            while not self.outbox:
                self._outbox_ready.clear()
                await self._outbox_ready.wait()
            msg, _ = self.outbox.popleft()
            await self.connection.send(msg)


class _Waiter:
    """A client waiting for a slot. Its queue notices go out from its own task, newest only: if the client does
    not read them (a send that does not complete within ``timeout``), its connection is dropped, and nobody
    else waits for it."""

    def __init__(self, connection, timeout: float):
        self.connection, self.timeout = connection, timeout
        self.position: Optional[int] = None
        self._notice: Optional[bytes] = None
        self._ready = asyncio.Event()
        self._task = asyncio.create_task(self._send_notices())

    def tell(self, notice: bytes) -> None:
        self._notice = notice
        self._ready.set()

    def stop(self) -> None:
        self._task.cancel()

    async def _send_notices(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            notice, self._notice = self._notice, None
            try:
                await asyncio.wait_for(self.connection.send(notice), self.timeout)
            except asyncio.TimeoutError:
                log.info("a waiting client does not read its queue notices; dropped")
                self.connection.transport.abort()
                return
            except Exception:  # the client left (ConnectionClosed): its handler removes it from the queue
                return


class VoiceServer:
    def __init__(self, engine: Engine, options: Optional[ServerOptions] = None):
        self.engine = engine
        self.options = options or ServerOptions()
        if self.options.token is not None and not self.options.token.strip():
            raise ValueError("the token is empty, which would let anyone in; give a secret or no token")
        self.sessions: Dict[int, Session] = {}
        self.queue: List[object] = []  # connections waiting for a slot, first come first served
        self._waiters: Dict[object, _Waiter] = {}
        self.ticks = self.misses = self.connections = self.refused = 0
        self.closed_totals = SessionStats()  # the counters of every session that has ended, added up
        self.step_ms: collections.deque = collections.deque(maxlen=1000)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._slot_freed: Optional[asyncio.Condition] = None
        self._frees = 0  # slots freed so far: a waiter compares it with what it saw before trying to open one
        self._server = None
        self._ticker: Optional[asyncio.Task] = None
        self._page = resources.files("duplex.serving").joinpath("web/index.html").read_text(encoding="utf-8")

    async def _engine(self, fn, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    # ------------------------------------------------------------------------------------------ lifecycle
    async def start(self):
        from websockets.asyncio.server import serve

        self._slot_freed = asyncio.Condition()
        ssl_context = tls_context(self.options.ssl_cert, self.options.ssl_key) if self.options.ssl_cert else None
        self._server = await serve(self._handle, self.options.host, self.options.port,
                                   process_request=self._http, max_size=self.options.max_message_bytes,
                                   # --origins restricts browsers; other clients send no Origin header
                                   origins=[*self.options.origins, None] if self.options.origins else None,
                                   ssl=ssl_context, compression=None, close_timeout=self.options.close_timeout,
                                   max_queue=self.options.read_queue_messages)
        self._ticker = asyncio.create_task(self._tick_loop())
        log.info("serving on %s://%s:%d (%d slot%s)", "https" if ssl_context else "http", self.options.host,
                 self.port, self.engine.slots, "" if self.engine.slots == 1 else "s")
        return self

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1] if self._server else self.options.port

    async def stop(self) -> None:
        if self._ticker:
            self._ticker.cancel()
        if self._server:
            self._server.close()
            await self._server.wait_closed()
        self._executor.shutdown(wait=True)

    async def serve_forever(self, on_ready=None) -> None:
        """Listen and serve until cancelled; ``on_ready(port)`` runs once the socket is bound (a port already
        in use fails before it)."""
        await self.start()
        try:
            if on_ready is not None:
                on_ready(self.port)
            await self._server.serve_forever()
        finally:
            await self.stop()

    # ----------------------------------------------------------------------------------------------- HTTP
    def _authorized(self, request) -> bool:
        """With a token set: ``?token=`` or ``Authorization: Bearer`` (the scheme in any case, RFC 7235)."""
        if self.options.token is None:
            return True
        offered = parse_query(request.path).token or ""
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            offered = value.strip()
        return hmac.compare_digest(offered.encode(), self.options.token.encode())

    def _http(self, connection, request):
        path = urlsplit(request.path).path
        if path in ("/", "/index.html"):
            response = connection.respond(http.HTTPStatus.OK, self._page)
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = "text/html; charset=utf-8"
            return response
        if path in ("/api/stats", "/api/chat") and not self._authorized(request):
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, "invalid or missing token\n")
        if path == "/api/stats":
            response = connection.respond(http.HTTPStatus.OK, json.dumps(self.stats()))
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = "application/json"
            return response
        if path == "/api/chat":
            return None  # go on with the WebSocket handshake
        return connection.respond(http.HTTPStatus.NOT_FOUND, f"not found: {path}\n")

    def stats(self) -> dict:
        """Counters since start-up; step times over the last 1000 steps; ``totals`` adds up the per-session
        counters of every session, ended or not (what a load benchmark reads before and after its run)."""
        sessions = list(self.sessions.values())
        totals = {name: getattr(self.closed_totals, name) + sum(getattr(s.stats, name) for s in sessions)
                  for name in SESSION_COUNTERS}
        steps = sorted(self.step_ms)
        return {"slots": self.engine.slots, "sessions": len(sessions), "waiting": self.waiting,
                "connections": self.connections, "refused": self.refused, "ticks": self.ticks,
                "deadline_misses": self.misses,
                "step_ms_p50": float(np.percentile(steps, 50)) if steps else None,
                "step_ms_p99": float(np.percentile(steps, 99)) if steps else None,
                "totals": totals,
                "per_session": {str(s.slot): dataclasses.asdict(s.stats) for s in sessions}}

    # ------------------------------------------------------------------------------------------ sessions
    @property
    def waiting(self) -> int:
        return len(self.queue)

    def _tell_queue_positions(self) -> None:
        """Tell every waiting client whose place changed where it stands. Nothing here waits: each waiter's
        notices go out from its own task (a waiter that does not read them holds up no one but itself)."""
        for position, connection in enumerate(self.queue, start=1):
            waiter = self._waiters.get(connection)
            if waiter is not None and waiter.position != position:
                waiter.position = position
                waiter.tell(error_message(f"all {self.engine.slots} conversation slots are in use; you are "
                                          f"number {position} in the queue"))

    async def _wake_queue(self) -> None:
        async with self._slot_freed:
            self._frees += 1
            self._slot_freed.notify_all()

    async def _wait_for_slot_or_disconnect(self, connection, seen: int) -> bool:
        """Wait until a slot may have been freed since the free count was ``seen`` (a slot freed while this
        client was still being queued counts too); False if the client went away meanwhile."""
        async def slot_freed():
            async with self._slot_freed:
                await self._slot_freed.wait_for(lambda: self._frees != seen)

        freed = asyncio.create_task(slot_freed())
        gone = asyncio.create_task(connection.wait_closed())
        try:
            await asyncio.wait({freed, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            freed.cancel()
            gone.cancel()
        return not gone.done() or gone.cancelled()

    async def _open_slot(self, connection, options: SessionOptions) -> Optional[int]:
        opts = {k: v for k, v in (("temperature", options.temperature), ("top_k", options.top_k),
                                  ("text_temperature", options.text_temperature),
                                  ("text_top_k", options.text_top_k), ("seed", options.seed)) if v is not None}
        waiter: Optional[_Waiter] = None
        try:
            while True:
                seen = self._frees
                if not self.queue or self.queue[0] is connection:  # first come, first served
                    try:
                        slot = await self._engine(self.engine.open, **opts)
                        if waiter is not None:
                            self._leave_queue(connection, waiter)
                            waiter = None
                            await self._wake_queue()  # the next in line may find a free slot too
                        return slot
                    except EngineFull:
                        pass
                if waiter is None:
                    if self.waiting >= self.options.max_waiting:
                        self.refused += 1
                        await self._refuse(connection, f"server full: all {self.engine.slots} conversation slots "
                                                       "are in use; try again later")
                        return None
                    waiter = self._waiters[connection] = _Waiter(connection, self.options.notice_timeout)
                    self.queue.append(connection)
                    self._tell_queue_positions()
                if not await self._wait_for_slot_or_disconnect(connection, seen):
                    return None  # the client left while waiting
        finally:
            if waiter is not None:
                self._leave_queue(connection, waiter)
                await self._wake_queue()

    def _leave_queue(self, connection, waiter: "_Waiter") -> None:
        self.queue.remove(connection)
        del self._waiters[connection]
        waiter.stop()
        self._tell_queue_positions()

    async def _refuse(self, connection, reason: str) -> None:
        """Say why, then close with 1013 (try again later); a client that already left is no error, and one that
        does not read cannot hold this up for longer than the notice timeout."""
        from websockets.exceptions import ConnectionClosed

        try:
            await asyncio.wait_for(connection.send(error_message(reason)), self.options.notice_timeout)
            await connection.close(1013, "server full")
        except (ConnectionClosed, asyncio.TimeoutError):
            connection.transport.abort()

    async def _handle(self, connection) -> None:
        options = parse_query(connection.request.path)
        self.connections += 1
        slot = await self._open_slot(connection, options)
        if slot is None:
            return
        session = sender = None
        try:
            session = Session(connection, slot, options, self.engine.frame_size, self.engine.sample_rate,
                              self.options)
            sender = asyncio.create_task(session.send_loop())
            log.info("session %d opened (%s)", slot, "pcm16" if options.raw else "ogg/opus")
            await connection.send(message(HANDSHAKE))
            self.sessions[slot] = session
            budget = ReadBudget(self.options.read_messages_per_second,
                                self.options.read_realtime_factor * 2 * self.engine.sample_rate,
                                self.options.max_message_bytes)
            async for data in connection:
                problem = session.receive(data)
                if problem:
                    if _worth_logging(session.stats.bad_messages):
                        log.info("session %d: %s (%d bad messages so far)", slot, problem, session.stats.bad_messages)
                    session.post(error_message(problem))
                # Audio costs what it decodes to (2 bytes a sample, as PCM16), whatever its compressed size.
                pause = budget.spend(max(len(data), 2 * session.last_audio_samples))
                if budget.throttled_for + pause > self.options.max_throttled_seconds:
                    # A flood, not jitter: reading its backlog at the budget's pace would hold the slot for ages.
                    log.warning("session %d: closed, the client keeps sending far faster than real time", slot)
                    await connection.close(1008, "sending too fast")
                    break
                if pause > 0:  # read nothing meanwhile: TCP slows the client down
                    until = time.monotonic() + pause
                    while connection.state is State.OPEN and time.monotonic() < until:
                        await asyncio.sleep(min(0.1, until - time.monotonic()))  # a client that leaves frees
                        # its slot at once, not after the pause
                if connection.state is not State.OPEN:  # closing: what is still buffered is not worth reading
                    break
        except Exception as e:  # a broken connection ends this session only
            log.info("session %d: connection ended (%s)", slot, type(e).__name__)
        finally:
            self.sessions.pop(slot, None)
            if session is not None:  # at once: a stats() call during the awaits below must still count it
                for name in SESSION_COUNTERS:
                    setattr(self.closed_totals, name, getattr(self.closed_totals, name) + getattr(session.stats, name))
            if sender is not None:
                sender.cancel()
                # collected, so that a send loop that had already failed (the client left) logs no
                # "exception never retrieved"
                await asyncio.gather(sender, return_exceptions=True)
            await self._engine(self.engine.close, slot)
            await self._wake_queue()  # the first in the queue takes the slot
            if session is not None:
                log.info("session %d closed: %s", slot, dataclasses.asdict(session.stats))

    # -------------------------------------------------------------------------------------------- clock
    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        period = self.engine.frame_size / self.engine.sample_rate
        next_tick = loop.time()
        failures = 0
        while True:
            delay = next_tick - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sessions = list(self.sessions.values())
            try:
                if sessions:
                    frames = {s.slot: s.next_frame() for s in sessions}
                    t0 = time.perf_counter()
                    outputs = await self._engine(self.engine.step, frames)
                    self.step_ms.append((time.perf_counter() - t0) * 1e3)
                    for s in sessions:
                        if s.slot in outputs and self.sessions.get(s.slot) is s:
                            audio, text = outputs[s.slot]
                            s.deliver(audio, text)
                failures = 0
            except Exception:  # keep ticking: one bad frame must not stall every session
                failures += 1
                if _worth_logging(failures):
                    log.exception("frame step failed (%d in a row); sessions continue with the next tick", failures)
            self.ticks += 1
            end = loop.time()
            next_tick += period  # due times advance by exactly one period: wake-up overshoots do not accumulate
            if sessions and end > next_tick:
                self.misses += 1
                if _worth_logging(self.misses):
                    log.warning("frame step late by %.1f ms (%d deadline misses)", (end - next_tick) * 1e3,
                                self.misses)
                next_tick = end  # re-anchor: a late tick never turns into a burst of catch-up steps
            elif not sessions and end > next_tick + period:
                next_tick = end  # idle: do not carry a schedule from long ago
