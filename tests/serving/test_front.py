"""The front (serving/front.py): the listening socket, the request heads and the rate limits in a process of their
own, so that requests without a token never reach the process of the frame clock beyond the rate limits (issue 23,
deliverable 1)."""

import asyncio
import os
import signal
import socket
import time

import numpy as np
import pytest
from websockets.asyncio.client import connect

from duplex.serving import front as front_module
from duplex.serving.protocol import AUDIO, HANDSHAKE, message, pcm16_bytes
from tests.helpers import EchoEngine, serve

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="the front needs Unix sockets")


def raw_request(port: int, data: bytes, timeout: float = 10.0, source: str = "127.0.0.1") -> bytes:
    """Send ``data`` on a new connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def get(port: int, path: str, headers: str = "", source: str = "127.0.0.1") -> bytes:
    return raw_request(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode(),
                       source=source)


@pytest.fixture
def seen(monkeypatch):
    """The heads of the requests that reach the server's own HTTP handler (past the front)."""
    from duplex.serving.server import VoiceServer

    heads = []
    original = VoiceServer._http

    def handler(self, connection, request):
        heads.append(dict(request.headers.raw_items()))
        return original(self, connection, request)

    monkeypatch.setattr(VoiceServer, "_http", handler)
    return heads


def serve_fronted(test, **options):
    return serve(test, engine=EchoEngine(2), front=True, **options)


def test_a_session_through_the_front_talks_as_before():
    async def test(server, url):
        assert server._front is not None and server.port == server._front["port"]
        async with connect(url + "/api/chat?format=pcm16") as ws:
            assert await ws.recv() == message(HANDSHAKE)
            pcm = np.full(4 * 1920, 0.25, np.float32)
            await ws.send(message(AUDIO, pcm16_bytes(pcm)))
            loud = 0
            while loud < 4:
                reply = await asyncio.wait_for(ws.recv(), 10)
                if reply[:1] == bytes([AUDIO]) and np.frombuffer(reply[1:], "<i2").any():
                    loud += 1
        return server.stats()

    stats = serve_fronted(test)
    assert stats["front"]["accepted"] >= 1 and stats["connections"] == 1


def test_a_request_flood_is_answered_by_the_front_and_the_server_sees_only_the_budget(seen):
    """One peer polling /api/stats as fast as it can: the front answers 429 (with Retry-After) past the peer's
    burst, and the server's own handler sees no more requests than the budget let through."""
    async def test(server, url):
        loop = asyncio.get_running_loop()
        answers = [await loop.run_in_executor(None, get, server.port, "/api/stats") for _ in range(60)]
        return answers, len(seen), server.stats()

    answers, reached, stats = serve_fronted(test, http_per_peer=1.0, http_peer_burst=10.0)
    ok = [a for a in answers if a.startswith(b"HTTP/1.1 200")]
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 429")]
    assert len(ok) + len(refused) == 60 and 10 <= len(ok) <= 12
    assert all(b"Retry-After: " in a for a in refused)
    assert reached == len(ok)
    assert stats["rate_limited"] == len(refused) and stats["front"]["rate_limited"] == len(refused)


def test_the_server_learns_the_peer_from_the_front_never_from_the_client(seen):
    async def test(server, url):
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, get, server.port, "/health", "X-Duplex-Peer: 203.0.113.9\r\n")
        return seen

    serve_fronted(test)
    peers = [value for name, value in seen[0].items() if name.lower() == "x-duplex-peer"]
    assert peers == ["127.0.0.1"]


def test_a_request_head_longer_than_a_browser_needs_is_refused_431(seen):
    async def test(server, url):
        loop = asyncio.get_running_loop()
        big = "X-Filler: " + "a" * front_module.HEAD_BYTES + "\r\n"
        answer = await loop.run_in_executor(None, get, server.port, "/health", big)
        return answer

    answer = serve_fronted(test)
    assert answer.startswith(b"HTTP/1.1 431") and seen == []


def test_connections_that_send_nothing_make_room_for_new_ones(tmp_path):
    """Past ``max_heads`` connections whose request is unread, the oldest is dropped (counted), so a peer holding
    connections open cannot lock real users out; they send their request at once and get in."""
    async def main():
        settings = front_module.FrontSettings("127.0.0.1", 0, str(tmp_path / "server.sock"),
                                              {"http": (1e9, 1e9, 1e9, 1e9), "upgrades": (1e9, 1e9, 1e9, 1e9)},
                                              max_heads=2)
        front = front_module.Front(settings)
        server = await asyncio.start_server(front._connection, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        await asyncio.sleep(0.2)
        first_reader = silent[0][0]
        ended = await asyncio.wait_for(first_reader.read(), 5)  # dropped: EOF (or reset)
        counts = front_module.read_counters(settings.backend)
        for _, writer in silent:
            writer.close()
        server.close()
        return ended, counts

    ended, counts = asyncio.run(main())
    assert ended == b"" and counts["heads_dropped"] == 1 and counts["accepted"] == 3


def test_the_front_ignores_ctrl_c_and_ends_with_the_server():
    """A Ctrl-C reaches every process of the terminal: the front must go on copying while the server drains, and
    end when the server stops."""
    async def test(server, url):
        process = server._front["process"]
        os.kill(process.pid, signal.SIGINT)
        await asyncio.sleep(0.3)
        alive = process.poll() is None
        async with connect(url + "/api/chat?format=pcm16") as ws:
            handshake = await ws.recv()
        return process, alive, handshake

    process, alive, handshake = serve_fronted(test)
    assert alive and handshake == message(HANDSHAKE)
    deadline = time.monotonic() + 10
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is not None


def test_a_port_in_use_fails_the_start_as_listening_here_would():
    from duplex.serving.server import ServerOptions, VoiceServer

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def main():
            server = VoiceServer(EchoEngine(1), ServerOptions(port=port, front=True))
            try:
                await server.start()
            finally:
                await server.stop()

        with pytest.raises(OSError):
            asyncio.run(main())


def test_a_front_that_dies_is_replaced_and_the_server_listens_again():
    """Should the front end (killed, out of memory), new users must not find a server that no longer listens: the
    server starts another on the same port within seconds, and its counts go on."""
    async def test(server, url):
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, get, server.port, "/health")
        first = server._front["process"]
        first.kill()
        deadline = time.monotonic() + 20
        while True:
            try:
                answer = await loop.run_in_executor(None, get, server.port, "/health")
                if answer.startswith(b"HTTP/1.1 200"):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "no front listening again"
            await asyncio.sleep(0.2)
        return first, server._front["process"], server.stats()["front"]

    first, second, counts = serve_fronted(test)
    assert second is not first
    assert counts["accepted"] >= 2
