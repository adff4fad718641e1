"""Kyutai's WebSocket protocol (spec section 4.2) and the raw PCM variant.

Every binary message is ``[kind: u8][payload]``. The server sends 0x00 once when the session starts, then 0x01
audio and 0x02 text (UTF-8 piece); 0x05 carries an error message. Audio is Ogg/Opus 24 kHz mono in Kyutai's mode,
and 16-bit little-endian PCM at 24 kHz (any chunk size) in the raw mode (``/api/chat?format=pcm16``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional
from urllib.parse import parse_qs, urlsplit

import numpy as np

HANDSHAKE, AUDIO, TEXT, CONTROL, METADATA, ERROR, PING, COLORED_TEXT = range(8)
KIND_NAMES = {HANDSHAKE: "handshake", AUDIO: "audio", TEXT: "text", CONTROL: "control", METADATA: "metadata",
              ERROR: "error", PING: "ping", COLORED_TEXT: "colored text"}


def message(kind: int, payload: bytes = b"") -> bytes:
    return bytes([kind]) + payload


def text_message(text: str) -> bytes:
    return message(TEXT, text.encode("utf-8"))


def error_message(text: str) -> bytes:
    return message(ERROR, text.encode("utf-8"))


def pcm16_bytes(pcm: np.ndarray) -> bytes:
    return (np.clip(pcm, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def pcm16_samples(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


@dataclass
class SessionOptions:
    """What a client may ask for in the query string (Kyutai's web client names). Out-of-range values are
    clamped to sane ranges, unparsable ones ignored."""

    raw: bool = False
    temperature: Optional[float] = None
    top_k: Optional[int] = None
    text_temperature: Optional[float] = None
    text_top_k: Optional[int] = None
    seed: Optional[int] = None
    token: Optional[str] = None


TEMPERATURE_RANGE = (0.0, 2.0)
TOP_K_RANGE = (1, 500)


_OGG_HEADER = 27  # "OggS", version, flags, granule (8), serial (4), sequence (4), CRC (4), segment count


def ogg_page_groups(data: bytes, max_pages: int = 16) -> List[bytes]:
    """``data`` cut at Ogg page boundaries into pieces of at most ``max_pages`` whole pages, for a stream decoder
    that fails when one call decodes too much (sphn's reader: past ~5 s, i.e. 62 pages of 80 ms). Where ``data``
    does not start with a whole page (a client may split pages across messages), the rest stays one piece: the
    decoder keeps partial pages between calls."""
    pieces, start, position, pages = [], 0, 0, 0
    while position + _OGG_HEADER <= len(data) and data[position:position + 4] == b"OggS":
        segments = data[position + 26]
        table_end = position + _OGG_HEADER + segments
        if table_end > len(data):
            break
        end = table_end + sum(data[position + _OGG_HEADER:table_end])
        if end > len(data):
            break
        position, pages = end, pages + 1
        if pages == max_pages:
            pieces.append(data[start:position])
            start, pages = position, 0
    if start < len(data):
        pieces.append(data[start:])
    return pieces


def _number(values: Dict[str, list], name: str, cast, low, high):
    raw = values.get(name, [None])[-1]
    if raw is None:
        return None
    try:
        value = cast(float(raw)) if cast is int else cast(raw)
    except (TypeError, ValueError, OverflowError):  # "abc", "inf" -> int, "1e400"
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return min(max(value, low), high)


def parse_query(path: str) -> SessionOptions:
    values = parse_qs(urlsplit(path).query)
    seed = _number(values, "audio_seed", int, 0, 2**62) if "audio_seed" in values else \
        _number(values, "seed", int, 0, 2**62)
    fmt = values.get("format", [""])[-1].lower()
    return SessionOptions(
        raw=fmt in ("pcm16", "raw", "pcm"),
        temperature=_number(values, "audio_temperature", float, *TEMPERATURE_RANGE),
        top_k=_number(values, "audio_topk", int, *TOP_K_RANGE),
        text_temperature=_number(values, "text_temperature", float, *TEMPERATURE_RANGE),
        text_top_k=_number(values, "text_topk", int, *TOP_K_RANGE),
        seed=seed,
        token=values.get("token", [None])[-1],
    )
