"""``duplex bench serve --fuzz N``: hostile traffic against a voice server, family by family, with a health check
after each: the server answers /api/stats, a well-behaved client gets one reply per frame it sent, and the
sessions go back to none. Seeded (the same seed sends the same messages), bounded in count and time, loopback
or the server you point it at only.

The families are what a hostile or broken client sends: malformed messages (empty, unknown kinds, text frames,
garbage and damaged Ogg/Opus, odd-length PCM), oversized messages, Opus decompression bombs, floods of small
messages, connection churn (connect and leave, abort mid-stream, never read) and HTTP-level garbage (raw bytes,
bad upgrades, half-open sockets).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import resource
import struct
from typing import Callable, Dict, List, Optional
from urllib.parse import urlsplit

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from ..errors import UsageError
from ..serving.client import converse
from ..serving.protocol import AUDIO, CONTROL, FRAME_SIZE, HANDSHAKE, METADATA, PING, SAMPLE_RATE, message
from .serve import UNLIMITED_RATES, client_signal, fetch_stats, serve_here, where

SLOTS = 2  # a server fuzzed here needs two: one for a hostile client, one for the health check's well-behaved one
FAMILIES = ("malformed", "oversized", "bomb", "flood", "churn", "queue", "http")


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
    """The Ogg page checksum (CRC-32, polynomial 0x04C11DB7, not reflected, initial value 0)."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC[((crc >> 24) & 0xFF) ^ byte]
    return crc


def ogg_page(packets: List[bytes], serial: int, sequence: int, granule: int = 0, flags: int = 0) -> bytes:
    """One Ogg page of whole ``packets`` (each under 255 bytes), with a valid checksum."""
    if any(len(p) >= 255 for p in packets):
        raise ValueError("ogg_page takes packets of fewer than 255 bytes")
    lacing = bytes(len(p) for p in packets)
    page = (b"OggS" + struct.pack("<BBqIIIB", 0, flags, granule, serial, sequence, 0, len(lacing)) + lacing
            + b"".join(packets))
    return page[:22] + struct.pack("<I", ogg_crc(page)) + page[26:]


def opus_headers(serial: int = 7) -> bytes:
    """An Ogg Opus stream's first two pages: OpusHead (beginning of stream) and OpusTags."""
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, 1, 312, SAMPLE_RATE, 0, 0)
    tags = b"OpusTags" + struct.pack("<I", 4) + b"fuzz" + struct.pack("<I", 0)
    return ogg_page([head], serial, 0, flags=2) + ogg_page([tags], serial, 1)


# Code 3 (several frames), CELT 20 ms (configuration 19), a frame-count byte of 6 and no frame data: six lost
# frames, which a decoder conceals with 120 ms of audio, from 2 bytes.
CONCEALED_120_MS = bytes([19 << 3 | 3, 6])


def opus_bomb(pages: int, serial: int = 7, first_sequence: int = 2) -> bytes:
    """``pages`` audio pages of two 2-byte packets each (put opus_headers before the first): 240 ms of decoded
    audio a page from 30 bytes."""
    return b"".join(ogg_page([CONCEALED_120_MS, CONCEALED_120_MS], serial, first_sequence + i, (i + 1) * 11520)
                    for i in range(pages))


def _malformed(rng: random.Random, raw: bool) -> object:
    pick = rng.randrange(9)
    if pick == 0:
        return b""
    if pick == 1:
        return bytes([rng.randrange(8, 256)]) + rng.randbytes(rng.randrange(0, 64))  # unknown kind
    if pick == 2:
        return "a text frame " * rng.randrange(1, 20)
    if pick == 3:
        return message(rng.choice([CONTROL, METADATA, PING]), rng.randbytes(rng.randrange(0, 200)))
    if pick == 4:
        return message(AUDIO, rng.randbytes(rng.randrange(1, 3000)))  # garbage audio
    if pick == 5:
        page = opus_headers(serial=rng.randrange(1 << 30))
        return message(AUDIO, page[:rng.randrange(1, len(page))])  # truncated pages
    if pick == 6:
        page = bytearray(opus_headers(serial=rng.randrange(1 << 30)) + opus_bomb(2))
        for _ in range(4):
            page[rng.randrange(len(page))] = rng.randrange(256)  # damaged fields
        return message(AUDIO, bytes(page))
    if pick == 7:
        return message(AUDIO, rng.randbytes(rng.randrange(1, 400) * 2 + 1))  # odd-length PCM
    return message(AUDIO, (np.full(rng.randrange(1, 2000), 0x7FC0, "<u2")).tobytes())  # NaN's bit pattern


class Refused(Exception):
    """The server said it is full (every slot and waiting place taken): an outcome, not a failure."""


async def _chat(url: str, raw: bool):
    ws = await connect(url + ("/api/chat?format=pcm16" if raw else "/api/chat"), max_size=None,
                       open_timeout=10, close_timeout=2)
    while (first := await asyncio.wait_for(ws.recv(), 30)) != message(HANDSHAKE):
        if b"in the queue" in first:
            continue  # queued: the handshake comes when a slot frees
        await ws.close()
        if b"server full" in first:
            raise Refused()
        raise RuntimeError(f"expected the handshake, got {first[:16]!r}")
    return ws


async def _drain(ws) -> Optional[int]:
    """Read until the connection closes; its close code (the server's), or None if it never sent one."""
    try:
        async for _ in ws:
            pass
    except ConnectionClosed:
        pass
    rcvd = ws.protocol.close_rcvd
    return rcvd.code if rcvd is not None else None


async def _family(name: str, url: str, rng: random.Random, budget: int, max_message_bytes: int) -> Dict:
    """Send about ``budget`` messages of one family; returns counts of what was sent and how connections ended."""
    closes: collections.Counter = collections.Counter()
    sent = connections = 0

    async def session(raw: bool, messages: List[object], close: bool = True):
        nonlocal sent, connections
        connections += 1
        try:
            ws = await _chat(url, raw)
        except Refused:
            closes["refused"] += 1
            return
        reader = asyncio.create_task(_drain(ws))
        try:
            for m in messages:
                await asyncio.wait_for(ws.send(m), 30)
                sent += 1
            if close:
                await ws.close()
            closes[await asyncio.wait_for(reader, 30)] += 1
        except ConnectionClosed:
            closes[await asyncio.wait_for(reader, 30)] += 1
        except asyncio.TimeoutError:  # the server stopped reading this flood for good (TCP pushes back)
            closes["gave up: no progress for 30 s"] += 1
        finally:
            ws.transport.abort()
            reader.cancel()

    if name == "malformed":
        half = budget // 2
        await asyncio.gather(session(False, [_malformed(rng, False) for _ in range(half)]),
                             session(True, [_malformed(rng, True) for _ in range(budget - half)]))
    elif name == "oversized":
        for _ in range(3):
            await session(rng.random() < 0.5, [message(AUDIO, bytes(max_message_bytes + 1))])
    elif name == "bomb":
        # 60 s of audio in 7.5 KB: over the read budget at once; then a message of far too many pages
        await session(False, [message(AUDIO, opus_headers() + opus_bomb(250))])
        await session(False, [message(AUDIO, opus_headers() + opus_bomb(max_message_bytes // 40))])
    elif name == "flood":
        await session(True, [message(PING, b"x") if rng.random() < 0.5 else message(CONTROL, b"\x01")
                             for _ in range(budget)])
    elif name == "churn":
        for i in range(budget // 10):
            kind = i % 4
            if kind == 0:  # in and out
                await session(rng.random() < 0.5, [])
            elif kind == 1:  # dropped mid-stream
                connections += 1
                try:
                    ws = await _chat(url, True)
                except Refused:  # the slots of the connections dropped just before are not free yet
                    closes["refused"] += 1
                    continue
                await ws.send(message(AUDIO, bytes(3840)))
                sent += 1
                ws.transport.abort()
                closes["aborted"] += 1
            elif kind == 2:  # never reads a reply, then goes
                ws = await connect(url + "/api/chat?format=pcm16", max_queue=1, open_timeout=10)
                connections += 1
                await asyncio.sleep(0.05)
                ws.transport.abort()
                closes["aborted"] += 1
            else:  # leaves before the handshake comes
                ws = await connect(url + "/api/chat", open_timeout=10)
                connections += 1
                await ws.close()
                closes["left early"] += 1
    elif name == "queue":  # every slot taken, a waiter that never reads, others joining and leaving
        stats = await asyncio.get_running_loop().run_in_executor(None, fetch_stats, url)
        holders = [await _chat(url, True) for _ in range(stats["slots"] - stats["sessions"])]
        connections += len(holders)
        stalled = await connect(url + "/api/chat?format=pcm16", max_queue=1, open_timeout=10)
        connections += 1
        for _ in range(budget // 10):
            ws = await connect(url + "/api/chat", open_timeout=10)
            connections += 1
            notice = await asyncio.wait_for(ws.recv(), 10)  # a queue position or "server full", at once
            closes["queued" if b"in the queue" in notice else "refused" if b"server full" in notice else
                   "other"] += 1
            await ws.close()
        stalled.transport.abort()
        for ws in holders:
            await ws.close()
    elif name == "http":
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "wss" else 80)
        requests = [rng.randbytes(rng.randrange(1, 300)),
                    b"GET /api/chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                    b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n",
                    b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"POST /api/stats HTTP/1.1\r\nContent-Length: 99999\r\n\r\nxx",
                    b"GET / HTTP/1.1\r\n",  # never finished
                    b""]  # half-open: connect, send nothing, leave
        for i in range(max(len(requests), budget // 20)):
            reader, writer = await asyncio.open_connection(host, port)
            connections += 1
            writer.write(requests[i % len(requests)])
            sent += 1
            with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
                await asyncio.wait_for(reader.read(4096), 0.2)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            closes["tcp"] += 1
    else:
        raise ValueError(f"unknown fuzz family {name!r}; one of {', '.join(FAMILIES)}")
    return {"family": name, "messages": sent, "connections": connections,
            "closes": {str(k): v for k, v in sorted(closes.items(), key=str)}}


async def health_check(url: str, token: Optional[str] = None, seconds: float = 1.0) -> List[str]:
    """What must hold after any traffic: /api/stats answers, no session or waiting client is left within 10 s,
    then a well-behaved client gets one reply per frame it sent, and leaves no session behind. Returns the
    problems found (none: healthy)."""
    loop = asyncio.get_running_loop()

    async def settled() -> List[str]:
        stats = {}
        for _ in range(100):
            stats = await loop.run_in_executor(None, fetch_stats, url, token)
            if stats["sessions"] == 0 and stats["waiting"] == 0:
                return []
            await asyncio.sleep(0.1)
        return [f"{stats['sessions']} sessions and {stats['waiting']} waiting clients left after 10 s"]

    try:
        problems = await settled()  # what the traffic opened is closed (the server may take a moment)
    except Exception as e:
        return [f"/api/stats does not answer ({type(e).__name__}: {e})"]
    if problems:
        return problems
    pcm = client_signal(0, seconds)
    frames = -(-len(pcm) // FRAME_SIZE)
    try:
        result = await asyncio.wait_for(converse(url, pcm, raw=True, token=token), seconds + 30)
        if result.audio_messages != frames or not result.complete or result.errors:
            problems.append(f"a well-behaved client got {result.audio_messages} replies for {frames} frames"
                            + (f" ({'; '.join(result.errors)})" if result.errors else ""))
    except Exception as e:
        problems.append(f"a well-behaved client failed ({type(e).__name__}: {e})")
    return problems + await settled()


async def fuzz(url: str, messages: int = 3000, seed: int = 0, families=FAMILIES, token: Optional[str] = None,
               max_message_bytes: int = 1 << 20, log_problems: Optional[Callable[[], List[str]]] = None,
               progress: Optional[Callable[[str], None]] = None) -> Dict:
    """Each family gets an equal share of ``messages``, then the health check (and ``log_problems()``: what the
    server logged that it should not have, when it runs in this process)."""
    if token:
        raise UsageError("fuzzing a server that requires a token is not supported: its refusals are all one sees")
    rng = random.Random(seed)
    share = max(10, messages // len(families))
    results = []
    for name in families:
        try:
            result = await _family(name, url, rng, share, max_message_bytes)
        except Exception as e:  # the family itself broke (the server refused or vanished): a finding
            result = {"family": name, "messages": 0, "connections": 0, "closes": {},
                      "error": f"{type(e).__name__}: {e}"}
        result["problems"] = await health_check(url, token) + (log_problems() if log_problems else [])
        if "error" in result:
            result["problems"].insert(0, f"the family could not run: {result['error']}")
        results.append(result)
        progress and progress(f"{name}: {result['messages']} messages, {result['connections']} connections, "
                              + ("healthy" if not result["problems"] else "; ".join(result["problems"])))
    return {"seed": seed, "families": results, "healthy": all(not r["problems"] for r in results)}


def fuzz_server(engine=None, url: Optional[str] = None, messages: int = 3000, seed: int = 0,
                token: Optional[str] = None, progress: Optional[Callable[[str], None]] = None) -> Dict:
    """``fuzz`` against ``url`` (``token``: its token), or against a VoiceServer on ``engine`` started here on a
    free loopback port (one waiting client at most, so that the jammed-queue family finds the queue's end). A server
    started here is also watched for what it logs (``LogWatcher``), and the report gives this process's resident memory before
    and after (server and fuzzer together) as ``resident_mb``: a leak shows there. From ``url``, only the health
    checks: what that server logs cannot be seen from here."""
    if (engine is None) == (url is None):
        raise ValueError("give an engine to serve or the url of a running server, not both")
    if url is not None:
        return {"url": url, **asyncio.run(fuzz(url, messages=messages, seed=seed, token=token, progress=progress))}
    if engine.slots < SLOTS:
        raise ValueError(f"fuzzing needs an engine of {SLOTS} slots or more (a hostile client and the health "
                         f"check's); this one has {engine.slots}")
    before = resident_mb()
    with LogWatcher() as watcher:
        report = serve_here(engine, lambda url: fuzz(url, messages=messages, seed=seed, log_problems=watcher.take,
                                                     progress=progress),
                            max_waiting=1, **UNLIMITED_RATES)
    report["resident_mb"] = {"before": before, "after": resident_mb()}
    return report


def resident_mb() -> float:
    """This process's resident memory in MB (NaN where /proc is missing: not Linux)."""
    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * resource.getpagesize() / 2**20, 1)
    except OSError:
        return float("nan")


class LogWatcher(logging.Handler):
    """Collects what a server in this process must not log whatever a client sends (tracebacks, errors), while
    attached to the root logger (``with LogWatcher() as watcher:``)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records: List[logging.LogRecord] = []

    def emit(self, record):
        if record.exc_info or record.levelno >= logging.ERROR:
            self.records.append(record)

    def take(self) -> List[str]:
        found = [f"logged: {r.name}: {r.getMessage()}" + (f" ({r.exc_info[0].__name__})" if r.exc_info else "")
                 for r in self.records]
        self.records.clear()
        return found

    def __enter__(self):
        root = logging.getLogger()
        self._level = root.level
        root.addHandler(self)
        root.setLevel(min(root.level or logging.WARNING, logging.INFO))  # the server's records reach it
        return self

    def __exit__(self, *exc):
        root = logging.getLogger()
        root.removeHandler(self)
        root.setLevel(self._level)


def format_fuzz_report(report: Dict, messages: int) -> str:
    """What ``duplex bench serve --fuzz MESSAGES`` prints: a title line, a row per family, the verdict and, for a
    server started here, the resident memory."""
    rows = [f"# serve --fuzz {messages} (seed {report['seed']}) against {where(report)}",
            f"{'family':>10} {'messages':>8} {'connections':>11}  closes (server's code)  health"]
    for r in report["families"]:
        closes = ", ".join(f"{k}: {v}" for k, v in r["closes"].items()) or "-"
        rows.append(f"{r['family']:>10} {r['messages']:>8} {r['connections']:>11}  {closes}  "
                    + ("healthy" if not r["problems"] else "; ".join(r["problems"])))
    rows.append("healthy after every family" if report["healthy"] else "NOT healthy: see the families above")
    if "resident_mb" in report:
        memory = report["resident_mb"]
        rows.append(f"resident memory of this process (server and fuzzer): {memory['before']:.0f} MB before, "
                    f"{memory['after']:.0f} MB after")
    return "\n".join(rows)
