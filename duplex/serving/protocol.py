"""Kyutai's WebSocket protocol (docs/kyutai-compat.md §4.2) and the raw PCM variant.

Every binary message is ``[kind: u8][payload]``. The server sends 0x00 once when the session starts, then 0x01
audio and 0x02 text (UTF-8 piece); 0x05 carries an error message. Audio is Ogg/Opus 24 kHz mono in Kyutai's mode,
and 16-bit little-endian PCM at 24 kHz (any chunk size) in the raw mode (``/api/chat?format=pcm16``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union
from urllib.parse import parse_qs, urlsplit

import numpy as np

# The audio the protocol carries, and the frame clock behind it (Mimi's 24 kHz and 12.5 frames a second), here
# without torch so that clients and benchmarks use the same numbers as the engine.
SAMPLE_RATE = 24000  # Hz, mono, both ways
FRAME_SIZE = 1920  # samples in one frame: the server takes one and replies with one per tick
FRAME_RATE = SAMPLE_RATE / FRAME_SIZE  # 12.5 frames (ticks) a second
FRAME_SECONDS = FRAME_SIZE / SAMPLE_RATE  # 0.08 s

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
    """What a client asked for in the query string (Kyutai's web client names). ``sampling``: the sampling
    settings it set, by ``SlotSampling``'s field names (the engine's defaults fill in the rest; this module stays
    torch-free for the client, so it names the fields rather than importing the class). Out-of-range values are
    clamped to sane ranges, unparsable ones ignored."""

    raw: bool = False
    sampling: Dict[str, Union[int, float]] = field(default_factory=dict)
    token: Optional[str] = None
    # NVIDIA's system prompt (PersonaPlex's server and web client): a voice file's name in the server's voice
    # folder (``NATF2.pt``), and a role text (wrapped in <system> tags by the engine); None: none asked for
    voice_prompt: Optional[str] = None
    text_prompt: Optional[str] = None
    # duplex's: the LoRA adapter the session runs, by name (``adapter=NAME``; "none": the base model); None: the
    # server's default (its first adapter)
    adapter: Optional[str] = None


TEMPERATURE_RANGE = (0.0, 2.0)
TOP_K_RANGE = (1, 500)
SEED_RANGE = (0, 2**62)  # a negative seed (NVIDIA's -1) means none: a random one
# query name -> (SlotSampling field, type, allowed range); a new sampling setting is one more line here.
SAMPLING_QUERY = {
    "audio_temperature": ("temperature", float, TEMPERATURE_RANGE),
    "audio_topk": ("top_k", int, TOP_K_RANGE),
    "text_temperature": ("text_temperature", float, TEMPERATURE_RANGE),
    "text_topk": ("text_top_k", int, TOP_K_RANGE),
    # One seed drives a slot's text and audio sampling. NVIDIA's web client sends text_seed and audio_seed (random
    # numbers per conversation), its server and offline runner take seed; Kyutai's client sends audio_seed. Later
    # in this table wins: audio_seed over seed over text_seed.
    "text_seed": ("seed", int, SEED_RANGE),
    "seed": ("seed", int, SEED_RANGE),
    "audio_seed": ("seed", int, SEED_RANGE),
}
MAX_TEXT_PROMPT_CHARS = 2000  # a role text (one token a frame, ~4 characters a token: about 40 s of prompt)


_OGG_HEADER = 27  # "OggS", version, flags, granule (8), serial (4), sequence (4), CRC (4), segment count
# Opus frame sizes by the TOC byte's configuration (RFC 6716 section 3.1), in units of 2.5 ms:
# SILK 10/20/40/60 ms, hybrid 10/20 ms, CELT 2.5/5/10/20 ms.
_OPUS_FRAME_UNITS = [(4, 8, 16, 24)[c % 4] for c in range(12)] + [(4, 8)[c % 2] for c in range(12, 16)] + \
    [(1, 2, 4, 8)[c % 4] for c in range(16, 32)]
_OPUS_MAX_UNITS = 48  # a packet holds at most 120 ms


def opus_packet_samples(packet: bytes, sample_rate: int) -> int:
    """How much audio one Opus packet decodes to, from its TOC byte (and frame count byte): a decoder's output,
    known before decoding. Header packets (OpusHead, OpusTags) hold none; an empty packet means a lost one,
    which the decoder conceals with up to 120 ms, so it counts as 120 ms."""
    if packet[:8] in (b"OpusHead", b"OpusTags"):
        return 0
    if not packet:
        return _OPUS_MAX_UNITS * sample_rate // 400
    toc = packet[0]
    code = toc & 3
    frames = 1 if code == 0 else 2 if code < 3 else (packet[1] & 0x3F if len(packet) > 1 else 0)
    return min(_OPUS_FRAME_UNITS[toc >> 3] * frames, _OPUS_MAX_UNITS) * sample_rate // 400


@dataclass
class OggPage:
    data: bytes
    samples: int  # audio of the Opus packets that start on this page, at the reader's sample rate

    @property
    def is_stream_start(self) -> bool:
        return self.data[5] & 2 != 0


class OggPageReader:
    """Cuts a stream of bytes into whole Ogg pages, however the client split it into messages (a page may span
    several), each with the length of the Opus audio it holds. What a message would decode to is thus known before
    anything is decoded: a server decodes only what it can use, and charges the rest to the client."""

    def __init__(self, sample_rate: int, max_pages: int = 256, max_packets: int = 1024):
        self.sample_rate, self.max_pages, self.max_packets = sample_rate, max_pages, max_packets
        self._partial = b""

    def feed(self, data: bytes) -> "tuple[List[OggPage], Optional[str]]":
        """The whole pages ``data`` completes, and a problem (bytes that are not Ogg, too many pages or packets in
        one message: those are dropped) or None. An incomplete page at the end is kept for the next call."""
        buffer = self._partial + data if self._partial else data
        self._partial = b""
        spans, position, packets, problem = [], 0, 0, None
        while position < len(buffer):
            if buffer[position:position + 4] != b"OggS":
                if len(buffer) - position < 4 and b"OggS".startswith(buffer[position:]):
                    break  # perhaps the start of a page cut short
                problem = "malformed Ogg/Opus audio: bytes that are not an Ogg page were skipped"
                found = buffer.find(b"OggS", position + 1)
                position = len(buffer) if found < 0 else found
                continue
            if len(buffer) - position < _OGG_HEADER:
                break
            segments = buffer[position + 26]
            table_end = position + _OGG_HEADER + segments
            if table_end > len(buffer):
                break
            lacing = buffer[position + _OGG_HEADER:table_end]
            end = table_end + sum(lacing)
            if end > len(buffer):
                break
            packets += segments - lacing.count(255) + (lacing[-1:] == b"\xff")
            if len(spans) == self.max_pages or packets > self.max_packets:
                return [], (f"one message holds more than {self.max_pages} Ogg pages or {self.max_packets} Opus "
                            "packets (send audio as it is recorded); the message was dropped")
            spans.append((position, table_end, end))
            position = end
        self._partial = buffer[position:]  # an incomplete page: shorter than the largest page (65,307 bytes)
        return [OggPage(buffer[p:e], self._samples(buffer, p, t, e)) for p, t, e in spans], problem

    def _samples(self, buffer: bytes, position: int, table_end: int, end: int) -> int:
        continued = buffer[position + 5] & 1  # the first packet began on an earlier page
        samples, start, length = 0, table_end, 0
        for value in buffer[position + _OGG_HEADER:table_end]:
            length += value
            if value < 255:
                if not continued:
                    samples += opus_packet_samples(buffer[start:start + min(length, 8)], self.sample_rate)
                continued, start, length = False, start + length, 0
        if length and not continued:  # a packet that goes on on the next page is counted where it starts
            samples += opus_packet_samples(buffer[start:start + min(length, 8)], self.sample_rate)
        return samples


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
    sampling = {}
    for name, (setting, cast, (low, high)) in SAMPLING_QUERY.items():
        if name in values:
            sampling.pop(setting, None)  # audio_seed given but unparsable: no seed, as Kyutai's server
            if setting == "seed" and _number(values, name, cast, -1, high) == -1:
                continue  # a negative seed: none (NVIDIA's -1, "random"), whatever came before it
            value = _number(values, name, cast, low, high)
            if value is not None:
                sampling[setting] = value
    fmt = values.get("format", [""])[-1].lower()
    voice = values.get("voice_prompt", [""])[-1]
    text = values.get("text_prompt", [""])[-1].strip()
    adapter = values.get("adapter", [""])[-1]
    return SessionOptions(raw=fmt in ("pcm16", "raw", "pcm"), sampling=sampling,
                          token=values.get("token", [None])[-1], voice_prompt=voice or None,
                          text_prompt=text or None, adapter=adapter or None)
