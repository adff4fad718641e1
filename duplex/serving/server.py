"""The WebSocket voice server: many conversations on one batched engine (``duplex serve``).

``GET /api/chat`` speaks Kyutai's protocol (Ogg/Opus both ways), so Kyutai's own clients work unchanged;
``/api/chat?format=pcm16`` is the same with raw 16-bit PCM at 24 kHz (any chunk size) for simple clients and the
browser page at ``/``; ``/api/stats`` reports counters as JSON; ``/api/voices`` the voices clients may name;
``/api/adapters`` the LoRA adapters they may pick; ``/health`` says "ok" (200), or "draining" (503) while the server
stops.

A client may ask for a system prompt as NVIDIA's PersonaPlex server takes one (``voice_prompt=NATF2.pt``,
``text_prompt=...``; personas.py): it is checked and built before the WebSocket handshake (refused with an HTTP
status and the reason), the slot steps it one frame per tick among the talking ones (or starts from its kept state
at once), and the handshake byte is sent when it is done, as NVIDIA's server does.

A client may pick one of the server's LoRA adapters (``duplex serve --lora FILE``, repeatable) by name with
``adapter=NAME`` (``adapter=none``: the base model; without it, the first adapter): the name is checked before the
handshake (an unknown one is refused with HTTP 404 and the names there are), and the session's slot runs that
adapter in the same batched step as the others (docs/serving.md, "Serving adapters"). A system prompt and an adapter
go together: the engine keeps a prompt's state per adapter.

The server is clocked, not input-clocked: every 80 ms one engine step advances every session, with the session's
next received frame or, when none has arrived (network jitter, a muted client), silence. So each session gets
exactly one audio message per 80 ms from its handshake on, and browser clients never hit their 10 s inactivity
timeout. Per-session buffers are bounded both ways: audio arriving faster than real time and messages a client
does not read fast enough are dropped (oldest first) with a counter and a log line, so a slow or stalled client
never delays anyone else.

Two threads: the event loop does all the network work (HTTP, handshakes, reading, Opus, sending), and the frame
clock runs in a thread of its own (ticker.py), so no amount of requests can hold a tick back; they meet in each
session's input buffer and one bounded queue of replies. Opening and closing slots run on a worker thread and
take the engine's lock, as the clock's step does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hmac
import http
import json
import logging
import math
import os
import signal
import threading
import time
import weakref
from importlib import resources
from typing import Dict, Optional, Tuple
from urllib.parse import urlsplit

from websockets.asyncio.server import serve, unix_serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from ..errors import DuplexError, FrontError, UsageError
from ..model.prompts import NVIDIA_ASSISTANT_PROMPT
from ..runtime.clock import ClockStats
from ..runtime.engine import Engine, EngineFull
from . import front as front_module
from .admission import Admission
from .limits import PEER_HEADER, RateLimit, ReadBudget, peer_key
from .options import ServerOptions, page_url, tls_context
from .personas import PromptCache, Refusal, VoiceCatalog, describe
from .protocol import HANDSHAKE, MAX_TEXT_PROMPT_CHARS, SessionOptions, error_message, message, parse_query
from .session import SESSION_COUNTERS, Session, SessionStats, worth_logging
from .ticker import Ticker

__all__ = ["VoiceServer", "ServerOptions", "ReadBudget", "Session", "SessionStats", "tls_context"]

log = logging.getLogger(__name__)

# websockets' open_timeout (its default): a handshake not done by then has failed (_over_capacity forgets it)
UPGRADE_TIMEOUT = 10.0
# what asyncio's event loop reports when accept() fails for want of file descriptors or memory (_loop_exception)
ACCEPT_OUT_OF_RESOURCES = "socket.accept() out of system resource"
STATS_MAX_AGE = 0.25  # seconds: /api/stats is computed at most four times a second, whoever asks (_stats_json)
FRONT_START_TIMEOUT = 60.0  # seconds for the front process to listen (a spawned interpreter: well under 1 s)


def _crossed(before: int, after: int) -> bool:
    """Whether a count going from ``before`` to ``after`` passed one that ``worth_logging`` logs."""
    return any(before < n <= after for n in (1, 10, 100)) or after // 1000 > before // 1000


def _end_process(process) -> None:
    """Close a front's stdin (it ends), wait a little, then kill it."""
    import subprocess  # noqa: PLC0415 - only a fronted server needs it

    with contextlib.suppress(OSError):
        process.stdin.close()
    try:
        process.wait(5.0)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(1.0)
    process.stdout.close()


def _read_line(stream, timeout: float) -> str:
    """One line from a pipe within ``timeout`` seconds ("" if none came: the process ended, or hangs)."""
    import select  # noqa: PLC0415 - only for the front's first word

    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline().decode(errors="replace").strip() if ready else ""


class VoiceServer:
    def __init__(self, engine: Engine, options: Optional[ServerOptions] = None):
        self.engine = engine
        self.options = options or ServerOptions()
        if self.options.token is not None and not self.options.token.strip():
            raise UsageError("the token is empty, which would let anyone in; give a secret or no token")
        self.sessions: Dict[int, Session] = {}
        self._live: Tuple[Session, ...] = ()  # the sessions the clock steps: replaced as a whole (_set_session)
        # clients waiting for a slot, first come first served; joining, leaving and a freed slot are O(1)
        self.admission = Admission(self.options.max_waiting, self.options.notice_timeout, self._queue_notice)
        self.connections = self.refused = 0
        self.served = 0  # sessions opened since start-up
        self.draining = False  # stopping: nothing is admitted, live sessions may still end on their own
        self._now = time.monotonic  # the clock of the /api/stats cache
        self._stats_cache: Optional[Tuple[float, str]] = None
        o = self.options  # request rates, per peer and in all (_rate_limited); on the clock of the stats cache
        self._http_rate = RateLimit(o.http_per_peer, o.http_peer_burst, o.http_total, o.http_total_burst,
                                    clock=lambda: self._now())
        self._upgrade_rate = RateLimit(o.upgrades_per_peer, o.upgrades_peer_burst, o.upgrades_total,
                                       o.upgrades_total_burst, clock=lambda: self._now())
        self.rate_limited = 0  # requests answered 429
        # WebSocket connections handled at once: in _handle (sessions, waiters, refusals under way), and upgrades
        # that _http let through and that are not there yet (_over_capacity); past the cap, 503 (counted)
        self.max_connections = (o.max_connections if o.max_connections is not None
                                else self.engine.slots + o.max_waiting + 64)
        self._handling = 0
        self._upgrading: Dict[object, float] = {}  # connection: when its upgrade was let through
        self.over_capacity = 0
        self.accept_errors = 0  # accept() failures for want of files or memory (_loop_exception)
        self._previous_handler = None  # the event loop's exception handler before start()
        self.closed_totals = SessionStats()  # the counters of every session that has ended, added up
        self.clock = ClockStats(window=1000)  # ticks, deadline misses, engine step times (the last 1000)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._engine_lock = threading.Lock()  # the clock's step, and opening and closing slots (_engine)
        self._server = None
        self._ticker: Optional[Ticker] = None
        self._front = None  # {process, path (the Unix socket), port, watch (task)} with options.front
        self._front_final: Optional[Dict[str, int]] = None  # its counters as it stopped
        self._front_base: Dict[str, int] = {}  # the counters of fronts that ended (_watch_front started another)
        self._page = resources.files("duplex.serving").joinpath("web/index.html").read_text(encoding="utf-8")
        # System prompts (personas.py): the voices clients may name, the prompts built from them, what each
        # upgrade under way asked for (dropped with its connection), and the slots stepping a prompt now
        files = getattr(engine, "files", None)
        folders = ((self.options.voice_prompt_dir,) if self.options.voice_prompt_dir
                   else tuple(getattr(files, "voice_prompts", None) or ()))
        self.voices = VoiceCatalog(folders)
        self.prompts = PromptCache(self._build_prompt)
        self._asked: "weakref.WeakKeyDictionary[object, _Asked]" = weakref.WeakKeyDictionary()
        self._prompt_waits: Tuple[Tuple[int, object], ...] = ()  # (slot, finished): read by the clock's thread
        self.prompted = self.prompts_refused = 0  # sessions opened with a system prompt; prompt requests refused
        self.adapters_refused = 0  # upgrades refused for naming an adapter the server does not have
        default = self.options.default_adapter
        if default is not None:
            info = self._adapters_info()
            if info["fused"] is not None:
                raise UsageError(f"--default-adapter: adapter {info['fused']} is fused into the weights, every "
                                 "session runs it")
            if default != "none" and default not in info["adapters"]:
                raise UsageError(f"--default-adapter {default}: not one of this server's adapters ("
                                 f"{', '.join(info['adapters']) or 'it has none: --lora FILE'}; or none)")

    async def _engine(self, fn, *args, **kwargs):
        """``fn`` (an engine call) on the worker thread, between two of the clock's steps."""
        def locked():
            with self._engine_lock:
                return fn(*args, **kwargs)

        return await asyncio.get_running_loop().run_in_executor(self._executor, locked)

    # ------------------------------------------------------------------------------------------ lifecycle
    async def start(self):
        ssl_context = tls_context(self.options.ssl_cert, self.options.ssl_key) if self.options.ssl_cert else None
        settings = dict(process_request=self._process_request, max_size=self.options.max_message_bytes,
                        # --origins restricts browsers; other clients send no Origin header
                        origins=[*self.options.origins, None] if self.options.origins else None,
                        compression=None, close_timeout=self.options.close_timeout,
                        max_queue=self.options.read_queue_messages, open_timeout=UPGRADE_TIMEOUT)
        if self.options.unix_socket:
            self._server = await unix_serve(self._handle_counted, self.options.unix_socket, **settings)
        elif self.options.front and front_module.unix_socket_supported():
            path = front_module.private_socket_path()
            self._server = await unix_serve(self._handle_counted, path, **settings)
            await self._start_front(path)
        else:
            self._server = await serve(self._handle_counted, self.options.host, self.options.port, ssl=ssl_context,
                                       **settings)
        loop = asyncio.get_running_loop()  # for this loop only, and put back by stop()
        if self.voices.folders or getattr(self.engine, "tokenizer", None) is not None:
            # The prompt frames' tokens: for a model on another codec than the real Mimi, computed by running its
            # codec (a second or so), here before the clock starts rather than on the first prompt's thread.
            getattr(self.engine, "prompt_constants", None)
        period = self.engine.frame_size / self.engine.sample_rate
        self._ticker = Ticker(self.engine, lambda: self._live, lambda: loop.call_soon_threadsafe(self._take_replies),
                              self.clock, self._engine_lock,
                              max_pending=math.ceil(self.options.reply_max_age / period) + 1, period=period,
                              catch_up=self.options.catch_up_frames, prompting=lambda: self._prompt_waits)
        self._ticker.start()
        self._previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(self._loop_exception)
        where = (f"unix:{self.options.unix_socket}" if self.options.unix_socket else
                 f"{'https' if ssl_context else 'http'}://{self.options.host}:{self.port}")
        log.info("serving on %s (%d slot%s)", where, self.engine.slots, "" if self.engine.slots == 1 else "s")
        if self.voices.folders:
            log.info("voice prompts: %d in %s", len(self.voices.names()), ", ".join(self.voices.folders))
        adapters = self._adapters_info()
        if adapters["adapters"]:
            log.info("LoRA adapters: %s (sessions pick one with ?adapter=NAME; the default is %s; none: the base "
                     "model)", ", ".join(adapters["adapters"]), adapters["default"])
        elif adapters["fused"]:
            log.info("LoRA adapter %s fused into the weights: every session runs it", adapters["fused"])
        return self

    @property
    def port(self) -> int:
        if self._front is not None:
            return self._front["port"]
        if self.options.unix_socket:
            return self.options.port  # not listened on: what the page's address says is the relay's business
        return self._server.sockets[0].getsockname()[1] if self._server else self.options.port

    async def _start_front(self, path: str) -> None:
        """Start the front process (front.py) on the options' address, copying to ``path``; returns once it
        listens, or raises what stopped it (OSError for the address, as listening here would)."""
        process, port = await self._launch_front(path, self.options.port)
        self._front = {"process": process, "path": path, "port": port}
        self._front["watch"] = asyncio.create_task(self._watch_front())

    async def _launch_front(self, path: str, port: int):
        """One front process listening on ``port``: (process, the port it listens on)."""
        import atexit  # noqa: PLC0415 - only a fronted server needs these
        import subprocess  # noqa: PLC0415

        o = self.options
        rates = {"http": (o.http_per_peer, o.http_peer_burst, o.http_total, o.http_total_burst),
                 "upgrades": (o.upgrades_per_peer, o.upgrades_peer_burst, o.upgrades_total, o.upgrades_total_burst)}
        settings = front_module.FrontSettings(o.host, port, path, rates, o.ssl_cert, o.ssl_key, nice=o.front_nice)
        env = dict(os.environ)  # this duplex, wherever it was imported from (a checkout on sys.path, say)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(front_module.__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        process = subprocess.Popen(front_module.command(settings), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   env=env)
        atexit.register(process.kill)  # should this process end without stop(): no front left listening
        line = await asyncio.get_running_loop().run_in_executor(None, _read_line, process.stdout,
                                                                FRONT_START_TIMEOUT)
        try:
            said = json.loads(line) if line else {"error": "the front process ended without a word"}
        except ValueError:
            said = {"error": f"the front process said {line[:200]!r}"}
        if "port" in said:
            return process, said["port"]
        _end_process(process)
        if said.get("errno") is not None:
            raise OSError(said["errno"], said["error"])
        raise FrontError(f"the server's front process did not start: {said['error']}")

    async def _watch_front(self) -> None:
        """Once a second: log what the front counts, as this process logs its own (the 1st, 10th, 100th time, then
        every 1000th), and start another front should it have ended (killed, out of memory): new users must not
        find a server that no longer listens. A file read and a poll: nothing the clock notices."""
        said = dict.fromkeys(front_module.COUNTERS, 0)
        lines = {"rate_limited": ("%d requests refused as too many (HTTP 429)", log.info),
                 "heads_dropped": ("%d connections that sent no request dropped to make room for new ones",
                                   log.warning),
                 "accept_errors": ("cannot accept new connections (%d times so far): the open-files limit or "
                                   "memory is exhausted", log.error)}
        front = self._front
        while True:
            await asyncio.sleep(1.0)
            counts = self._front_counts()
            for name, (text, say) in lines.items():
                if _crossed(said[name], counts[name]):
                    say(text, counts[name])
            said = counts
            if front["process"].poll() is not None:
                log.error("the front process ended (exit status %s), with the connections it held; starting "
                          "another on port %d", front["process"].returncode, front["port"])
                self._front_base = counts  # its counters go on from there
                _end_process(front["process"])
                try:
                    front["process"], _ = await self._launch_front(front["path"], front["port"])
                except (OSError, FrontError) as e:
                    log.error("the front process could not start again (%s); trying again in a second", e)

    def _stop_front(self) -> None:
        """Tell the front to close its connections and end (its stdin closes); wait for it a little, then kill
        it; remove the socket's folder."""
        front = self._front
        if front is None:
            return
        if front.get("watch") is not None:
            front["watch"].cancel()
        _end_process(front["process"])
        self._front_final = self._front_counts()  # for the stop line, after the folder goes
        folder = os.path.dirname(front["path"])
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(folder, name))
        with contextlib.suppress(OSError):
            os.rmdir(folder)

    def _front_counts(self) -> Dict[str, int]:
        if self._front is None:
            return dict.fromkeys(front_module.COUNTERS, 0)
        if self._front_final is not None:
            return self._front_final
        counts = front_module.read_counters(self._front["path"])
        return {name: self._front_base.get(name, 0) + counts[name] for name in counts}

    @property
    def page_url(self) -> str:
        """The browser page's address (with the token, if one is required)."""
        return page_url("https" if self.options.ssl_cert else "http", self.options.host, self.port, self.options.token)

    async def stop(self) -> None:
        """Close every connection (live sessions and waiters get 1001, going away; handshakes under way HTTP 503),
        then log the counters: the last word of a server whose sessions were cut, whatever stopped it."""
        if self._ticker:  # the step under way ends first (its replies are not sent: the connections close next)
            await asyncio.get_running_loop().run_in_executor(None, self._ticker.stop)
        self.admission.close()  # no more position notices: the waiters' connections are closed next
        if self._server:
            self._server.close()
            await self._server.wait_closed()
        if self._front is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._stop_front)
        self._executor.shutdown(wait=True)
        self.prompts.close()
        if self._server:
            asyncio.get_running_loop().set_exception_handler(self._previous_handler)
            log.info("stopped: %s", self.summary())

    def summary(self) -> str:
        """The counters an operator wants in the log when the server stops (those of /api/stats, added up)."""
        stats = self.stats()
        totals = stats["totals"]
        return (f"{self.served} session{'s' if self.served != 1 else ''} served ({self.connections} connections, "
                f"{self.refused} refused), {self.clock.ticks} ticks, {self.clock.misses} late; frames dropped "
                f"{totals['dropped_in']} in ({totals['drained_in']} drained to hold the input near its target) and "
                f"{totals['dropped_out']} out ({totals['stale_audio_dropped']} too old), {totals['underruns']} "
                f"underruns, {totals['late_input']} frames heard late, {totals['bad_messages']} bad messages; "
                f"{stats['rate_limited']} requests refused as too many, {stats['over_capacity']} connections over "
                f"capacity")

    async def drain(self, timeout: float, why: str = "stopping") -> None:
        """Stop admitting (upgrades get HTTP 503, /health says "draining"), send waiting clients away, tell live
        sessions, and let them end on their own for up to ``timeout`` seconds; closing those left is ``stop()``'s.
        Cancelling it ends the wait at once (a second signal)."""
        loop = asyncio.get_running_loop()
        self.draining = True
        log.info("draining (%s): %d live session%s, %d waiting; closing in at most %g s", why, len(self.sessions),
                 "" if len(self.sessions) == 1 else "s", self.waiting, timeout)
        notice = f"the server is shutting down: this conversation ends within {timeout:g} s"
        for session in list(self.sessions.values()):
            session.post(error_message(notice))
        # Waiters would never get a slot now: told at once, they can go to another server rather than wait.
        sent_away = [asyncio.create_task(self._send_away(connection)) for connection in [waiter.connection for waiter in self.admission]]
        deadline = loop.time() + timeout
        try:
            # Polled, not signalled: a drain lasts seconds, and _handle stays as it is.
            while (self.sessions or not all(task.done() for task in sent_away)) and loop.time() < deadline:
                await asyncio.sleep(min(0.1, deadline - loop.time()))
        finally:
            for task in sent_away:  # a waiter still not reading its notice: stop() closes it
                task.cancel()
        if self.sessions:
            log.info("drain time over: closing %d live session%s", len(self.sessions),
                     "" if len(self.sessions) == 1 else "s")

    async def serve_forever(self, on_ready=None, signals=(signal.SIGTERM, signal.SIGINT)) -> Optional[int]:
        """Listen and serve until one of ``signals`` arrives or this is cancelled; ``on_ready(port)`` runs once the
        socket is bound (a port already in use fails before it). A signal drains (``drain``, for the options'
        drain time; a second signal cuts it short), then stops; returns the signal's number (None: cancelled)."""
        await self.start()
        loop = asyncio.get_running_loop()
        received: asyncio.Future = loop.create_future()
        drainer: Optional[asyncio.Task] = None

        def on_signal(number: int) -> None:
            if not received.done():
                received.set_result(number)
            elif drainer is not None:
                log.info("%s during the drain: closing at once", signal.Signals(number).name)
                drainer.cancel()

        installed = []
        for number in signals:
            try:
                loop.add_signal_handler(number, on_signal, number)
                installed.append(number)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # Windows, or not the main thread: Ctrl-C raises KeyboardInterrupt and stops without draining
        try:
            if on_ready is not None:
                on_ready(self.port)
            number = await received
            why = signal.Signals(number).name
            if (self.sessions or self.waiting) and self.options.drain > 0:
                why += "; another SIGTERM or SIGINT closes at once"
            drainer = asyncio.create_task(self.drain(self.options.drain, why))
            await asyncio.wait([drainer])  # returns whether the drain ended or was cut short
            return number
        finally:
            if drainer is not None:  # cancelled mid-drain (KeyboardInterrupt where signals cannot be handled)
                drainer.cancel()
            for number in installed:
                loop.remove_signal_handler(number)
            await self.stop()

    # ----------------------------------------------------------------------------------------------- HTTP
    def _authorized(self, request) -> bool:
        """With a token set: ``?token=`` or ``Authorization: Bearer`` (the scheme in any case, RFC 7235)."""
        if self.options.token is None:
            return True
        offered = parse_query(request.path).token or ""
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            offered = value.strip()
        return hmac.compare_digest(offered.encode(), self.options.token.encode())

    def _peer(self, connection, request) -> str:
        """Whose budget a request spends: its address, or behind a relay on the Unix socket, the address the relay
        names in ``X-Duplex-Peer`` (only local processes reach that socket; without the header, the relay)."""
        if self.options.unix_socket:
            return peer_key(request.headers.get(PEER_HEADER, "").strip())
        address = connection.remote_address
        return peer_key(str(address[0])) if address else ""

    def _rate_limited(self, connection, request, path: str):
        """429 with Retry-After for a peer, or all peers together, past their request rate; else None. Upgrades
        have their own budget, so a page polling /api/stats cannot use up its user's reconnections. /health is
        limited per peer only: a flood from elsewhere must not make the orchestrator think the server is down."""
        peer = self._peer(connection, request)
        limit = self._upgrade_rate if path == "/api/chat" else self._http_rate
        wait = limit.take(peer, count_total=path != "/health")
        if wait == 0.0:
            return None
        self.rate_limited += 1
        if worth_logging(self.rate_limited):
            log.info("%d requests refused as too many (the last from %s)", self.rate_limited, peer)
        response = connection.respond(http.HTTPStatus.TOO_MANY_REQUESTS, "too many requests; try again later\n")
        response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return response

    def _over_capacity(self, connection) -> bool:
        """Whether one more WebSocket connection would pass ``max_connections`` (then it is counted); else it is
        let through and counted as an upgrade under way until _handle takes it. An upgrade that failed after this
        (a bad Origin, a client gone mid-handshake) never reaches _handle: it is forgotten once its connection has
        closed, or after the handshake time limit, looked at only when the cap is reached."""
        if self._handling + len(self._upgrading) >= self.max_connections:
            now = time.monotonic()
            for waiting, since in list(self._upgrading.items()):
                if waiting.state is State.CLOSED or now - since > UPGRADE_TIMEOUT:
                    del self._upgrading[waiting]
            if self._handling + len(self._upgrading) >= self.max_connections:
                self.over_capacity += 1
                if worth_logging(self.over_capacity):
                    log.warning("%d connections refused: %d handled at once already", self.over_capacity,
                                self.max_connections)
                return True
        self._upgrading[connection] = time.monotonic()
        return False

    def _loop_exception(self, loop, context: dict) -> None:
        """The event loop's exception handler while serving: asyncio reports an accept() that failed for want of
        file descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) once a second, as long as it lasts, each time
        with a traceback; that is counted, and logged the 1st, 10th, 100th time, then every 1000th. Anything else
        goes to the handler there was before."""
        error = context.get("exception")
        if context.get("message") == ACCEPT_OUT_OF_RESOURCES and isinstance(error, OSError):
            self.accept_errors += 1
            if worth_logging(self.accept_errors):
                log.error("cannot accept new connections: %s (%d times so far; the open-files limit or memory is "
                          "exhausted; asyncio retries every second)", error.strerror or error, self.accept_errors)
            return
        if self._previous_handler is not None:
            self._previous_handler(loop, context)
        else:
            loop.default_exception_handler(context)

    async def _handle_counted(self, connection) -> None:
        """``_handle``, counted for ``max_connections`` from the end of the upgrade to the connection's end."""
        self._upgrading.pop(connection, None)
        self._handling += 1
        try:
            await self._handle(connection)
        finally:
            self._handling -= 1

    def _http(self, connection, request):
        path = urlsplit(request.path).path
        refused = None if self._front is not None else self._rate_limited(connection, request, path)  # else the front's
        if refused is not None:
            return refused
        if path in ("/", "/index.html"):
            response = connection.respond(http.HTTPStatus.OK, self._page)
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = "text/html; charset=utf-8"
            return response
        if path == "/health":  # no token: what load balancers and orchestrators probe (it tells nothing else)
            if self.draining:
                return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "draining\n")
            return connection.respond(http.HTTPStatus.OK, "ok\n")
        if path in ("/api/stats", "/api/chat", "/api/voices", "/api/adapters") and not self._authorized(request):
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, "invalid or missing token\n")
        if path == "/api/chat" and self.draining:
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE,
                                      "the server is shutting down; try again later\n")
        if path in ("/api/stats", "/api/voices", "/api/adapters"):
            response = connection.respond(http.HTTPStatus.OK, self._stats_json() if path == "/api/stats"
                                          else json.dumps(self._voices_info() if path == "/api/voices"
                                                          else self._adapters_info()))
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = "application/json"
            return response
        if path == "/api/chat":
            options = parse_query(request.path)
            try:
                self._check_adapter(options.adapter)
            except Refusal as e:  # before the capacity count, as a refused prompt
                self.adapters_refused += 1
                if worth_logging(self.adapters_refused):
                    log.info("adapter refused (%d so far): %s", self.adapters_refused, e.reason)
                return connection.respond(http.HTTPStatus(e.status), e.reason + "\n")
            try:
                asked = self._prompt_asked(options)
            except Refusal as e:  # before the capacity count: a refusal costs no connection
                self.prompts_refused += 1
                if worth_logging(self.prompts_refused):
                    log.info("system prompt refused (%d so far): %s", self.prompts_refused, e.reason)
                return connection.respond(http.HTTPStatus(e.status), e.reason + "\n")
            if self._over_capacity(connection):
                response = connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE,
                                              "too many connections; try again later\n")
                response.headers["Retry-After"] = "5"  # about how long a refused waiter's notice may take
                return response
            if asked is not None:
                self._asked[connection] = asked  # built by _process_request, before the handshake
            return None  # go on with the WebSocket handshake
        return connection.respond(http.HTTPStatus.NOT_FOUND, f"not found: {path}\n")

    async def _process_request(self, connection, request):
        """``_http``, then the system prompt an upgrade asked for, built (or found built) before the handshake:
        a voice file that cannot be used is refused as a missing one is, with an HTTP status and the reason."""
        response = self._http(connection, request)
        asked = self._asked.get(connection)
        if response is not None or asked is None:
            return response
        try:
            asked.frames = await self.prompts.get(asked.voice, asked.text)
        except Exception as e:  # PromptError, AudioError: the voice file or the text does not suit the model
            self._asked.pop(connection, None)
            self._upgrading.pop(connection, None)
            self.prompts_refused += 1
            log.warning("system prompt (%s) cannot be built: %s", describe(asked.voice, asked.text), e)
            why = str(e) if isinstance(e, DuplexError) else f"{type(e).__name__}: {e}"
            return connection.respond(http.HTTPStatus.INTERNAL_SERVER_ERROR,
                                      f"the system prompt cannot be used on this server's model: {why}\n")
        return None

    def _prompt_asked(self, options: SessionOptions) -> "Optional[_Asked]":
        """What an upgrade's query asks for as a system prompt (None: nothing), checked; ``Refusal`` otherwise."""
        if options.voice_prompt is None and options.text_prompt is None:
            return None
        text = options.text_prompt
        if text is not None and len(text) > MAX_TEXT_PROMPT_CHARS:
            raise Refusal(400, f"text_prompt is {len(text)} characters long; this server takes at most "
                               f"{MAX_TEXT_PROMPT_CHARS}")
        if text is not None and getattr(self.engine, "tokenizer", None) is None:
            raise Refusal(400, "text_prompt: this server's model has no text tokenizer; leave text_prompt out")
        voice = self.voices.find(options.voice_prompt) if options.voice_prompt is not None else None
        return _Asked(voice, text)

    def _build_prompt(self, voice: Optional[str], text: Optional[str]):
        """On the prompts' own thread, without the engine's lock: the frames only (nothing of the engine's
        state is touched; the slot steps them later, inside the clock's steps)."""
        t0 = time.perf_counter()
        frames = self.engine.system_prompt(voice, text)
        log.info("system prompt built (%s): %d frames, %.0f ms", describe(voice, text), len(frames),
                 (time.perf_counter() - t0) * 1e3)
        return frames

    def _adapter_names(self) -> list:
        """The unfused adapters the engine carries, by name (a stand-in engine has none)."""
        return list(getattr(self.engine, "adapters", None) or [])

    def _adapters_info(self) -> dict:
        """``/api/adapters`` (and ``lora`` in ``/api/stats``): the adapters sessions may pick by name, the one they
        get without asking (None: the base model), and the adapter fused into the weights, if any (then every
        session runs it and there is nothing to pick)."""
        names = self._adapter_names()
        files = getattr(self.engine, "files", None)
        fused = (files.adapter_names()[0] if files is not None and getattr(files, "fuse_lora", False)
                 and getattr(files, "lora_adapters", ()) else None)
        default = self.options.default_adapter
        default = (None if default == "none" else default) if default is not None else (names[0] if names else None)
        return {"adapters": names, "default": default if fused is None else None, "fused": fused}

    def _check_adapter(self, name: Optional[str]) -> None:
        """The adapter an upgrade asks for (``adapter=NAME``): one the engine carries, or "none" (the base model);
        else a ``Refusal`` (404) with the names there are."""
        if name is None:
            return
        info = self._adapters_info()
        if name in info["adapters"] or (name == "none" and info["fused"] is None) or name == info["fused"]:
            return
        shown = repr(name[:80])
        if info["fused"] is not None:
            raise Refusal(404, f"adapter {shown}: this server runs adapter {info['fused']!r} fused into its weights, "
                               "for every session; leave adapter out")
        if not info["adapters"]:
            raise Refusal(404, f"adapter {shown}: this server has no LoRA adapters (duplex serve --lora FILE); leave "
                               "adapter out")
        raise Refusal(404, f"adapter {shown} not found; this server's adapters: {', '.join(info['adapters'])} "
                           "(or none: the base model)")

    def _session_adapter(self, slot: int) -> Optional[str]:
        """The adapter ``slot``'s session runs (its name; None: the base model)."""
        fused = self._adapters_info()["fused"]
        if fused is not None:
            return fused
        slot_adapter = getattr(self.engine, "slot_adapter", None)
        return slot_adapter(slot) if slot_adapter is not None else None

    def _voices_info(self) -> dict:
        """``/api/voices``: the voice names clients may ask for, and whether role texts are taken."""
        persona = bool(getattr(self.engine, "persona", False))
        names = self.voices.names()
        return {"voices": names, "text_prompt": getattr(self.engine, "tokenizer", None) is not None,
                "max_text_prompt_chars": MAX_TEXT_PROMPT_CHARS, "personaplex": persona,
                # what NVIDIA's web client asks for unless told otherwise (its voice only where this server has it)
                "default_voice": "NATF0.pt" if persona and "NATF0.pt" in names else None,
                "default_text_prompt": NVIDIA_ASSISTANT_PROMPT if persona else ""}

    def _stats_json(self) -> str:
        """``stats()`` as JSON, computed at most once per ``STATS_MAX_AGE``: the HTTP handler shares the event loop
        with the 80 ms tick, and each computation sorts up to 1000 step times, so a peer polling /api/stats as fast
        as it can must not turn into that much work (the page polls every 2 s)."""
        now = self._now()
        if self._stats_cache is None or now - self._stats_cache[0] >= STATS_MAX_AGE:
            self._stats_cache = (now, json.dumps(self.stats()))
        return self._stats_cache[1]

    def stats(self) -> dict:
        """Counters since start-up; step times over the last 1000 steps; ``totals`` adds up the per-session
        counters of every session, ended or not (what a load benchmark reads before and after its run)."""
        sessions = list(self.sessions.values())
        totals = {name: getattr(self.closed_totals, name) + sum(getattr(s.stats, name) for s in sessions)
                  for name in SESSION_COUNTERS}
        front = self._front_counts()
        return {"model": self.options.model_name,
                # what runs (docs/quantization.md): {"weights": none | int8 | fp8, "kv": the KV rings' dtype,
                # "compute": the LM's dtype}; None for a stand-in engine without a model
                "quantization": getattr(self.engine, "quantization", None),
                "slots": self.engine.slots, "sessions": len(sessions),
                "free_slots": self.engine.free_slots, "waiting": self.waiting,
                "connections": self.connections, "refused": self.refused,
                "rate_limited": self.rate_limited + front["rate_limited"],
                "over_capacity": self.over_capacity, "accept_errors": self.accept_errors + front["accept_errors"],
                "front": front if self._front is not None else None,
                "admission": dataclasses.asdict(self.admission.counts),
                "prompting": len(self._prompt_waits),
                "prompts": {"sessions": self.prompted, "built": self.prompts.built, "reused": self.prompts.hits,
                            "refused": self.prompts_refused},
                # LoRA adapters (docs/serving.md, "Serving adapters"): those sessions pick from, the default, the
                # fused one; ``refused``: upgrades naming one the server does not have
                "lora": {**self._adapters_info(), "refused": self.adapters_refused},
                "ticks": self.clock.ticks,
                "deadline_misses": self.clock.misses,
                "step_ms_p50": self.clock.work_percentile(50), "step_ms_p99": self.clock.work_percentile(99),
                "totals": totals,
                # each session's counters, and the adapter it runs (None: the base model)
                "per_session": {str(s.slot): {**dataclasses.asdict(s.stats), "adapter": s.adapter}
                                for s in sessions}}

    # ------------------------------------------------------------------------------------------ sessions
    @property
    def waiting(self) -> int:
        return self.admission.waiting

    def _queue_notice(self, position: int) -> bytes:
        return error_message(f"all {self.engine.slots} conversation slots are in use; you are number {position} "
                             "in the queue")

    async def _wake_queue(self) -> None:
        """A slot was freed: the head of the queue (only) is handed it."""
        self.admission.slot_freed()

    async def _open_slot(self, connection, options: SessionOptions, prompt=None) -> Optional[int]:
        """A slot for ``connection``, at once or after waiting in the queue; None if it was refused (the queue is
        full) or went away while waiting. Only the head of the queue tries the engine, once a slot is handed to
        it, so a long queue costs nothing while no slot frees up."""
        seen = self.admission.frees
        if not self.admission.waiting and self.engine.free_slots:  # first come, first served
            try:
                return await self._engine(self.engine.open, **self._open_args(options, prompt))
            except EngineFull:
                pass  # taken meanwhile
        waiter = self.admission.join(connection, seen)
        if waiter is None:
            self.refused += 1
            await self._refuse(connection, f"server full: all {self.engine.slots} conversation slots are in use; "
                                           "try again later")
            return None
        try:
            while await waiter.wait_turn():
                if not self.engine.free_slots:
                    continue  # taken meanwhile (by a client that found the queue empty): no engine call
                try:
                    slot = await self._engine(self.engine.open, **self._open_args(options, prompt))
                except EngineFull:
                    continue
                self.admission.leave(waiter, served=True)
                if self.engine.free_slots:  # more than one slot was freed: the next in line takes one too
                    self.admission.wake_head()
                return slot
            return None  # the client left while waiting
        finally:
            self.admission.leave(waiter)  # (nothing if it was served)

    def _open_args(self, options: SessionOptions, prompt) -> dict:
        args = dict(options.sampling)
        if prompt is not None:
            args["prompt"] = prompt
        # checked before the handshake (_check_adapter); the name of a fused adapter is what every slot runs anyway
        if options.adapter is not None and options.adapter in (*self._adapter_names(), "none"):
            args["adapter"] = options.adapter
        elif options.adapter is None and self.options.default_adapter is not None and self._adapter_names():
            args["adapter"] = self.options.default_adapter  # checked as the server started
        return args

    async def _await_prompt(self, connection, slot: int) -> bool:
        """Until ``slot``'s system prompt is stepped (the clock steps it, one frame a tick, among the talking
        slots): True then, False if the client left first (or the server stopped)."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def finished() -> None:  # on the clock's thread
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(True))

        wait = (slot, finished)
        self._prompt_waits = self._prompt_waits + (wait,)
        closed = asyncio.ensure_future(connection.wait_closed())
        try:
            await asyncio.wait([done, closed], return_when=asyncio.FIRST_COMPLETED)
            return done.done() and connection.state is State.OPEN
        finally:
            closed.cancel()
            self._prompt_waits = tuple(w for w in self._prompt_waits if w is not wait)

    async def _refuse(self, connection, reason: str) -> None:
        """Say why, then close with 1013 (try again later); a client that already left is no error, and one that
        does not read cannot hold this up for longer than the notice timeout."""
        try:
            await asyncio.wait_for(connection.send(error_message(reason)), self.options.notice_timeout)
            await connection.close(1013, "server full")
        except (ConnectionClosed, asyncio.TimeoutError):
            connection.transport.abort()

    async def _send_away(self, connection) -> None:
        """A waiter, when the server starts to drain: say why, then close with 1001 (going away), as ``_refuse``
        does with a full server."""
        try:
            await asyncio.wait_for(connection.send(error_message("the server is shutting down; try again later")),
                                   self.options.notice_timeout)
            await connection.close(1001, "server shutting down")
        except (ConnectionClosed, asyncio.TimeoutError):
            connection.transport.abort()

    async def _handle(self, connection) -> None:
        options = parse_query(connection.request.path)
        asked = self._asked.pop(connection, None)
        prompt = asked.frames if asked is not None else None
        self.connections += 1
        slot = await self._open_slot(connection, options, prompt)
        if slot is None:
            return
        if prompt is not None:
            self.prompted += 1
            left = self.engine.prompting(slot)  # 0: its state was kept, copied in as the slot opened
            log.info("session %d: system prompt (%s): %s", slot, describe(asked.voice, asked.text),
                     f"stepping its {left} frames" if left else "its kept state, at once")
            # The handshake waits for the prompt, as NVIDIA's server's does; the other sessions talk meanwhile.
            if left and not await self._await_prompt(connection, slot):
                log.info("session %d: the client left during its system prompt", slot)
                await self._engine(self.engine.close, slot)
                await self._wake_queue()
                return
        if self.draining:  # a waiter, or a handshake under way, that got a slot as the drain began
            await self._engine(self.engine.close, slot)
            await self._send_away(connection)
            return
        session = sender = None
        try:
            session = Session(connection, slot, options, self.engine.frame_size, self.engine.sample_rate,
                              self.options)
            session.adapter = self._session_adapter(slot)
            sender = asyncio.create_task(session.send_loop())
            log.info("session %d opened (%s%s)", slot, "pcm16" if options.raw else "ogg/opus",
                     f", adapter {session.adapter}" if session.adapter else
                     ", the base model" if self._adapter_names() else "")
            await connection.send(message(HANDSHAKE))
            self._set_session(slot, session)
            self.served += 1
            budget = ReadBudget(self.options.read_messages_per_second,
                                self.options.read_realtime_factor * 2 * self.engine.sample_rate,
                                self.options.max_message_bytes)
            async for data in connection:
                problem = session.receive(data)
                if problem:
                    if worth_logging(session.stats.bad_messages):
                        log.info("session %d: %s (%d bad messages so far)", slot, problem, session.stats.bad_messages)
                    session.post(error_message(problem))
                # Audio costs what it decodes to (2 bytes a sample, as PCM16), whatever its compressed size.
                pause = budget.spend(max(len(data), 2 * session.last_audio_samples))
                if budget.throttled_for + pause > self.options.max_throttled_seconds:
                    # A flood, not jitter: reading its backlog at the budget's pace would hold the slot for ages.
                    log.warning("session %d: closed, the client keeps sending far faster than real time", slot)
                    await connection.close(1008, "sending too fast")
                    break
                if pause > 0:  # read nothing meanwhile: TCP slows the client down
                    until = time.monotonic() + pause
                    while connection.state is State.OPEN and time.monotonic() < until:
                        await asyncio.sleep(min(0.1, until - time.monotonic()))  # a client that leaves frees
                        # its slot at once, not after the pause
                if connection.state is not State.OPEN:  # closing: what is still buffered is not worth reading
                    break
        except Exception as e:  # a broken connection ends this session only
            log.info("session %d: connection ended (%s)", slot, type(e).__name__)
        finally:
            self._set_session(slot, None)
            if session is not None:  # at once: a stats() call during the awaits below must still count it
                for name in SESSION_COUNTERS:
                    setattr(self.closed_totals, name, getattr(self.closed_totals, name) + getattr(session.stats, name))
            if sender is not None:
                sender.cancel()
                # collected, so that a send loop that had already failed (the client left) logs no
                # "exception never retrieved"
                await asyncio.gather(sender, return_exceptions=True)
            await self._engine(self.engine.close, slot)
            await self._wake_queue()  # the first in the queue takes the slot
            if session is not None:
                log.info("session %d closed: %s", slot, dataclasses.asdict(session.stats))

    # -------------------------------------------------------------------------------------------- clock
    def _set_session(self, slot: int, session: Optional[Session]) -> None:
        """Start (or, with None, stop) stepping ``slot``'s session: the clock's thread reads ``_live``, a tuple
        replaced as a whole, so it sees a session list from before or after, never one half changed."""
        if session is None:
            self.sessions.pop(slot, None)
        else:
            self.sessions[slot] = session
        self._live = tuple(self.sessions.values())

    def _take_replies(self) -> None:
        """On the event loop, when the clock has replies for it: queue each tick's replies in its sessions'
        outboxes (stamped with the tick's time, so they age from then), and count those the loop took too long to
        take. A session that ended (or whose slot was given to another) since its tick gets nothing."""
        pending, expired = self._ticker.take()
        for session, count in expired.items():
            if self.sessions.get(session.slot) is session:
                session.count_expired(count)
        for stamp, sessions, outputs in pending:
            for session in sessions:
                if session.slot in outputs and self.sessions.get(session.slot) is session:
                    audio, text = outputs[session.slot]
                    session.deliver(audio, text, at=stamp)


@dataclasses.dataclass(eq=False)
class _Asked:
    """The system prompt an upgrade asked for: the voice file (or None) and the role text (or None); ``frames``
    once built."""

    voice: Optional[str]
    text: Optional[str]
    frames: object = None
