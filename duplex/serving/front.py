"""The front: the server's listening socket, in a process of its own.

Why a process: whatever runs in the server's process shares its GIL with the frame clock, and a Python thread that
is busy (answering a flood of requests, reading half-open connections) makes every engine step wait for the GIL
after each of its hundreds of operations. Measured on 2 cores (docs/serving.md): a busy Python thread in the same
process made a default-model step 4-9x slower; the same work in another process, under 2x. So the work a peer
can cause without a token (accepting connections, reading request heads, answering requests over the rate limits)
happens here, and the server's process sees only what passed: at most the rate limits' worth of requests.

For each connection the front reads the request head (at most ``head_bytes``, within ``head_timeout``), applies
the request-rate limits per peer and in all (past them: HTTP 429 with Retry-After, answered here), then connects
to the server's private Unix socket, sends the head with the peer's address in ``X-Duplex-Peer`` (any such header
from the client is removed), and copies bytes both ways until either side ends. Everything else (routes, tokens,
WebSockets, sessions) stays the server's. TLS ends here.

Torch-free, and started as ``python -m duplex.serving.front SETTINGS`` (not with multiprocessing, whose spawn
would import the caller's main module again: a script without the ``if __name__ == "__main__"`` guard would start
a second server). It imports only the standard library and ``limits``. It says it listens (or why it cannot) in one
JSON line on its stdout and stops when its stdin closes (the server stopped, or died). Its counters are integers
in a small file beside the socket, mapped into memory, which the server adds to ``/api/stats``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import math
import mmap
import os
import signal
import socket
import ssl as ssl_module
import struct
import sys
import time
from dataclasses import dataclass
from typing import Dict, Optional

from .limits import PEER_HEADER as _PEER_HEADER
from .limits import RateLimit, peer_key

PEER_HEADER = _PEER_HEADER.encode()
# What a browser's WebSocket upgrade needs (its request line and ~15 headers, cookies included) with room to
# spare; a head longer than this is answered 431 and closed.
HEAD_BYTES = 16 * 1024
COPY_BYTES = 64 * 1024  # read at a time while copying; the write side waits below this (backpressure)
COUNTERS = ("accepted", "rate_limited", "heads_dropped", "accept_errors")  # the shared counters, in order
COUNTERS_FILE = "counters"  # beside the socket: one little-endian int64 per counter
ACCEPT_OUT_OF_RESOURCES = "socket.accept() out of system resource"


@dataclass
class FrontSettings:
    host: str
    port: int
    backend: str  # the server's Unix socket
    rates: dict  # RateLimit arguments: ("http" | "upgrades") -> (per_peer, peer_burst, total, total_burst)
    ssl_cert: Optional[str] = None
    ssl_key: Optional[str] = None
    head_bytes: int = HEAD_BYTES
    head_timeout: float = 10.0  # a request head not complete by then is dropped (as websockets' open_timeout)
    max_heads: int = 1024  # connections whose head is still being read; past it the oldest of them is dropped
    nice: int = 0  # added to the front's niceness (Linux): the clock's process goes first when cores are short


def main(argv=None) -> int:
    """The front process: ``python -m duplex.serving.front '<FrontSettings as JSON>'``."""
    settings = FrontSettings(**json.loads((argv or sys.argv)[1]))
    # Signals are the server's: a Ctrl-C reaches every process of the terminal's group, systemd sends SIGTERM to
    # every process of the service, and the front must go on copying while the server drains.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if settings.nice:
        try:
            os.nice(settings.nice)
        except OSError:
            pass
    try:
        asyncio.run(Front(settings).serve())
    except Exception as e:  # said to the server, which raises it: one line, not a child's traceback
        say({"error": f"{type(e).__name__}: {e}", "errno": getattr(e, "errno", None)})
        return 1
    return 0


def say(what: dict) -> None:
    sys.stdout.write(json.dumps(what) + "\n")
    sys.stdout.flush()


def command(settings: FrontSettings) -> list:
    return [sys.executable, "-m", "duplex.serving.front", json.dumps(dataclasses.asdict(settings))]


def read_counters(path: str) -> Dict[str, int]:
    """The front's counters, from the file beside the socket (zeros before it is written)."""
    try:
        with open(os.path.join(os.path.dirname(path), COUNTERS_FILE), "rb") as f:
            data = f.read(8 * len(COUNTERS))
    except OSError:
        data = b""
    if len(data) < 8 * len(COUNTERS):
        return dict.fromkeys(COUNTERS, 0)
    return dict(zip(COUNTERS, struct.unpack(f"<{len(COUNTERS)}q", data)))


class Front:
    def __init__(self, settings: FrontSettings):
        self.settings = settings
        with open(os.path.join(os.path.dirname(settings.backend), COUNTERS_FILE), "w+b") as f:
            f.write(bytes(8 * len(COUNTERS)))
            f.flush()
            self.counters = mmap.mmap(f.fileno(), 8 * len(COUNTERS))
        http, upgrades = settings.rates["http"], settings.rates["upgrades"]
        self.http_rate, self.upgrade_rate = RateLimit(*http), RateLimit(*upgrades)
        self.heads: "collections.OrderedDict[asyncio.StreamWriter, float]" = collections.OrderedDict()
        self.copies: set = set()  # connections being copied (closed when the front stops)

    def count(self, name: str) -> None:
        at = 8 * COUNTERS.index(name)
        struct.pack_into("<q", self.counters, at, struct.unpack_from("<q", self.counters, at)[0] + 1)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_exception)
        s = self.settings
        context = None
        if s.ssl_cert:
            context = ssl_module.SSLContext(ssl_module.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(s.ssl_cert, s.ssl_key)
        server = await asyncio.start_server(self._connection, s.host, s.port, ssl=context, limit=s.head_bytes,
                                             ssl_handshake_timeout=s.head_timeout if context else None)
        stop = loop.create_future()
        loop.add_reader(sys.stdin.fileno(), lambda: stop.done() or stop.set_result(None))  # EOF, or any line
        say({"port": server.sockets[0].getsockname()[1]})
        try:
            await stop
        finally:
            loop.remove_reader(sys.stdin.fileno())
            server.close()
            for writer in list(self.copies) + list(self.heads):
                writer.transport.abort()

    def _loop_exception(self, loop, context: dict) -> None:
        """accept() failing for want of descriptors or memory is reported by asyncio once a second with a
        traceback: counted instead (the server logs it); anything else as asyncio would."""
        if context.get("message") == ACCEPT_OUT_OF_RESOURCES:
            self.count("accept_errors")
            return
        loop.default_exception_handler(context)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.count("accepted")
        s = self.settings
        if len(self.heads) >= s.max_heads:  # many connections that send nothing: the slowest goes, not the newest
            oldest, _ = self.heads.popitem(last=False)
            oldest.transport.abort()
            self.count("heads_dropped")
        self.heads[writer] = time.monotonic()
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), s.head_timeout)
        except asyncio.LimitOverrunError:
            self.heads.pop(writer, None)
            await self._answer(writer, 431, "Request Header Fields Too Large", "request head too large\n")
            return
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, OSError):
            self.heads.pop(writer, None)
            writer.transport.abort()
            return
        finally:
            self.heads.pop(writer, None)
        peername = writer.get_extra_info("peername")
        peer = peer_key(str(peername[0])) if isinstance(peername, tuple) and peername else ""
        line, _, rest = head.partition(b"\r\n")
        parts = line.split(b" ")
        path = parts[1].split(b"?", 1)[0] if len(parts) == 3 else b""
        limit = self.upgrade_rate if path == b"/api/chat" else self.http_rate
        wait = limit.take(peer, count_total=path != b"/health")  # probes get through a flood from elsewhere
        if wait > 0:
            self.count("rate_limited")
            await self._answer(writer, 429, "Too Many Requests", "too many requests; try again later\n",
                               {"Retry-After": str(max(1, math.ceil(wait)))})
            return
        kept = [h for h in rest.split(b"\r\n") if h and not h.lower().startswith(PEER_HEADER.lower() + b":")]
        forwarded = b"\r\n".join([line, PEER_HEADER + b": " + peer.encode(), *kept]) + b"\r\n\r\n"
        await self._copy(reader, writer, forwarded)

    async def _answer(self, writer, status: int, reason: str, body: str, headers: Optional[dict] = None) -> None:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        data = body.encode()
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: "
                     f"{len(data)}\r\nConnection: close\r\n{extra}\r\n".encode() + data)
        try:
            await asyncio.wait_for(writer.drain(), 5.0)
        except (asyncio.TimeoutError, ConnectionError, OSError):
            writer.transport.abort()
            return
        writer.close()

    async def _copy(self, reader, writer, head: bytes) -> None:
        """Connect to the server and copy both ways; the first side to end ends both (a WebSocket's closing
        handshake has been copied by then: each side closes its TCP connection only after it)."""
        try:
            backend_reader, backend = await asyncio.open_unix_connection(self.settings.backend)
        except OSError:
            await self._answer(writer, 503, "Service Unavailable", "the server is not accepting connections\n")
            return
        self.copies.update((writer, backend))
        writer.transport.set_write_buffer_limits(high=COPY_BYTES)
        backend.transport.set_write_buffer_limits(high=COPY_BYTES)
        _bound_kernel_buffer(writer)
        backend.write(head)
        directions = [asyncio.ensure_future(self._pump(reader, backend)),
                      asyncio.ensure_future(self._pump(backend_reader, writer))]
        try:
            await asyncio.wait(directions, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in directions:
                task.cancel()
            for w in (writer, backend):
                self.copies.discard(w)
                w.close()

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await source.read(COPY_BYTES)
                if not data:
                    return
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            return


def _bound_kernel_buffer(writer: asyncio.StreamWriter) -> None:
    """Keep what the kernel holds for a client that stops reading to tens of kilobytes (Linux would let the send
    buffer grow to megabytes, minutes of Opus): then the copy waits, the server's socket fills, and the server's
    own bounds (a few replies, a max age, session.py) decide what the client gets when it reads again."""
    sock = writer.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, COPY_BYTES // 2)  # Linux doubles it
        sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_NOTSENT_LOWAT", 25), COPY_BYTES // 4)
    except OSError:  # a system without the option: the write buffer limit still bounds the copy
        pass


def private_socket_path() -> str:
    """A path for the server's Unix socket in a new folder only this user can enter."""
    import tempfile  # noqa: PLC0415 - only when a front is started

    folder = tempfile.mkdtemp(prefix="duplex-")
    os.chmod(folder, 0o700)
    return os.path.join(folder, "server.sock")


def unix_socket_supported() -> bool:
    return hasattr(socket, "AF_UNIX")


if __name__ == "__main__":
    sys.exit(main())
