"""The replica's relay (duplex/cluster/relay.py) between an ASGI server and a voice server on a Unix socket, without
Ray: what a client hears through it is what the server says (HTTP answers and refusals, the handshake, queue and
"full" notices, close codes), the peer is passed on, and a server that dies is heard as close code 1012."""

import asyncio
import json

import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")

from helpers import EchoEngine  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.routing import Route, WebSocketRoute  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402

from duplex.cluster.relay import ENGINE_GONE, forwarded_headers, relay_http, relay_websocket  # noqa: E402
from duplex.serving.limits import PEER_HEADER  # noqa: E402
from duplex.serving.server import ServerOptions, VoiceServer  # noqa: E402

TOKEN = "s3cret"


def relayed(test, tmp_path, slots=1, **options):
    """``test(voice_server, base_url)`` with a voice server on a Unix socket and a relay (uvicorn) in front."""
    socket_path = str(tmp_path / "duplex.sock")

    async def chat(websocket):
        await relay_websocket(websocket, socket_path, gone_hold=0.1)

    async def http(request):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return await relay_http(socket_path, request.method, target, request.headers, request.client)

    app = Starlette(routes=[WebSocketRoute("/api/chat", chat), Route("/{path:path}", http)])

    async def main():
        server = VoiceServer(EchoEngine(slots), ServerOptions(unix_socket=socket_path, token=TOKEN, **options))
        await server.start()
        front = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning",
                                              ws="websockets-sansio"))
        task = asyncio.create_task(front.serve())
        try:
            while not front.started:
                await asyncio.sleep(0.01)
            port = front.servers[0].sockets[0].getsockname()[1]
            return await asyncio.wait_for(test(server, f"127.0.0.1:{port}"), 30)
        finally:
            front.should_exit = True
            await task
            await server.stop()

    return asyncio.run(main())


async def get(base, path, headers=None):
    reader, writer = await asyncio.open_connection(*base.split(":"))
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n".encode())
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), head.decode().lower(), body


def test_http_answers_pass_through_unchanged(tmp_path):
    async def test(server, base):
        status, head, body = await get(base, "/")
        assert status == 200 and b"<html" in body.lower() and "text/html" in head
        assert (await get(base, "/health"))[0] == 200
        assert (await get(base, "/api/stats"))[0] == 401  # the server's token check, through the relay
        status, head, body = await get(base, f"/api/stats?token={TOKEN}")
        assert status == 200 and "application/json" in head and json.loads(body)["slots"] == 1
        status, _, body = await get(base, "/nowhere", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 404 and b"not found" in body

    relayed(test, tmp_path)


def test_conversation_refusal_and_close_codes_are_the_servers(tmp_path):
    async def test(server, base):
        url = f"ws://{base}/api/chat?format=pcm16&token={TOKEN}"
        with pytest.raises(InvalidStatus) as refused:  # refused before the handshake: the same HTTP status
            await connect(f"ws://{base}/api/chat?format=pcm16")
        assert refused.value.response.status_code == 401
        with pytest.raises(InvalidStatus) as unknown:
            await connect(url + "&adapter=nobody")
        assert unknown.value.response.status_code == 404 and b"adapter" in unknown.value.response.body
        first = await connect(url)
        assert await first.recv() == b"\x00"  # Kyutai's handshake byte
        await first.send(bytes(3840))  # one frame of silence, echoed by the stand-in engine
        assert isinstance(await asyncio.wait_for(first.recv(), 5), bytes)
        second = await connect(url)  # the only slot is taken and nobody may wait: the server's "full" answer
        notice = await asyncio.wait_for(second.recv(), 5)
        assert b"server full" in notice
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(second.recv(), 5)
        assert second.close_code == 1013 and second.close_reason == "server full"
        await first.close()
        for _ in range(100):  # the slot frees as the relay passes the client's close on
            if not server.sessions:
                break
            await asyncio.sleep(0.02)
        assert not server.sessions

    relayed(test, tmp_path)


def test_a_server_that_dies_is_heard_as_service_restart(tmp_path):
    async def test(server, base):
        client = await connect(f"ws://{base}/api/chat?format=pcm16&token={TOKEN}")
        assert await client.recv() == b"\x00"
        for _ in range(100):
            if server.sessions:
                break
            await asyncio.sleep(0.02)
        for session in list(server.sessions.values()):  # the server's side of the socket breaks, no close frame
            session.connection.transport.abort()
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(client.recv(), 5)
        assert client.close_code == ENGINE_GONE

    relayed(test, tmp_path)


def test_the_peer_is_the_relays_to_name_never_the_clients():
    class Client:
        host = "203.0.113.7"

    headers = {"authorization": "Bearer x", "origin": "https://a.example", "x-duplex-peer": "10.0.0.1",
               "cookie": "private"}
    out = forwarded_headers(headers, "203.0.113.7\r\nX-Evil: 1")
    assert out[PEER_HEADER] == "203.0.113.7  X-Evil: 1"  # no line break: a client cannot add headers
    assert "x-duplex-peer" not in out and "cookie" not in out
    assert out["authorization"] == "Bearer x" and out["origin"] == "https://a.example"


def test_the_server_counts_the_named_peer_on_a_unix_socket(tmp_path):
    """Per-peer upgrade limits apply to the peer the relay names, not to the relay itself."""
    async def test(server, base):
        refused = 0
        for _ in range(6):  # one peer over its burst of upgrades: 429
            try:
                c = await connect(f"ws://{base}/api/chat?format=pcm16&token={TOKEN}")
                await c.close()
            except InvalidStatus as e:
                refused += e.response.status_code == 429
        return refused

    refused = relayed(test, tmp_path, slots=8, upgrades_per_peer=0.01, upgrades_peer_burst=3)
    assert refused >= 2
