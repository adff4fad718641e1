"""``duplex bench serve --flood KIND``: one live time-synchronous client talks to a voice server while flooder
processes hit the same server with requests that need no token, so the cost of the flood shows as the server's
late ticks and the live client's gaps and late replies (issue 23: plain HTTP and queue churn stopped everyone's
clock).

Kinds of flood (``peers`` flooders, each one request at a time, in their own process so the flood does not share an
event loop with the live client or the server):

- ``stats``: ``GET /api/stats`` (1 peer: one request at a time; 100 peers: 100 concurrent requests);
- ``404``: ``GET`` of a path the server does not have;
- ``upgrade``: WebSocket upgrades the server refuses (a path it does not have);
- ``churn``: a client joins the admission queue (the live client holds the only slot) and leaves at once, again
  and again (needs a server with a queue and every slot taken: one started here has 1 slot and a queue; against
  a running server with a free slot the churner takes a slot instead, and with no queue each join is refused and
  counted as failed).

Flooder processes are torch-free (asyncio streams and websockets only), as the bench serve clients are.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import platform
import queue as queue_module
import sys
import time
from typing import Callable, Optional
from urllib.parse import urlsplit

from websockets.asyncio.client import connect

from ..serving.client import chat_url
from .serve import _get, fetch_stats, format_report, run_clients, serve_here, verdict, where

KINDS = ("stats", "404", "upgrade", "churn")
PATHS = {"stats": "/api/stats", "404": "/duplex-bench-no-such-path", "upgrade": "/api/chat-no-such-path"}
CHURN_QUEUE = 50  # places in the queue of a server started here for the churn flood (the measurement)
REQUEST_TIMEOUT = 10.0  # seconds: a request the server does not answer by then counts as failed, not as done


def _request(kind: str, host: str, port: int, token: Optional[str]) -> bytes:
    """The raw HTTP/1.1 request of one flood request: a plain GET, or for ``upgrade`` a complete WebSocket
    handshake request (so the server does all of a handshake's work before refusing it)."""
    path = PATHS[kind] + (f"?token={token}" if token and kind == "stats" else "")
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}"]
    if kind == "upgrade":
        lines += ["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                  "Sec-WebSocket-Version: 13"]
    else:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _http_once(host: str, port: int, request: bytes, source=None) -> bool:
    """One request on a fresh connection, read to its end (the server closes it); True if a status line came (a 429
    of the server's rate limits among them: answering it is the work the flood makes)."""
    reader, writer = await asyncio.open_connection(host, port, local_addr=source)
    try:
        writer.write(request)
        await writer.drain()
        data = await reader.read()
        return data.startswith(b"HTTP/1.1 ")
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def _churn_once(url: str, source=None) -> bool:
    """Join the queue (a server with every slot taken sends a queue notice first), then leave at once."""
    async with connect(url, open_timeout=REQUEST_TIMEOUT, close_timeout=1.0, local_addr=source) as ws:
        await asyncio.wait_for(ws.recv(), REQUEST_TIMEOUT)
    return True


async def flood(url: str, kind: str, peers: int, stop, token: Optional[str] = None) -> dict:
    """Run ``peers`` flooders of ``kind`` until ``stop`` (a multiprocessing Event) is set; counts of requests
    answered and failed, and the seconds it ran."""
    parts = urlsplit(chat_url(url))
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "wss" else 80)
    request = b"" if kind == "churn" else _request(kind, host, port, token)
    chat = chat_url(url, token=token)
    counts = {"requests": 0, "failed": 0}
    # Against this machine the flooder is a peer of its own (127.0.0.2: all of 127/8 is loopback on Linux), as it
    # would be on the network: the server's per-peer rate limits then stop it, not the live client's and the
    # report's own requests from 127.0.0.1.
    source = ("127.0.0.2", 0) if host == "127.0.0.1" and sys.platform.startswith("linux") else None

    async def peer():
        while not stop.is_set():
            try:
                if kind == "churn":
                    ok = await _churn_once(chat, source)
                else:
                    ok = await asyncio.wait_for(_http_once(host, port, request, source), REQUEST_TIMEOUT)
            except Exception:  # refused, reset, timed out, closed by the server: counted, and the flood goes on
                ok = False
            counts["requests" if ok else "failed"] += 1
            if not ok:
                await asyncio.sleep(0.01)  # a refusing server is not hammered by a busy loop of errors

    start = time.perf_counter()
    await asyncio.gather(*(peer() for _ in range(peers)))
    return {**counts, "seconds": time.perf_counter() - start}


def _flood_main(url: str, kind: str, peers: int, token: Optional[str], ready, go, stop, results) -> None:
    """One flooder process: wait for the common start, flood until told to stop, report its counts."""
    try:
        ready.put(True)
        if not go.wait(300):
            raise TimeoutError("the benchmark never gave the start signal")
        results.put(asyncio.run(flood(url, kind, peers, stop, token)))
    except BaseException as e:  # reported, not raised
        results.put({"exception": f"{type(e).__name__}: {e}"})


async def _started(process, ready, timeout: float = 120.0) -> None:
    """Wait for the flooder's ready signal; a flooder that died starting (an import error) ends the wait at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await _get(ready, 0.5)
        except queue_module.Empty:
            if not process.is_alive() or time.monotonic() >= deadline:
                raise RuntimeError(f"the flooder process did not start (exit code {process.exitcode})") from None


async def run_flood(url: str, kind: str, peers: int, seconds: float, token: Optional[str] = None,
                    formats: str = "opus", nice: int = 10,
                    progress: Optional[Callable[[str], None]] = None) -> dict:
    """Start the flooder process, then one live client talking for ``seconds`` while it floods; report both."""
    loop = asyncio.get_running_loop()
    context = multiprocessing.get_context("spawn")
    ready, go, stop, results = context.Queue(), context.Event(), context.Event(), context.Queue()
    process = context.Process(target=_flood_main, args=(url, kind, peers, token, ready, go, stop, results),
                              daemon=True, name="bench-flooder")
    flood_report, live_task = None, None
    try:
        process.start()
        await _started(process, ready)
        live_task = asyncio.ensure_future(run_clients(url, 1, seconds, formats, nice, token, progress))
        # The flood starts once the live client holds its slot: a churner must never take it first.
        while not live_task.done() and (await loop.run_in_executor(None, fetch_stats, url, token))["sessions"] < 1:
            await asyncio.sleep(0.05)
        progress and progress(f"flooding ({kind}, {peers} peer{'s' if peers != 1 else ''})")
        go.set()
        live = await live_task
        stop.set()
        try:
            flood_report = await _get(results, REQUEST_TIMEOUT + 10)
        except queue_module.Empty:
            flood_report = {"exception": "no report: the flooder hung"}
    finally:
        if live_task is not None and not live_task.done():  # the server stopped answering: the client stops too
            live_task.cancel()
            with contextlib.suppress(BaseException):
                await live_task
        go.set()
        stop.set()
        process.join(5.0)
        if process.is_alive():
            process.kill()
            process.join(1.0)
    if "exception" not in flood_report:
        flood_report["rate"] = round(flood_report["requests"] / max(flood_report["seconds"], 1e-9), 1)
        flood_report["seconds"] = round(flood_report["seconds"], 2)
    return {"client": live["clients"][0], "server": live["server"], "flood": {"kind": kind, "peers": peers,
                                                                             **flood_report}}


def flood_server(engine=None, url: Optional[str] = None, kind: str = "stats", peers: int = 1,
                 seconds: float = 20.0, token: Optional[str] = None, nice: int = 10, server_options=None,
                 progress: Optional[Callable[[str], None]] = None) -> dict:
    """Flood ``url``, or a VoiceServer on ``engine`` started here (one slot is used by the live client; for
    ``churn`` it gets a queue of CHURN_QUEUE places), while one live client talks for ``seconds``."""
    if kind not in KINDS:
        raise ValueError(f"the flood kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if (engine is None) == (url is None):
        raise ValueError("give an engine to serve or the url of a running server, not both")
    if peers < 1 or not seconds > 0:
        raise ValueError("peers must be >= 1 and seconds > 0")
    report = {"benchmark": "flood", "kind": kind, "peers": peers, "seconds": seconds, "client_nice": nice,
              "client_host": f"{platform.node()}, {os.cpu_count()} cores"}

    def work(address):
        return run_flood(address, kind, peers, seconds, token, nice=nice, progress=progress)

    if url is not None:
        report.update(url=url, **asyncio.run(work(url)))
        return report
    options = {"max_waiting": max(CHURN_QUEUE, peers)} if kind == "churn" else {}
    report.update(serve_here(engine, work, server_options, token=token, **options))
    return report


def format_flood_report(report: dict) -> str:
    """What ``duplex bench serve --flood`` prints: a title line, a table of the live client, the server and the
    flood during it, and one line saying whether the live session kept its clock."""
    c, s, f = report["client"], report["server"], report["flood"]
    rows = [f"# flood -- {report['kind']} x {report['peers']} peer{'s' if report['peers'] != 1 else ''}, "
            f"{report['seconds']:g} s, against {where(report)}"]
    if "exception" in c:
        rows.append(f"live client: failed: {c['exception']}")
    else:
        gap = "-" if c["max_gap_ms"] is None else f"{c['max_gap_ms']:.0f}"
        late = "-" if c["max_lateness_ms"] is None else f"{c['max_lateness_ms']:.0f}"
        rows += [f"{'ticks':>6} {'late':>5} {'replies/sent':>12} {'max gap ms':>10} {'late replies':>12} "
                 f"{'max late ms':>11} {'flood req':>9} {'failed':>6} {'req/s':>7}"]
        flood_cols = (f"{'-':>9} {'-':>6} {'-':>7}" if "exception" in f else
                      f"{f['requests']:>9} {f['failed']:>6} {f['rate']:>7.1f}")
        rows.append(f"{s['ticks']:>6} {s['late_ticks']:>5} {c['replies']:>8}/{c['frames_sent']:<3} {gap:>10} "
                    f"{c['late_replies']:>12} {late:>11} {flood_cols}")
    if "exception" in f:
        rows.append(f"flooder: failed: {f['exception']}")
    rows.append(flood_verdict(report))
    return "\n".join(rows)


def flood_verdict(report: dict) -> str:
    """Issue 23's goal for a live session under a flood: at most 1% late ticks, never a gap over 200 ms."""
    c, s = report["client"], report["server"]
    if "exception" in c:
        return "NOT measured: the live client failed"
    late = s["late_ticks"] / max(1, s["ticks"])
    gap = c["max_gap_ms"] or 0.0
    if late <= 0.01 and gap <= 200 and not c["lost"]:
        return f"clock kept: {late:.1%} late ticks, largest gap {gap:.0f} ms"
    return (f"clock NOT kept: {late:.1%} late ticks (goal 1%), largest gap {gap:.0f} ms (goal 200), "
            f"{c['lost']} replies lost")


def process_resources() -> Optional[dict]:
    """This process's resident memory (MiB) and open file descriptors, from /proc (None where there is none)."""
    try:
        with open("/proc/self/status") as status:
            rss_kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        return {"rss_mib": round(rss_kib / 1024, 1), "fds": len(os.listdir("/proc/self/fd"))}
    except (OSError, StopIteration, ValueError):
        return None


def soak_server(engine=None, url: Optional[str] = None, clients: int = 4, minutes: float = 15.0,
                formats: str = "mixed", nice: int = 10, token: Optional[str] = None,
                progress: Optional[Callable[[str], None]] = None) -> dict:
    """``clients`` time-synchronous clients for ``minutes`` against ``url`` or a server on ``engine`` started here;
    the load report of bench serve, plus (for a server started here, which runs in this process) its resident
    memory and open descriptors once it listens and again once every client has left: what a long run leaks."""
    if (engine is None) == (url is None):
        raise ValueError("give an engine to serve or the url of a running server, not both")
    if clients < 1 or not minutes > 0:
        raise ValueError("clients must be >= 1 and minutes > 0")
    seconds = minutes * 60
    report = {"benchmark": "soak", "clients_count": clients, "seconds": seconds, "minutes": minutes,
              "formats": formats, "client_nice": nice, "client_host": f"{platform.node()}, {os.cpu_count()} cores"}

    async def work(address):
        start = process_resources() if engine is not None else None
        result = await run_clients(address, clients, seconds, formats, nice, token, progress)
        end = process_resources() if engine is not None else None
        return {**result, "server_process": {"start": start, "end": end} if start and end else None}

    if url is not None:
        report.update(url=url, **asyncio.run(work(url)))
    else:
        if engine.slots < clients:
            raise ValueError(f"{clients} clients need {clients} slots; the engine has {engine.slots}")
        report.update(serve_here(engine, work, token=token))
    report["verdict"] = verdict(report)
    return report


def format_soak_report(report: dict) -> str:
    """The bench serve table for the soak, with the server process's memory and descriptors at start and end."""
    rows = format_report(report).splitlines()
    rows[0] = rows[0].replace("# serve", "# soak", 1)
    resources = report.get("server_process")
    if resources:
        start, end = resources["start"], resources["end"]
        line = (f"server process: RSS {start['rss_mib']:.1f} -> {end['rss_mib']:.1f} MiB "
                f"({end['rss_mib'] - start['rss_mib']:+.1f}), open fds {start['fds']} -> {end['fds']}")
    else:
        line = "server process: not measured (a server elsewhere)"
    return "\n".join(rows[:-1] + [line, rows[-1]])
