"""One conversation on the server: what its client sent (decoded, cut into frames, bounded), what it is owed
(one reply per tick, in a bounded outbox sent from its own task), and its counters."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from .options import ServerOptions
from .protocol import (
    AUDIO,
    CONTROL,
    KIND_NAMES,
    PING,
    TEXT,
    OggPage,
    OggPageReader,
    SessionOptions,
    message,
    pcm16_bytes,
    pcm16_samples,
    text_message,
)

log = logging.getLogger(__name__)

# Python names it from 3.14 on; the number is Linux's (macOS: 0x201)
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 0x201 if sys.platform == "darwin" else 25)
_TCP_INFO = getattr(socket, "TCP_INFO", 11)
_NOTSENT_AT = 144  # tcpi_notsent_bytes in Linux's struct tcp_info (since Linux 4.6; shorter answers: not known)
_PING_EVERY = 3  # frames between the pings that tell whether the client reads (~1.5 KB/minute)
_OPUS_FRAME_BYTES = 400  # an 80 ms Ogg/Opus page of speech as sphn encodes it: ~300 bytes, with some margin


def worth_logging(count: int) -> bool:
    """Repeated events are logged the 1st, 10th and 100th time, then every 1000th (a flood must not flood the
    log too)."""
    return count in (1, 10, 100) or count % 1000 == 0


@dataclass
class SessionStats:
    frames_in: int = 0
    steps: int = 0
    underruns: int = 0  # ticks with no received frame (silence was used)
    # ticks whose frame had waited more than input_target_frames periods in the input buffer (frames that arrived
    # after it were waiting too): the user was heard that much later than the target
    late_input: int = 0
    dropped_in: int = 0  # received frames dropped: the client sent faster than real time, or the server fell behind
    drained_in: int = 0  # of those, dropped because the input backlog stayed above its target (next_frame)
    dropped_out: int = 0  # replies dropped because the client did not read them (a full outbox, or too old)
    stale_audio_dropped: int = 0  # of those, audio replies older than the max reply age when their turn came
    bad_messages: int = 0


SESSION_COUNTERS = [f.name for f in dataclasses.fields(SessionStats)]


class Session:
    def __init__(self, connection, slot: int, options: SessionOptions, frame_size: int, sample_rate: int,
                 server_options: ServerOptions):
        self.connection, self.slot, self.options = connection, slot, options
        self.frame_size, self.sample_rate = frame_size, sample_rate
        self.limits = server_options
        self.stats = SessionStats()
        self.adapter: Optional[str] = None  # the LoRA adapter it runs (its name; None: the base model)
        # Received frames, oldest first: filled by the event loop, taken by the clock's thread (ticker.py). The
        # lock makes each change of the buffer and of the drop counter one step for both.
        self.frames: collections.deque = collections.deque()
        self._frames_lock = threading.Lock()
        self._pending = np.zeros(0, dtype=np.float32)
        self._raw_leftover = b""
        self._drop_events = self._drain_events = 0
        self._window_ticks, self._window_min = 0, None  # the input depth's minimum over the current drain window
        self._opened = time.monotonic()  # to tell a client sending too fast from a server stepping too slowly
        # Replies waiting to be sent (_Reply), oldest first; audio as PCM, encoded when sent (see deliver).
        self.outbox: collections.deque = collections.deque()
        self._outbox_ready = asyncio.Event()
        self._reader = self._writer = None
        self._socket, self._send_limit = None, 0  # set by _bound_send_buffers where TCP_INFO says what is unsent
        self.last_audio_samples = 0  # audio in the last message received (what it costs the read budget)
        if not options.raw:
            import sphn  # noqa: PLC0415 - Opus sessions only (sphn's native library): pcm16 ones work without it

            self._pages = OggPageReader(sample_rate, server_options.max_ogg_pages, server_options.max_opus_packets)
            self._reader = sphn.OpusStreamReader(sample_rate)
            self._writer = sphn.OpusStreamWriter(sample_rate)
        if connection is not None:
            self._bound_send_buffers(connection)

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
            import sphn  # noqa: PLC0415 - as in __init__: only Opus sessions get here

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
        new = [pending[i * self.frame_size:(i + 1) * self.frame_size] for i in range(whole)]
        self.stats.frames_in += whole
        self._pending = pending[whole * self.frame_size:].copy()
        with self._frames_lock:
            self.frames.extend(new)
            excess = len(self.frames) - self.limits.input_buffer_frames
            for _ in range(max(0, excess)):
                self.frames.popleft()
            if excess > 0:
                self.stats.dropped_in += excess
        if excess > 0:
            self._log_dropped(excess)
        return None

    def _count_dropped(self, frames: int) -> None:
        with self._frames_lock:
            self.stats.dropped_in += frames
        self._log_dropped(frames)

    def _log_dropped(self, frames: int) -> None:
        self._drop_events += 1
        if worth_logging(self._drop_events):
            # Frames the client sent beyond what real time allows since the session opened: more than the buffer
            # holds, and it is the client; fewer, and the buffer overflowed because the server steps too slowly.
            ahead = self.stats.frames_in - (time.monotonic() - self._opened) * self.sample_rate / self.frame_size
            if ahead > self.limits.input_buffer_frames:
                log.warning("session %d: the client sends faster than real time (%.0f frames ahead), dropped %d "
                            "input frame(s) (%d so far)", self.slot, ahead, frames, self.stats.dropped_in)
            else:
                log.warning("session %d: the server steps slower than real time (late ticks), so its input buffer "
                            "overflowed: dropped %d input frame(s) (%d so far)", self.slot, frames,
                            self.stats.dropped_in)

    def next_frame(self) -> np.ndarray:
        """The frame for this tick (silence when none has arrived); called by the clock's thread."""
        self.stats.steps += 1
        with self._frames_lock:
            drained = self._hold_depth()
            frame = self.frames.popleft() if self.frames else None
            if len(self.frames) > self.limits.input_target_frames:
                self.stats.late_input += 1
        if drained:
            self._log_drained(drained)
        if frame is not None:
            return frame
        self.stats.underruns += 1
        return np.zeros(self.frame_size, dtype=np.float32)

    def _hold_depth(self) -> int:
        """Keep the input backlog near its target; returns how many frames it dropped (called with the buffer's
        lock held). Every frame waiting in the buffer is 80 ms between the user speaking and the model hearing it;
        after a stall (a late tick, a paused process) or with a client whose clock runs fast, the buffer fills
        and, as each tick takes one frame and the client sends one, stays full for good. So the smallest depth
        seen at the ticks of each window is the standing backlog: what stays above the target for the whole window
        is dropped, oldest first; a burst that drains within the window is untouched."""
        depth = len(self.frames)
        self._window_min = depth if self._window_min is None else min(self._window_min, depth)
        self._window_ticks += 1
        if self._window_ticks < self.limits.input_drain_ticks:
            return 0
        standing = self._window_min - self.limits.input_target_frames
        self._window_ticks, self._window_min = 0, None
        if standing <= 0:
            return 0
        for _ in range(standing):
            self.frames.popleft()
        self.stats.dropped_in += standing
        self.stats.drained_in += standing
        return standing

    def _log_drained(self, standing: int) -> None:
        self._drain_events += 1
        if worth_logging(self._drain_events):
            log.info("session %d: its input backlog stayed above %d frames for %d ticks: dropped the %d oldest "
                     "(%d so far), so the model hears the user %d ms sooner", self.slot,
                     self.limits.input_target_frames, self.limits.input_drain_ticks, standing,
                     self.stats.drained_in, standing * 1000 * self.frame_size // self.sample_rate)

    # ----------------------------------------------------------------------------------------------- output
    def deliver(self, audio: np.ndarray, text: Optional[str], at: Optional[float] = None) -> None:
        """Queue the replies of one step: audio first, then text (as Kyutai's server), stamped with the tick's
        time ``at`` (``time.monotonic()``; now by default). The audio stays PCM until its turn to be sent comes: only replies still fresh then are encoded, so
        the Ogg/Opus stream a client decodes has no holes (dropping Ogg pages of one stream would break its page
        sequence and granule positions; dropping PCM before the encoder leaves a valid stream that skips ahead)."""
        now = time.monotonic() if at is None else at
        self._queue(_Reply(now, AUDIO, audio))
        if text:
            self._queue(_Reply(now, TEXT, text))

    def count_expired(self, replies: int) -> None:
        """Replies of ticks the event loop took too long to take (ticker.py): they would have been older than the
        max reply age; counted as stale audio dropped."""
        for _ in range(replies):
            self.stats.stale_audio_dropped += 1
            self._count_dropped_out()

    def post(self, msg: bytes) -> None:
        """Queue a message that is not a tick's reply (a ping's echo, an error notice)."""
        self._queue(_Reply(time.monotonic(), None, msg))

    def _queue(self, reply: "_Reply") -> None:
        self._drop_stale(reply.at)
        if len(self.outbox) >= self.limits.output_queue_messages:
            self._make_room()
        self.outbox.append(reply)
        self._outbox_ready.set()

    def _drop_stale(self, now: float) -> None:
        """Drop the queued audio older than the max reply age (text and notices older than it stay): while a
        send is blocked, what waits behind it is at most that old."""
        kept = []
        while self.outbox and now - self.outbox[0].at > self.limits.reply_max_age:
            reply = self.outbox.popleft()
            if reply.kind == AUDIO:
                self.stats.stale_audio_dropped += 1
                self._count_dropped_out()
            else:
                kept.append(reply)
        self.outbox.extendleft(reversed(kept))

    def _make_room(self) -> None:
        """The outbox is full: two adjacent text pieces become one (the words a client shows are the same, so text
        is never lost; text is small), else its oldest audio is dropped, else its oldest notice."""
        pair = next((i for i in range(len(self.outbox) - 1)
                     if self.outbox[i].kind == TEXT and self.outbox[i + 1].kind == TEXT), None)
        if pair is not None:
            first = self.outbox[pair]
            del self.outbox[pair]
            self.outbox[pair] = _Reply(first.at, TEXT, first.data + self.outbox[pair].data)
            return
        for kind in (AUDIO, None):
            oldest = next((i for i, reply in enumerate(self.outbox) if reply.kind == kind), None)
            if oldest is not None:
                del self.outbox[oldest]
                self._count_dropped_out()
                return

    def _count_dropped_out(self) -> None:
        self.stats.dropped_out += 1
        if worth_logging(self.stats.dropped_out):
            log.warning("session %d: client does not read its replies, dropped %d message(s) (%d audio older than "
                        "%.1f s)", self.slot, self.stats.dropped_out, self.stats.stale_audio_dropped,
                        self.limits.reply_max_age)

    def _encoded(self, reply: "_Reply") -> bytes:
        """The message of a reply, made as it is sent (b"" when the Opus encoder holds it back for its page)."""
        if reply.kind == TEXT:
            return text_message(reply.data)
        if reply.kind != AUDIO:
            return reply.data
        if self.options.raw:
            return message(AUDIO, pcm16_bytes(reply.data))
        pages = self._writer.append_pcm(reply.data)
        return message(AUDIO, pages) if pages else b""

    def _bound_send_buffers(self, connection) -> None:
        """What may sit below the outbox, where nothing can be dropped any more, holds a few replies: websockets'
        write buffer (its high-water mark; past it a send waits) and the kernel's send buffer (SO_SNDBUF, which
        would otherwise grow to megabytes: minutes of Opus). Then a client that stops reading blocks the send
        loop within a few replies, and what is queued meanwhile ages out of the outbox."""
        transport = getattr(connection, "transport", None)
        if transport is None:
            return
        limit = self.limits.send_buffer_frames * (1 + 2 * self.frame_size if self.options.raw else _OPUS_FRAME_BYTES)
        transport.set_write_buffer_limits(high=limit)
        sock = transport.get_extra_info("socket")
        if sock is None:
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, limit // 2)  # Linux doubles it (its bookkeeping)
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, limit)
        except OSError as e:  # not a TCP socket, or a system without the option: the write buffer still bounds
            log.debug("session %d: send buffer not sized (%s)", self.slot, e)
            return
        # Linux checks both only when a send needs a new packet: while the peer's window is closed, sends are
        # appended to the queue's last, unsent packet, up to ~64 KB (minutes of Opus). So the send loop reads
        # the unsent bytes itself (TCP_INFO, Linux) and waits while they are over the limit.
        self._socket, self._send_limit = sock, limit

    def _unsent_bytes(self) -> int:
        """Bytes the kernel holds that it has not sent (the peer's window is closed); 0 where it does not say."""
        if self._socket is None:
            return 0
        try:
            info = self._socket.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 256)
        except OSError:
            self._socket = None
            return 0
        return int.from_bytes(info[_NOTSENT_AT:_NOTSENT_AT + 4], sys.byteorder) if len(info) >= _NOTSENT_AT + 4 else 0

    async def send_loop(self) -> None:
        pings: collections.deque = collections.deque()  # (sent at, pong future), oldest first
        while True:
            while not self.outbox:
                self._outbox_ready.clear()
                await self._outbox_ready.wait()
            await self._wait_while_behind(pings)
            self._drop_stale(time.monotonic())
            if not self.outbox:
                continue
            msg = self._encoded(self.outbox.popleft())
            if msg:
                await self.connection.send(msg)

    async def _wait_while_behind(self, pings: collections.deque) -> None:
        """Wait while the client is behind: the kernel holds unsent bytes over the limit (its window is closed),
        or a WebSocket ping sent more than the max reply age ago has no pong. Every client answers pings (RFC
        6455: browsers, Kyutai's clients, websockets), but only as far as it reads: once its process stalls or
        its library's queue is full, the pongs stop. So a client that stops reading is found within the max age,
        before its own receive buffer (tens of seconds of Opus) takes more; while it is behind, what waits in the
        outbox ages out (``_queue``)."""
        period = self.frame_size / self.sample_rate
        while True:
            now = time.monotonic()
            while pings and pings[0][1].done():
                pings.popleft()
            if not pings or now - pings[-1][0] >= _PING_EVERY * period:
                pong = await self.connection.ping()
                pings.append((now, pong))
            late = pings and now - pings[0][0] > self.limits.reply_max_age
            if not late and self._unsent_bytes() <= self._send_limit:
                return
            await asyncio.sleep(period / 2)


class _Reply:
    """One queued message: when its tick (or notice) came, its kind (AUDIO, TEXT or None: a message already
    made), and its data (PCM samples, text, or the message)."""

    __slots__ = ("at", "kind", "data")

    def __init__(self, at: float, kind: Optional[int], data):
        self.at, self.kind, self.data = at, kind, data
