"""One conversation on the server: what its client sent (decoded, cut into frames, bounded), what it is owed
(one reply per tick, in a bounded outbox sent from its own task), and its counters."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
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
    OggPage,
    OggPageReader,
    SessionOptions,
    message,
    pcm16_bytes,
    pcm16_samples,
    text_message,
)

log = logging.getLogger(__name__)

_OGG_STREAM_START = b"OggS\x00\x02"  # an Ogg page with the beginning-of-stream flag: the stream's headers


def worth_logging(count: int) -> bool:
    """Repeated events are logged the 1st, 10th and 100th time, then every 1000th (a flood must not flood the
    log too)."""
    return count in (1, 10, 100) or count % 1000 == 0


@dataclass
class SessionStats:
    frames_in: int = 0
    steps: int = 0
    underruns: int = 0  # ticks with no received frame (silence was used)
    dropped_in: int = 0  # received frames dropped: the client sent faster than real time, or the server fell behind
    drained_in: int = 0  # of those, dropped because the input backlog stayed above its target (next_frame)
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
        self._drop_events = self._drain_events = 0
        self._window_ticks, self._window_min = 0, None  # the input depth's minimum over the current drain window
        self._opened = time.monotonic()  # to tell a client sending too fast from a server stepping too slowly
        # Replies waiting to be sent: (message, droppable). The Ogg/Opus stream's first message (its OpusHead and
        # OpusTags pages) is never dropped: without it a client's decoder cannot start.
        self.outbox: collections.deque = collections.deque()
        self._outbox_ready = asyncio.Event()
        self._reader = self._writer = None
        self.last_audio_samples = 0  # audio in the last message received (what it costs the read budget)
        if not options.raw:
            import sphn  # noqa: PLC0415 - Opus sessions only (sphn's native library): pcm16 ones work without it

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
        self.stats.steps += 1
        self._hold_depth()
        if self.frames:
            return self.frames.popleft()
        self.stats.underruns += 1
        return np.zeros(self.frame_size, dtype=np.float32)

    def _hold_depth(self) -> None:
        """Keep the input backlog near its target. Every frame waiting in the buffer is 80 ms between the user
        speaking and the model hearing it; after a stall (a late tick, a paused process) or with a client whose
        clock runs fast, the buffer fills and, as each tick takes one frame and the client sends one, stays full for
        good. So the smallest depth seen at the ticks of each window is the standing backlog: what stays above the
        target for the whole window is dropped, oldest first; a burst that drains within the window is untouched."""
        depth = len(self.frames)
        self._window_min = depth if self._window_min is None else min(self._window_min, depth)
        self._window_ticks += 1
        if self._window_ticks < self.limits.input_drain_ticks:
            return
        standing = self._window_min - self.limits.input_target_frames
        self._window_ticks, self._window_min = 0, None
        if standing > 0:
            for _ in range(standing):
                self.frames.popleft()
            self.stats.dropped_in += standing
            self.stats.drained_in += standing
            self._drain_events += 1
            if worth_logging(self._drain_events):
                log.info("session %d: its input backlog stayed above %d frames for %d ticks: dropped the %d oldest "
                         "(%d so far), so the model hears the user %d ms sooner", self.slot,
                         self.limits.input_target_frames, self.limits.input_drain_ticks, standing,
                         self.stats.drained_in, standing * 1000 * self.frame_size // self.sample_rate)

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
                if worth_logging(self.stats.dropped_out):
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
