"""The replica's side of a request: relayed, as it came, to the replica's own ``duplex serve`` on a Unix socket.

Each Ray Serve replica runs an ordinary ``duplex serve`` in a process of its own (backend.py), listening on a
private Unix socket. Ray's proxy hands the replica a client's request as ASGI messages; this module passes it on
unchanged, with the client's address in ``X-Duplex-Peer`` (the server's rate limits then count the real peer), and
passes the answer back: an HTTP answer as it is (status, body, ``Retry-After``), a WebSocket refused before its
handshake as the same HTTP status (Kyutai's clients see what a plain server would have said), and an accepted
WebSocket message for message both ways, with the server's close code and reason. So routes, protocol, tokens,
limits, queue notices and the hostile-input guarantees stay the server's own: the relay decides nothing.

Why a process, not the engine in the replica: Ray's replica does Python work for every message it relays (the
proxy's RPCs), and a busy Python thread in the clock's process makes every engine step wait for the GIL
(measured, serving/front.py): the clock keeps a process of its own, as behind ``duplex serve``'s front.

Starlette's objects (``Request``, ``WebSocket``) come with Ray Serve (FastAPI); nothing here imports Ray.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Dict, Optional, Tuple

from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import unix_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ..serving.limits import PEER_HEADER

log = logging.getLogger(__name__)

HTTP_TIMEOUT = 10.0  # seconds for the local server to answer an HTTP request (it answers from memory)
CONNECT_TIMEOUT = 10.0  # websockets' open_timeout: a handshake on the local socket, or a system prompt being built
# The close code a client sees when the engine behind its conversation stopped (its process died, or the replica
# was removed past its drain time): 1012, "service restart": the client may reconnect, and reaches another replica.
ENGINE_GONE = 1012
# The client's request headers that the server reads (everything else is the proxy's business).
PASSED_HEADERS = ("authorization", "origin", "user-agent")
# The server's answer headers a client may need (the rest describe the local connection).
ANSWER_HEADERS = ("content-type", "retry-after")


def peer_of(client) -> str:
    """The address the server's per-peer limits count a request against: the client's, as Ray's proxy passes it in
    the ASGI scope (behind another proxy, that proxy's: raise the per-peer limits there, docs/scaling.md)."""
    return str(client.host) if client is not None and client.host else ""


def _head(method: str, target: str, headers: Dict[str, str]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: duplex", "Connection: close",
             *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _clean(value: str) -> str:
    """A header value safe to write into a request head (no line breaks: a client cannot add headers)."""
    return value.replace("\r", " ").replace("\n", " ")


def forwarded_headers(headers, peer: str) -> Dict[str, str]:
    """The client's headers the server reads, and the peer (a client's own ``X-Duplex-Peer`` is dropped)."""
    out = {name: _clean(headers[name]) for name in PASSED_HEADERS if name in headers}
    out[PEER_HEADER] = _clean(peer)
    return out


async def http_request(socket_path: str, target: str, headers: Dict[str, str], method: str = "GET",
                       timeout: float = HTTP_TIMEOUT) -> Tuple[int, Dict[str, str], bytes]:
    """One HTTP/1.1 request to the server on ``socket_path``: (status, headers in lower case, body)."""
    async def exchange():
        reader, writer = await asyncio.open_unix_connection(socket_path)
        try:
            writer.write(_head(method, target, headers))
            await writer.drain()
            return await reader.read()  # the server closes after its answer (Connection: close)
        finally:
            writer.close()

    raw = await asyncio.wait_for(exchange(), timeout)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(f"the local server answered {lines[0][:80]!r}")
    answer = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        answer[name.strip().lower()] = value.strip()
    if "content-length" in answer and answer["content-length"].isdigit():
        body = body[:int(answer["content-length"])]
    return int(parts[1]), answer, body


def response_of(status: int, headers: Dict[str, str], body: bytes) -> Response:
    return Response(bytes(body), status_code=status, headers={k: v for k, v in headers.items() if k in ANSWER_HEADERS})


async def relay_http(socket_path: str, method: str, target: str, headers, client) -> Response:
    """The server's answer to one HTTP request (the page, /health, /api/voices, ...), as a Starlette response; 503
    with ``Retry-After`` if the server does not answer (its process is starting again)."""
    try:
        status, answer, body = await http_request(socket_path, target, forwarded_headers(headers, peer_of(client)),
                                                  method)
    except (OSError, ConnectionError, asyncio.TimeoutError) as e:
        log.warning("the local server did not answer %s %s: %s", method, target.split("?")[0], e)
        return Response("this replica's engine is not reachable; try again\n", status_code=503,
                        headers={"Retry-After": "5"})
    return response_of(status, answer, body)


async def relay_websocket(websocket: WebSocket, socket_path: str, gone_hold: float = 0.0) -> Optional[int]:
    """Relay one WebSocket to the server on ``socket_path`` until either side ends; returns the close code the
    client was given (None: the client left first, or the server refused the handshake). When the server's
    process died, the client hears ENGINE_GONE after ``gone_hold`` seconds: the time Ray's router takes to learn
    that this replica takes no more conversations, so that a client reconnecting at once reaches another."""
    target = websocket.url.path + (f"?{websocket.url.query}" if websocket.url.query else "")
    headers = forwarded_headers(websocket.headers, peer_of(websocket.client))
    origin = headers.pop("origin", None)
    try:
        # No size limit and no compression here: the server applies its own limits to what the client sends,
        # and what it sends back is the client's to take.
        backend = await unix_connect(socket_path, uri=f"ws://duplex{target}", additional_headers=headers,
                                     origin=origin, max_size=None, compression=None, open_timeout=CONNECT_TIMEOUT,
                                     user_agent_header=None, ping_interval=None)
    except InvalidStatus as e:  # refused before the handshake: the same status, reason and Retry-After
        answer = {name.lower(): value for name, value in e.response.headers.raw_items()}
        await websocket.send_denial_response(response_of(e.response.status_code, answer, e.response.body or b""))
        return None
    except (OSError, InvalidHandshake, asyncio.TimeoutError) as e:
        log.warning("the local server did not take a conversation: %s", e)
        await websocket.send_denial_response(
            Response("this replica's engine is not reachable; try again\n", status_code=503,
                     headers={"Retry-After": "5"}))
        return None
    await websocket.accept()
    to_server = asyncio.create_task(_client_to_server(websocket, backend))
    to_client = asyncio.create_task(_server_to_client(websocket, backend))
    try:
        done, _ = await asyncio.wait((to_server, to_client), return_when=asyncio.FIRST_COMPLETED)
        if to_client in done:  # the server ended it (or died): the client hears its code, or ENGINE_GONE
            to_server.cancel()
            code, reason = to_client.result()
            if code == ENGINE_GONE and gone_hold > 0:
                await asyncio.sleep(gone_hold)
            try:
                await websocket.close(code=code, reason=reason)
            except (RuntimeError, OSError):
                pass  # the client left meanwhile
            return code
        to_client.cancel()  # the client left: the server hears it as a client closing (its slot frees at once)
        await backend.close()
        return None
    finally:
        for task in (to_server, to_client):
            task.cancel()
        await asyncio.gather(to_server, to_client, return_exceptions=True)
        await backend.close()


async def _client_to_server(websocket: WebSocket, backend) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes")
        if data is None:
            data = message.get("text")
        if data is None:
            continue
        try:
            await backend.send(data)
        except ConnectionClosed:
            return  # the server ended it: the other direction says how


async def _server_to_client(websocket: WebSocket, backend) -> Tuple[int, str]:
    """Until the server closes: (its close code and reason), or ENGINE_GONE if its connection broke."""
    try:
        async for data in backend:
            try:
                if isinstance(data, bytes):
                    await websocket.send_bytes(data)
                else:
                    await websocket.send_text(data)
            except (WebSocketDisconnect, RuntimeError, OSError):
                return 1000, ""  # the client is gone; nobody hears this
    except ConnectionClosed:
        pass
    received = backend.protocol.close_rcvd  # the server's close frame, None if the connection just broke
    if received is None or received.code in (1005, 1006):  # no closing handshake: the server's process died
        return ENGINE_GONE, "the engine behind this conversation stopped; reconnect"
    return received.code, received.reason
