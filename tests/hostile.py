"""Hostile inputs for the server tests: hand-made Ogg pages (valid CRCs) and the Opus decompression bomb."""

from __future__ import annotations

import struct
from typing import List, Sequence

import numpy as np


def _crc_table() -> List[int]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else r << 1
        table.append(r & 0xFFFFFFFF)
    return table


_CRC = _crc_table()


def ogg_crc(data: bytes) -> int:
    """The Ogg page checksum (CRC-32, polynomial 0x04C11DB7, no reflection, initial value 0)."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC[((crc >> 24) & 0xFF) ^ byte]
    return crc


def ogg_page(packets: Sequence[bytes], serial: int, sequence: int, granule: int = 0, flags: int = 0) -> bytes:
    """One Ogg page holding whole ``packets`` (each under 255 bytes here), with a valid checksum."""
    lacing = bytes(len(p) for p in packets)
    assert all(len(p) < 255 for p in packets)
    header = b"OggS" + struct.pack("<BBqIIIB", 0, flags, granule, serial, sequence, 0, len(lacing)) + lacing
    page = header + b"".join(packets)
    return page[:22] + struct.pack("<I", ogg_crc(page)) + page[26:]


OPUS_HEAD = b"OpusHead" + struct.pack("<BBHIhB", 1, 1, 312, 24000, 0, 0)
OPUS_TAGS = b"OpusTags" + struct.pack("<I", 6) + b"hostil" + struct.pack("<I", 0)
# Code 3 (several frames), CELT 20 ms (configuration 19), a frame-count byte of 6, and no frame data: six lost
# frames, which a decoder conceals with 120 ms of audio, from 2 bytes.
CONCEALED_120_MS = bytes([19 << 3 | 3, 6])


def opus_headers(serial: int = 7) -> bytes:
    """The stream's first two pages: OpusHead (beginning of stream) and OpusTags."""
    return ogg_page([OPUS_HEAD], serial, 0, flags=2) + ogg_page([OPUS_TAGS], serial, 1)


def opus_bomb(pages: int, serial: int = 7, first_sequence: int = 2) -> bytes:
    """``pages`` audio pages of two 2-byte packets each: 240 ms of decoded audio a page from 30 bytes."""
    out = []
    for i in range(pages):
        granule = (i + 1) * 2 * 120 * 48  # 48 kHz samples, as Ogg Opus counts them
        out.append(ogg_page([CONCEALED_120_MS, CONCEALED_120_MS], serial, first_sequence + i, granule))
    return b"".join(out)


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 24000)) / 24000
    return (0.3 * np.sin(2 * np.pi * 180 * t) + 0.02 * rng.standard_normal(t.shape)).astype(np.float32)
