"""``ServerOptions``: what an operator sets (address, token, origins, TLS, the per-connection limits); the TLS
context and the listening port, checked before the model loads (minutes) rather than after; the slot count a
machine runs in real time; the page's address."""

from __future__ import annotations

import os
import socket
import ssl as ssl_module
import urllib.parse
from dataclasses import dataclass
from typing import List, Optional

from ..errors import UsageError


@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8998
    token: Optional[str] = None  # required from clients when set (?token= or "Authorization: Bearer")
    origins: Optional[List[str]] = None  # allowed Origin headers (None: any)
    max_message_bytes: int = 1 << 20  # larger incoming messages close the connection (1009)
    read_queue_messages: int = 4  # received, not yet handled (a paused reader): then TCP pushes back
    max_waiting: int = 0  # clients that may wait for a free slot (0: refuse at once)
    input_buffer_frames: int = 10  # 800 ms of received audio at most (network jitter); older frames are dropped
    # The input depth the server holds a session near (session.py, ``next_frame``): a backlog that stays above it
    # for a whole window (not a burst that drains by itself) is dropped down to it, oldest first, so a stall or a
    # client clock that runs fast costs the user's latency for at most about a window, not for the rest of the call.
    input_target_frames: int = 2  # 160 ms: the jitter the network and the client's own clock add
    input_drain_ticks: int = 25  # 2 s: the window over which the depth must stay above the target
    # A tick late by at most this many periods is made up by ticks back to back (its clients' frames are all heard,
    # all their replies made); a later one (a stall) is not: the schedule starts again from then (runtime/clock.py).
    catch_up_frames: float = 3.0
    output_queue_messages: int = 64  # ~2.5 s of replies at most; older messages are dropped
    # A client that falls behind gets no audio older than this (s) when it reads again: older replies are dropped
    # from its outbox (text is kept), and what sits below the outbox is bounded by send_buffer_frames.
    reply_max_age: float = 1.0
    send_buffer_frames: int = 4  # websockets' write buffer and the socket's send buffer, each: ~4 replies of audio
    # How fast one connection's messages are read: past this the server stops reading it for a while, so TCP
    # pushes back on a client that floods (it would otherwise take the event loop, and the GIL, from everyone).
    read_messages_per_second: float = 1000.0  # Opus clients send ~12-50 pages a second, PCM ones any chunk size
    read_realtime_factor: float = 4.0  # bytes: 4x raw 16-bit PCM in real time
    max_throttled_seconds: float = 5.0  # a client this far over its budget is closed (1008)
    max_ogg_pages: int = 256  # per Ogg/Opus message (~10 s of a usual stream); a message with more is dropped
    max_opus_packets: int = 1024
    close_timeout: float = 2.0  # how long a closing handshake may take before the connection is dropped
    notice_timeout: float = 5.0  # a refused or queued client that does not take a notice within this is dropped
    # On SIGTERM or SIGINT, live sessions may go on for this long before they are closed (1001): long enough for a
    # reply to finish, short enough that the drain and the closing handshakes (close_timeout) fit in the 10 s
    # ``docker stop`` waits before SIGKILL (Kubernetes waits 30 s, systemd 90 s by default).
    drain: float = 5.0
    # Requests per peer (client address) and for all peers together, each a rate a second and a burst; past them
    # a request gets 429 with Retry-After. The page asks for itself once and /api/stats every 2 s; a load test
    # from one machine opens its sessions in a burst. Behind a reverse proxy every client is the proxy's address:
    # raise the per-peer limits to the total ones there.
    http_per_peer: float = 10.0  # HTTP requests (the page, /api/stats, /health, 404s) a second, per peer
    http_peer_burst: float = 40.0
    http_total: float = 500.0  # ... for all peers together (/health counts only per peer: probes get through)
    http_total_burst: float = 1000.0
    upgrades_per_peer: float = 2.0  # WebSocket upgrades (/api/chat) a second, per peer
    upgrades_peer_burst: float = 20.0
    upgrades_total: float = 50.0  # ... for all peers together
    upgrades_total_burst: float = 100.0
    # WebSocket connections handled at once (sessions, waiters, upgrades under way); more get 503 at once.
    # None: the slots, plus max_waiting, plus 64 handshakes.
    max_connections: Optional[int] = None
    # The listening socket, the request heads and the rate limits in a process of their own (front.py), so that
    # requests, however many, never take the GIL from the frame clock. ``duplex serve`` turns it on.
    front: bool = False
    front_nice: int = 0  # added to the front's niceness (Linux): the clock's process first when the cores are short
    # Listen on this Unix socket instead of host:port, for a relay on the same machine (a Ray Serve replica,
    # duplex/cluster/, or a reverse proxy): the peer a request comes from is then its ``X-Duplex-Peer`` header
    # (only local processes reach the socket), and the rate limits apply to that peer as to a TCP one.
    unix_socket: Optional[str] = None
    ssl_cert: Optional[str] = None
    ssl_key: Optional[str] = None
    model_name: str = ""  # what the page and /api/stats say is being served
    # Where the voices clients name (``voice_prompt=NATF2.pt``) are looked up; None: the model's own voice folders
    # (``engine.files.voice_prompts``: a PersonaPlex repository's voices.tgz, the default model's voices/)
    voice_prompt_dir: Optional[str] = None
    # The LoRA adapter a session runs when it names none (``adapter=``): an adapter's name, or "none" (the base
    # model); None: the engine's first adapter
    default_adapter: Optional[str] = None


# With ``duplex serve --ray``, the default --drain: how long an engine the autoscaler removes (or the whole
# application, stopping) lets its live conversations go on; a call rarely lasts longer (docs/scaling.md).
CLUSTER_DRAIN = 600.0


def quantization_text(quantization: Optional[dict]) -> str:
    """What ``Engine.quantization`` says, for people (the server's log, the benchmarks' reports; the page words it
    the same way): "int8 weights, fp8 KV", "bfloat16 weights, bfloat16 KV"; "" when unknown."""
    if not quantization:
        return ""
    weights = quantization.get("weights")
    weights = quantization.get("compute") if weights in (None, "none") else weights
    return f"{weights} weights, {quantization.get('kv')} KV"


def tls_context(cert: str, key: Optional[str]) -> ssl_module.SSLContext:
    """The server's TLS context, or a UsageError that names the file at fault."""
    for what, path in (("TLS certificate", cert), ("TLS private key", key)):
        if not path or not os.path.isfile(path):
            raise UsageError(f"{what} {path}: no such file")
    context = ssl_module.SSLContext(ssl_module.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (ssl_module.SSLError, OSError) as e:
        raise UsageError(f"TLS certificate {cert} with private key {key}: not a PEM certificate and its private key "
                         f"({e.reason if getattr(e, 'reason', None) else e})") from None
    return context


# About two conversations per CPU core run in real time with the default model (docs/serving.md, "How many
# slots"); more slots than that make every session late, since every slot costs compute each frame, in use or
# not. On a GPU a step costs about the same for 1 or 8 slots.
SESSIONS_PER_CPU_CORE = 2
MAX_DEFAULT_SLOTS = 8


def default_slots(device_type: str, cpu_cores: Optional[int]) -> int:
    """The slot count ``duplex serve`` uses when none is given: 8 on CUDA; on the CPU two per core, 1 to 8."""
    if device_type == "cuda":
        return MAX_DEFAULT_SLOTS
    return max(1, min(MAX_DEFAULT_SLOTS, SESSIONS_PER_CPU_CORE * (cpu_cores or 1)))


def default_engine_threads(device_type: str, cpu_cores: Optional[int]) -> Optional[int]:
    """The engine's CPU threads when a server runs and none are given: on the CPU, all cores but one (at least 1),
    which is left to the network (the front, the event loop, Opus); None (torch's choice) on CUDA. Every thread of
    the step waits for the others at each operation, so one that loses its core to network work stalls the whole
    step. Measured (2026-12-04, 2 cores, default model, docs/serving.md): 4 sessions, step p50 39 ms and 1 late
    tick in 754 with 1 thread, 57 ms and 28 late with 2; under a request flood p99 41 ms against 89 ms."""
    if device_type == "cuda":
        return None
    return max(1, (cpu_cores or 1) - 1)


def usable_cpu_cores() -> int:
    """The cores this process may run on (its affinity, where the system says; else all of them)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def check_port_free(host: str, port: int) -> None:
    """Raise the OSError that listening on ``host``:``port`` would raise (the port in use, an address not of this
    machine, a name that does not resolve: ``socket.gaierror``), so that it comes before the model loads, not
    minutes later. Binds as asyncio does, with SO_REUSEADDR, so a port in TIME_WAIT is no obstacle; port 0 (any
    free port) always passes."""
    if port == 0:
        return
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                              flags=socket.AI_PASSIVE):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as asyncio binds it: IPv6 only, the IPv4 address is checked apart
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind(address)


def page_url(scheme: str, host: str, port: int, token: Optional[str] = None) -> str:
    """The browser page's address, with the token the page passes on to the WebSocket (a server listening on all
    addresses, or on the loopback one, is ``localhost`` to a browser on the same machine)."""
    host = "localhost" if host in ("127.0.0.1", "0.0.0.0") else host
    query = "?token=" + urllib.parse.quote(token, safe="") if token else ""
    return f"{scheme}://{host}:{port}/{query}"
