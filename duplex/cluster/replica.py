"""The Ray Serve replica: one engine (a ``duplex serve`` process, backend.py) and the relay in front of it.

Ray's proxy routes each request (router.py picks the replica) to a replica's ASGI app, built here with FastAPI
(Ray Serve's ingress): ``/api/chat`` is relayed as a WebSocket for the conversation's whole life (so a session
stays on its replica), ``/api/stats`` answers for the whole application (board.py), everything else is relayed as
it is (relay.py). The replica tells Ray's router its slots and whether it drains (``record_routing_stats``), its
start time (``record_replica_metadata``: the ``pack`` order), and fails its health check when its engine process
has ended, so that Ray replaces it; the conversations it held end with close code 1012 and reconnect elsewhere.
"""


import asyncio
import concurrent.futures
import json
import logging
import os
import threading
import time
from typing import List, Optional

import ray
from fastapi import FastAPI, Request, WebSocket
from ray import serve
from starlette.responses import Response

from .backend import Backend
from .board import StatsBoard, aggregate
from .relay import http_request, relay_http, relay_websocket
from .router import ROUTING_PERIOD

log = logging.getLogger(__name__)

BOARD_NAMESPACE = "duplex"
STATS_PERIOD = 1.0  # seconds between two readings of the engine's /api/stats (the board, Ray's router)
START_TIMEOUT = 900.0  # seconds for an engine to load its model and listen (a 7B from a slow disk)

app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


def board_actor(name: str):
    """The application's stats board (created by the first replica that asks; detached, so that it outlives a
    replica that dies; ``duplex serve --ray`` removes it as it stops)."""
    return ray.remote(StatsBoard).options(name=name, namespace=BOARD_NAMESPACE, get_if_exists=True,
                                          lifetime="detached", num_cpus=0, max_restarts=-1).remote()


def _target(request: Request) -> str:
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


@serve.ingress(app)
class DuplexReplica:
    def __init__(self, serve_args: List[str], board: str, token: Optional[str] = None, drain: float = 5.0):
        self.token, self.drain = token, drain
        self.started = time.time()
        context = serve.get_replica_context()
        self.name = context.replica_id.unique_id if context is not None else f"pid{os.getpid()}"
        self.backend = Backend(serve_args)
        # The constructor runs on Ray's user-code thread, whose loop must not be blocked by asyncio.run: the
        # wait has a loop of its own, on a thread of its own.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, self.backend.wait_ready(START_TIMEOUT)).result()
        self.board = board_actor(board)
        self.stats: dict = {}
        self.draining = False
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read_stats, name="duplex-replica-stats", daemon=True)
        self._reader.start()
        log.info("replica %s: engine process %d ready on %s", self.name, self.backend.pid, self.backend.socket_path)
        if self.backend.niceness:
            log.warning("the engine runs at niceness %d (Ray's workers' niceness, which this user may not lower): "
                        "other processes come before its clock; start Ray with RAY_worker_niceness=0 "
                        "(docs/scaling.md)", self.backend.niceness)

    # ------------------------------------------------------------------------------------------- routes
    @app.websocket("/api/chat")
    async def chat(self, websocket: WebSocket) -> None:
        await relay_websocket(websocket, self.backend.socket_path, gone_hold=ROUTING_PERIOD + 0.5)

    @app.get("/api/stats")
    async def application_stats(self, request: Request) -> Response:
        """The server checks the token (and its rate limits) as for its own stats; the answer is the board's."""
        answer = await relay_http(self.backend.socket_path, "GET", _target(request), request.headers, request.client)
        if answer.status_code != 200:
            return answer
        said = await self.board.get.remote()
        said[self.name] = {"stats": json.loads(answer.body), "replica": self._info()}  # this one's, fresh
        stats = aggregate({r: entry["stats"] for r, entry in said.items()},
                          {r: entry.get("replica") for r, entry in said.items()})
        return Response(json.dumps(stats), media_type="application/json")

    @app.api_route("/{path:path}", methods=["GET", "HEAD"])
    async def relayed(self, request: Request, path: str) -> Response:
        return await relay_http(self.backend.socket_path, request.method, _target(request), request.headers,
                                request.client)

    # ------------------------------------------------------------------------------------- Ray's hooks
    def record_routing_stats(self) -> dict:
        # an engine that has ended counts as draining: no new conversation is sent here until Ray replaces it
        return {"slots": self.stats.get("slots"), "sessions": self.stats.get("sessions"),
                "waiting": self.stats.get("waiting"), "draining": self.draining or not self.backend.alive()}

    def record_replica_metadata(self) -> dict:
        return {"started": self.started}

    def check_health(self) -> None:
        if not self.backend.alive():
            raise RuntimeError(self.backend.failure())

    def __del__(self):
        """Ray has stopped routing here and waited for the conversations (graceful_shutdown_timeout_s): the engine
        drains what is left (its --drain) and stops."""
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
        backend = getattr(self, "backend", None)
        if backend is not None:
            backend.stop(grace=self.drain + 10.0)
        board = getattr(self, "board", None)
        if board is not None:
            try:
                board.forget.remote(self.name)
            except Exception:  # Ray itself is stopping
                pass

    # ------------------------------------------------------------------------------------------ figures
    def _info(self) -> dict:
        return {"pid": self.backend.pid, "node": ray.get_runtime_context().get_node_id(), "started": self.started,
                "alive": self.backend.alive(), "draining": self.draining}

    def _read_stats(self) -> None:
        """Once a second: the engine's /api/stats, kept for Ray's router and put on the board."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        while not self._stop.wait(STATS_PERIOD):
            try:
                status, _, body = asyncio.run(http_request(self.backend.socket_path, "/api/stats", headers))
                health, _, _ = asyncio.run(http_request(self.backend.socket_path, "/health", {}))
            except (OSError, ConnectionError, asyncio.TimeoutError):
                continue
            if status == 200:
                self.stats = json.loads(body)
            self.draining = health == 503
            try:
                self.board.put.remote(self.name, {"stats": self.stats, "replica": self._info()})
            except Exception as e:  # the board is being restarted: the next second puts it again
                log.debug("stats board: %s", e)
