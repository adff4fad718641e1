"""A Python client for the voice server (``duplex client``): an audio file in, a time-synchronous reply file out.

It streams the input in real time, one 80 ms frame per message, and writes what the server says with the same
length as the input, frame k of the output being the reply the server produced at the tick that consumed frame
k (within one frame, the network delay on the way in). That is the format offline turn-taking evaluations use.
Kyutai's Ogg/Opus mode by default, raw PCM16 with ``raw=True``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional
from urllib.parse import urlencode, urlsplit, urlunsplit, parse_qsl

import numpy as np

from .protocol import AUDIO, ERROR, HANDSHAKE, TEXT, message, pcm16_bytes, pcm16_samples

FRAME, RATE = 1920, 24000


class ClientError(RuntimeError):
    """The server refused or ended the session (its message is included)."""


@dataclass
class ClientResult:
    audio: np.ndarray
    text: List[str] = field(default_factory=list)
    audio_messages: int = 0
    errors: List[str] = field(default_factory=list)
    seconds: float = 0.0  # connection to the last reply
    stream_seconds: float = 0.0  # handshake to the last reply
    reply_times: List[float] = field(default_factory=list)  # perf_counter() of each audio message

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


async def converse(url: str, pcm: np.ndarray, raw: bool = False, token: Optional[str] = None,
                   on_text: Optional[Callable[[str], None]] = None, realtime: bool = True,
                   handshake_timeout: float = 30.0) -> ClientResult:
    """Send ``pcm`` (float32 mono 24 kHz) and collect the replies for the same duration."""
    from websockets.asyncio.client import connect

    frames = np.pad(pcm, (0, (-len(pcm)) % FRAME)).reshape(-1, FRAME).astype(np.float32)
    result = ClientResult(audio=np.zeros(0, np.float32))
    received: List[np.ndarray] = []
    reader = writer = None
    if not raw:
        import sphn

        reader, writer = sphn.OpusStreamReader(RATE), sphn.OpusStreamWriter(RATE)
    start = time.perf_counter()
    async with connect(chat_url(url, token=token, raw=raw), max_size=None, compression=None) as ws:
        first = await asyncio.wait_for(ws.recv(), handshake_timeout)
        if isinstance(first, bytes) and first[:1] == bytes([ERROR]):
            raise ClientError(first[1:].decode("utf-8", "replace"))
        if not (isinstance(first, bytes) and first[:1] == bytes([HANDSHAKE])):
            raise ClientError(f"expected the handshake (0x00), got {first[:16]!r}")
        t0 = time.perf_counter()

        async def send():
            for i, frame in enumerate(frames):
                payload = pcm16_bytes(frame) if raw else writer.append_pcm(frame)
                if payload:
                    await ws.send(message(AUDIO, payload))
                if realtime:
                    await asyncio.sleep(max(0.0, t0 + (i + 1) * FRAME / RATE - time.perf_counter()))

        sender = asyncio.create_task(send())
        total = len(frames) * FRAME
        try:
            while sum(len(r) for r in received) < total:
                timeout = 5.0 if sender.done() else 60.0
                data = await asyncio.wait_for(ws.recv(), timeout)
                if not isinstance(data, bytes) or not data:
                    continue
                kind, payload = data[0], data[1:]
                if kind == AUDIO:
                    samples = pcm16_samples(payload) if raw else reader.append_bytes(payload)
                    if samples is not None and len(samples):
                        received.append(np.asarray(samples, np.float32).reshape(-1))
                    result.audio_messages += 1
                    result.reply_times.append(time.perf_counter())
                elif kind == TEXT:
                    piece = payload.decode("utf-8", "replace")
                    result.text.append(piece)
                    if on_text:
                        on_text(piece)
                elif kind == ERROR:
                    result.errors.append(payload.decode("utf-8", "replace"))
        finally:
            sender.cancel()
    audio = np.concatenate(received) if received else np.zeros(0, np.float32)
    result.audio = np.pad(audio, (0, max(0, len(pcm) - len(audio))))[: len(pcm)]
    result.seconds = time.perf_counter() - start
    result.stream_seconds = time.perf_counter() - t0
    return result
