"""A Python client for the voice server (``duplex client``): an audio file in, a time-synchronous reply file out.

It streams the input in real time, one 80 ms frame per message, and writes what the server says with the same
length as the input, frame k of the output being the reply the server produced at the tick that consumed frame
k (within one frame, the network delay on the way in). That is the format offline turn-taking evaluations use.
Kyutai's Ogg/Opus mode by default, raw PCM16 with ``raw=True``.
"""

from __future__ import annotations

import asyncio
import collections
import os
import ssl
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ..errors import ClientError, SoundDeviceError
from .protocol import (
    AUDIO,
    ERROR,
    FRAME_SECONDS,
    FRAME_SIZE,
    HANDSHAKE,
    SAMPLE_RATE,
    TEXT,
    message,
    pcm16_bytes,
    pcm16_samples,
)


@dataclass
class ClientResult:
    """What came back. ``converse`` fills it as replies arrive, so a caller holding it keeps what had arrived
    when the session ended early (the server closed, Ctrl-C): ``finish`` makes ``audio`` of it."""

    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    chunks: List[np.ndarray] = field(default_factory=list)  # received audio, in order
    text: List[str] = field(default_factory=list)
    audio_messages: int = 0
    errors: List[str] = field(default_factory=list)
    complete: bool = False  # a reply for the whole input arrived
    seconds: float = 0.0  # connection to the last reply
    stream_seconds: float = 0.0  # handshake to the last reply
    reply_times: List[float] = field(default_factory=list)  # perf_counter() of each audio message
    started: float = 0.0  # perf_counter() at the handshake: input frame k is sent at started + k * 80 ms
    sent_samples: int = 0  # of the input, handed to the connection so far (all of it unless cut short)
    interrupted: bool = False  # Ctrl-C stopped it (``run_conversation``): the reply is cut there

    @property
    def sent_seconds(self) -> float:
        return self.sent_samples / SAMPLE_RATE

    def finish(self, samples: int) -> "ClientResult":
        """``audio``: what was received, cut or padded with silence to ``samples`` (the input's length)."""
        audio = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)
        self.audio = np.pad(audio, (0, max(0, samples - len(audio))))[:samples]
        return self

    def late_replies(self, tolerance: float = FRAME_SECONDS) -> "tuple[int, float]":
        """(replies later than ``tolerance`` s behind the pace the first reply set, the largest lateness in s):
        a reply per 80 ms frame is due 80 ms after the one before."""
        t = self.reply_times
        behind = [t[k] - (t[0] + k * FRAME_SECONDS) for k in range(len(t))]
        late = [b for b in behind if b > tolerance]
        return len(late), max(behind, default=0.0)

    def summary(self) -> str:
        """One line on what was sent and received, e.g. '2.40 of 3.00 s sent, 30 audio messages received, 2 late
        by more than 80 ms (at most 95 ms)' (after ``finish``: the input's length is the reply's)."""
        late, worst = self.late_replies()
        return (f"{self.sent_seconds:.2f} of {len(self.audio) / SAMPLE_RATE:.2f} s sent, {self.audio_messages} audio "
                "messages received" + (f", {late} late by more than 80 ms (at most {1000 * worst:.0f} ms)" if late
                                       else ""))

    def steady_rate(self, skip: int = 10) -> float:
        """Audio messages per second after the first ``skip`` (the sustained rate)."""
        t = self.reply_times
        return (len(t) - 1 - skip) / (t[-1] - t[skip]) if len(t) > skip + 2 else 0.0


def chat_url(url: str, token: Optional[str] = None, raw: bool = False, **params) -> str:
    """Normalise a server address to its /api/chat WebSocket URL (http -> ws, https -> wss)."""
    if "://" not in url:
        url = "ws://" + url
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/")
    if not path.endswith("/api/chat"):
        path += "/api/chat"
    query = dict(parse_qsl(parts.query))
    if token:
        query["token"] = token
    if raw:
        query["format"] = "pcm16"
    query.update({k: str(v) for k, v in params.items() if v is not None})
    return urlunsplit((scheme, parts.netloc, path, urlencode(query), ""))


async def _connect(url: str, token: Optional[str], raw: bool):
    """The open WebSocket connection. Every way it can fail is a ClientError that says what happened: an HTTP
    refusal (a wrong token: 401, a foreign origin: 403), a TLS handshake that fails (a ``wss://`` address of a
    server without TLS), no server at all."""
    address = chat_url(url, token=token, raw=raw)
    try:
        return await connect(address, max_size=None, compression=None)
    except InvalidHandshake as e:
        raise ClientError(f"the server refused the session: {_refusal(e)}") from None
    except (ssl.SSLError, ConnectionResetError, EOFError) as e:
        if urlsplit(address).scheme == "wss":
            raise ClientError(tls_failure(address, e)) from None
        raise ClientError(f"cannot reach {url}: {_reason(e)}") from None
    except (OSError, asyncio.TimeoutError) as e:
        raise ClientError(f"cannot reach {url}: {_reason(e)}") from None


def _reason(error: BaseException) -> str:
    """An OS error in the system's words ("Connection refused"), else its message, else its class name (a bare
    reset)."""
    number = getattr(error, "errno", None)
    return (os.strerror(number) if number else None) or str(error) or type(error).__name__


def tls_failure(address: str, error: BaseException) -> str:
    """Why a ``wss://`` connection failed in its TLS handshake, and the likely fix. A server without TLS answers
    the TLS greeting with an HTTP error and closes, which reaches the client as a reset with no reason at all."""
    parts = urlsplit(address)
    plain = urlunsplit(("ws", parts.netloc, "", "", ""))
    detail = getattr(error, "reason", None) or str(error) or "the server closed the connection"
    return (f"TLS handshake with {parts.netloc} failed ({detail}): is the server running without TLS (no "
            f"certificate)? try {plain}")


def _refusal(error: Exception) -> ClientError:
    if isinstance(error, InvalidStatus):
        status = error.response.status_code
        body = error.response.body.decode("utf-8", "replace").strip() if error.response.body else ""
        return ClientError(f"HTTP {status}" + (f": {body}" if body else ""))
    if isinstance(error, ConnectionClosed):
        reason = error.rcvd.reason if error.rcvd is not None and error.rcvd.reason else "no reason given"
        return ClientError(f"the server closed the connection ({reason})")
    return ClientError(f"{type(error).__name__}: {error}")


async def _await_handshake(ws, timeout: float, on_notice: Optional[Callable[[str], None]]) -> None:
    """Read until the handshake. Error messages before it are notices (a busy server tells a waiting client its
    place in the queue); once queued, the wait has no time limit. A close before it is a ClientError."""
    last_notice = None
    while True:
        try:
            data = await (ws.recv() if last_notice else asyncio.wait_for(ws.recv(), timeout))
        except ConnectionClosed as e:
            raise ClientError(f"the server refused the session: {last_notice or _refusal(e)}") from None
        except asyncio.TimeoutError:
            raise ClientError(f"no handshake from the server within {timeout:g} s") from None
        if isinstance(data, bytes) and data[:1] == bytes([HANDSHAKE]):
            return
        if isinstance(data, bytes) and data[:1] == bytes([ERROR]):
            last_notice = data[1:].decode("utf-8", "replace")
            if on_notice:
                on_notice(last_notice)
            continue
        raise ClientError(f"not a voice server: expected the handshake (0x00), got {data[:16]!r}")


async def converse(url: str, pcm: np.ndarray, raw: bool = False, token: Optional[str] = None,
                   on_text: Optional[Callable[[str], None]] = None, realtime: bool = True,
                   handshake_timeout: float = 30.0, result: Optional[ClientResult] = None,
                   on_notice: Optional[Callable[[str], None]] = None,
                   on_progress: Optional[Callable[[float], None]] = None) -> ClientResult:
    """Send ``pcm`` (float32 mono 24 kHz) and collect the replies for the same duration.

    ``on_progress(seconds)``: once when the session starts (0.0), then after every second of reply audio.

    Refusals (HTTP errors, a full server) raise ClientError. If the server ends the session part-way, what
    arrived is returned with the reason in ``errors``. Pass ``result`` to keep what arrived if this coroutine
    is cancelled (Ctrl-C). ``on_notice``: messages before the handshake, e.g. the place in the queue."""
    frames = np.pad(pcm, (0, (-len(pcm)) % FRAME_SIZE)).reshape(-1, FRAME_SIZE).astype(np.float32)
    result = result if result is not None else ClientResult()
    received = result.chunks
    reader = writer = None
    if not raw:
        import sphn  # noqa: PLC0415 - Opus only (sphn's native library): the pcm16 mode works without it

        reader, writer = sphn.OpusStreamReader(SAMPLE_RATE), sphn.OpusStreamWriter(SAMPLE_RATE)
    start = time.perf_counter()
    async with await _connect(url, token, raw) as ws:
        await _await_handshake(ws, handshake_timeout, on_notice)
        t0 = result.started = time.perf_counter()
        if on_progress:
            on_progress(0.0)
        reported = 0

        async def send():
            for i, frame in enumerate(frames):
                payload = pcm16_bytes(frame) if raw else writer.append_pcm(frame)
                if payload:
                    await ws.send(message(AUDIO, payload))
                result.sent_samples = min(len(pcm), (i + 1) * FRAME_SIZE)
                if realtime:
                    await asyncio.sleep(max(0.0, t0 + (i + 1) * FRAME_SIZE / SAMPLE_RATE - time.perf_counter()))

        sender = asyncio.create_task(send())
        total = len(frames) * FRAME_SIZE
        try:
            while sum(len(r) for r in received) < total:
                timeout = 5.0 if sender.done() else 60.0
                try:
                    data = await asyncio.wait_for(ws.recv(), timeout)
                except ConnectionClosed as e:
                    result.errors.append(f"the session ended early: {_refusal(e)}")
                    break
                except asyncio.TimeoutError:
                    result.errors.append(f"the server sent nothing for {timeout:g} s; gave up waiting")
                    break
                if not isinstance(data, bytes) or not data:
                    continue
                kind, payload = data[0], data[1:]
                if kind == AUDIO:
                    samples = pcm16_samples(payload) if raw else reader.append_bytes(payload)
                    if samples is not None and len(samples):
                        received.append(np.asarray(samples, np.float32).reshape(-1))
                    result.audio_messages += 1
                    result.reply_times.append(time.perf_counter())
                    seconds = sum(len(r) for r in received) // SAMPLE_RATE
                    if on_progress and seconds > reported:
                        reported = seconds
                        on_progress(float(seconds))
                elif kind == TEXT:
                    piece = payload.decode("utf-8", "replace")
                    result.text.append(piece)
                    if on_text:
                        on_text(piece)
                elif kind == ERROR:
                    result.errors.append(payload.decode("utf-8", "replace"))
            result.complete = sum(len(r) for r in received) >= total
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)  # a send that failed as the server left
    result.finish(len(pcm))
    result.seconds = time.perf_counter() - start
    result.stream_seconds = time.perf_counter() - t0
    return result


def run_conversation(url: str, pcm: np.ndarray, **options) -> ClientResult:
    """``converse`` to the end, or until Ctrl-C: then what had arrived, as long as the input, marked
    ``interrupted`` with the reason in ``errors``, so the caller can still write it (blocking; ``options`` are
    ``converse``'s)."""
    result = options.pop("result", None) or ClientResult()
    try:
        asyncio.run(converse(url, pcm, result=result, **options))
    except KeyboardInterrupt:
        result.interrupted = True
        result.finish(len(pcm))
        result.errors.append("interrupted (Ctrl-C): the reply is cut there")
    return result


@dataclass
class LiveStats:
    sent: int = 0
    received: int = 0
    underruns: int = 0  # speaker blocks with no reply ready (silence played)
    dropped: int = 0  # microphone blocks dropped because sending fell behind (> 2 s waiting)
    text: List[str] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)  # what the server said went wrong, and how it ended

    def summary(self) -> str:
        """One line, e.g. '120 frames sent, 118 received, 3 underruns'."""
        return (f"{self.sent} frames sent, {self.received} received, {self.underruns} underruns"
                + (f", {self.dropped} microphone blocks dropped" if self.dropped else ""))


async def talk(url: str, raw: bool = False, token: Optional[str] = None, seconds: Optional[float] = None,
               on_text: Optional[Callable[[str], None]] = None, stream_factory=None, input_device=None,
               output_device=None, max_playback_frames: int = 6,
               on_notice: Optional[Callable[[str], None]] = None) -> LiveStats:
    """Microphone <-> speaker through the server, until ``seconds`` pass, the server closes, or Ctrl-C.

    The sound callback only moves 80 ms blocks: captured blocks go to the sender, replies wait in a short
    playback queue (oldest dropped beyond ``max_playback_frames``; silence when empty)."""
    loop = asyncio.get_running_loop()
    stats = LiveStats()
    captured: asyncio.Queue = asyncio.Queue()
    playback: collections.deque = collections.deque(maxlen=max_playback_frames)

    def capture(block: np.ndarray) -> None:
        if captured.qsize() >= 25:  # sending fell 2 s behind (a stalled network): keep the newest audio
            captured.get_nowait()
            stats.dropped += 1
        captured.put_nowait(block)

    def callback(indata, outdata, frames, time_info, status):
        loop.call_soon_threadsafe(capture, np.array(indata[:, 0], dtype=np.float32))
        try:
            outdata[:, 0] = playback.popleft()
        except IndexError:
            outdata[:, 0] = 0.0
            stats.underruns += 1

    if stream_factory is None:
        from .mic import import_sounddevice  # noqa: PLC0415 - live mode only; sounddevice (PortAudio) is optional

        sd = import_sounddevice()

        def stream_factory(cb):
            return sd.Stream(samplerate=SAMPLE_RATE, blocksize=FRAME_SIZE, channels=1, dtype="float32",
                             device=(input_device, output_device), callback=cb)

    try:  # the device is opened before connecting: a missing one must not take a server slot
        stream = stream_factory(callback)
    except Exception as e:  # PortAudio's errors (no device, unsupported rate) are not RuntimeErrors
        raise SoundDeviceError(f"cannot open the sound device at {SAMPLE_RATE} Hz mono ({e})") from None
    reader = writer = None
    if not raw:
        import sphn  # noqa: PLC0415 - Opus only (sphn's native library): the pcm16 mode works without it

        reader, writer = sphn.OpusStreamReader(SAMPLE_RATE), sphn.OpusStreamWriter(SAMPLE_RATE)
    async with await _connect(url, token, raw) as ws:
        await _await_handshake(ws, 30.0, on_notice)

        async def send():
            while True:
                frame = await captured.get()
                payload = pcm16_bytes(frame) if raw else writer.append_pcm(frame)
                if payload:
                    await ws.send(message(AUDIO, payload))
                    stats.sent += 1

        async def receive():
            try:
                await receive_all()
            except ConnectionClosed as e:
                stats.errors.append(f"the session ended: {_refusal(e)}")

        async def receive_all():
            pending = np.zeros(0, np.float32)
            async for data in ws:
                if not isinstance(data, bytes) or not data:
                    continue
                if data[0] == ERROR:
                    stats.errors.append(data[1:].decode("utf-8", "replace"))
                    continue
                if data[0] == AUDIO:
                    samples = pcm16_samples(data[1:]) if raw else reader.append_bytes(data[1:])
                    if samples is None:
                        continue
                    pending = np.concatenate([pending, np.asarray(samples, np.float32).reshape(-1)])
                    while len(pending) >= FRAME_SIZE:
                        playback.append(pending[:FRAME_SIZE])
                        pending = pending[FRAME_SIZE:]
                        stats.received += 1
                elif data[0] == TEXT:
                    piece = data[1:].decode("utf-8", "replace")
                    stats.text.append(piece)
                    if on_text:
                        on_text(piece)

        with stream:
            tasks = [asyncio.create_task(send()), asyncio.create_task(receive())]
            try:
                await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    return stats
