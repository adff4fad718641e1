"""``duplex bench serve``: N clients x S seconds against a voice server, each client time-synchronous (one 80 ms
frame per 80 ms, as a person talking) in its own process.

Per client it reports the replies against the frames sent (lost = no reply came), the sustained reply rate, and
the replies that came more than one frame late against the client's own schedule; for the server, the ticks it
missed its deadline on, its step time, and what its sessions dropped (input frames from a client sending faster
than real time, replies a client did not read) or filled with silence (underruns). Against a server it starts,
or ``url`` of a running one. Numbers depend on the machine: this is a benchmark, not a test.

Client processes are imported without torch (``duplex.serving.client`` is numpy, websockets and sphn), so 20 of them
start in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import math
import multiprocessing
import os
import platform
import queue as queue_module
import time
import urllib.request
from typing import Callable, List, Optional

import numpy as np

from ..runtime.realtime import freeze_startup_objects
from ..serving.client import chat_url, converse
from ..serving.options import quantization_text
from ..serving.protocol import FRAME_SECONDS, FRAME_SIZE, SAMPLE_RATE

FORMATS = ("mixed", "opus", "pcm16")
COUNTERS = ("frames_in", "steps", "underruns", "dropped_in", "dropped_out", "bad_messages", "drained_in",
            "late_input")


def client_signal(index: int, seconds: float) -> np.ndarray:
    """Speech-like test input: a voiced tone with a moving pitch, in syllable-long bursts, one voice per client."""
    t = np.arange(int(round(seconds * SAMPLE_RATE))) / SAMPLE_RATE
    f0 = 110 + 17 * (index % 9)
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 5))
    syllables = np.clip(np.sin(2 * np.pi * 3.1 * t + index), 0, None)
    return (0.25 * voiced * syllables).astype(np.float32)


def lateness_ms(reply_times: List[float]) -> np.ndarray:
    """How far behind schedule each reply came: reply k is due one period after reply k-1, the schedule anchored
    on the earliest reply (the one with the least delay)."""
    if not reply_times:
        return np.zeros(0)
    t = np.asarray(reply_times) - FRAME_SECONDS * np.arange(len(reply_times))
    return (t - t.min()) * 1e3


def reply_delays_ms(result) -> np.ndarray:
    """Reply k's arrival after input frame k was sent (frames go out every 80 ms from the handshake): the clock's
    phase against the client's (0-80 ms, fixed for a session), the step, and the way back. Its median over many
    sessions compares two paths to the same engines (a relay adds its time to every reply)."""
    t = np.asarray(result.reply_times)
    return (t - (result.started + FRAME_SECONDS * np.arange(len(t)))) * 1e3 if len(t) else np.zeros(0)


def _client_report(result, frames: int, raw: bool) -> dict:
    late = lateness_ms(result.reply_times)
    delays = reply_delays_ms(result)
    return {"format": "pcm16" if raw else "opus", "frames_sent": frames, "replies": result.audio_messages,
            "lost": max(0, frames - result.audio_messages), "steady_rate": round(result.steady_rate(), 3),
            "late_replies": int((late > FRAME_SECONDS * 1e3).sum()),
            "max_lateness_ms": round(float(late.max()), 1) if late.size else None,
            "max_gap_ms": round(float(np.diff(result.reply_times).max()) * 1e3, 1)
            if len(result.reply_times) > 1 else None,
            "reply_delay_ms": {"p50": round(float(np.percentile(delays, 50)), 1),
                               "p99": round(float(np.percentile(delays, 99)), 1)} if delays.size else None,
            "errors": list(result.errors), "complete": result.complete}


def _client_main(url: str, index: int, raw: bool, seconds: float, nice: int, token: Optional[str],
                 ready, go, results) -> None:
    """One simulated user, in its own process: wait for the common start, then talk for ``seconds``."""
    try:
        if nice:
            os.nice(nice)
        pcm = client_signal(index, seconds)
        ready.put(index)
        if not go.wait(300):
            raise TimeoutError("the benchmark never gave the start signal")
        result = asyncio.run(converse(url, pcm, raw=raw, token=token))
        results.put((index, _client_report(result, math.ceil(len(pcm) / FRAME_SIZE), raw)))
    except BaseException as e:  # reported, not raised: the other clients go on
        results.put((index, {"format": "pcm16" if raw else "opus", "exception": f"{type(e).__name__}: {e}"}))


def fetch_stats(url: str, token: Optional[str] = None, timeout: float = 10.0) -> dict:
    """The server's /api/stats (``url`` is its ws://, http:// or bare host:port address)."""
    http = chat_url(url).replace("ws://", "http://", 1).replace("wss://", "https://", 1)
    http = http.split("?", 1)[0].rsplit("/api/chat", 1)[0] + "/api/stats"
    request = urllib.request.Request(http, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _server_report(before: dict, after: dict) -> dict:
    # A counter a server does not have (an older build, measured side by side) is None.
    totals = {name: after["totals"][name] - before["totals"][name] if name in after["totals"] else None
              for name in COUNTERS}
    return {"slots": after["slots"], "ticks": after["ticks"] - before["ticks"],
            "late_ticks": after["deadline_misses"] - before["deadline_misses"],
            "step_ms": {"p50": after["step_ms_p50"], "p99": after["step_ms_p99"]},
            "sessions_after": after["sessions"], **totals,
            # what the server runs, as its /api/stats says (an older build does not say)
            "model": after.get("model"), "quantization": after.get("quantization")}


async def _get(q, timeout: float):
    """``q.get()`` within ``timeout`` seconds, polled from the event loop: no thread blocks on the queue, so a
    Ctrl-C (which cancels the waiting task) ends the run at once instead of waiting for a thread that cannot be
    interrupted (asyncio.run joins its executor's threads before it returns)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return q.get_nowait()
        except queue_module.Empty:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.05)


async def run_clients(url: str, clients: int, seconds: float, formats: str = "mixed", nice: int = 10,
                      token: Optional[str] = None, progress: Optional[Callable[[str], None]] = None) -> dict:
    """Start ``clients`` client processes, let them all talk for ``seconds`` at once, and report."""
    if formats not in FORMATS:
        raise ValueError(f"formats must be one of {', '.join(FORMATS)}, got {formats!r}")
    loop = asyncio.get_running_loop()
    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    raw = [formats == "pcm16" or (formats == "mixed" and i % 2 == 1) for i in range(clients)]
    processes = [context.Process(target=_client_main, args=(url, i, raw[i], seconds, nice, token, ready, go, results),
                                 daemon=True, name=f"bench-client-{i}") for i in range(clients)]
    reports: List[Optional[dict]] = [None] * clients
    finished = False
    try:
        for p in processes:
            p.start()
        for _ in range(clients):  # every process has imported what it needs before anyone starts talking
            await _get(ready, 120)
        before = await loop.run_in_executor(None, fetch_stats, url, token)
        progress and progress(f"{clients} client{'s' if clients != 1 else ''} talking for {seconds:g} s")
        start = time.perf_counter()
        go.set()
        deadline = seconds + 90  # the handshake, the last replies, a slow machine
        for _ in range(clients):
            remaining = max(1.0, deadline - (time.perf_counter() - start))
            try:
                index, report = await _get(results, remaining)
            except queue_module.Empty:
                break
            reports[index] = report
        after = await loop.run_in_executor(None, fetch_stats, url, token)
        for _ in range(50):  # sessions close a moment after their clients leave
            if after["sessions"] == 0:
                break
            await asyncio.sleep(0.1)
            after = await loop.run_in_executor(None, fetch_stats, url, token)
        finished = True
    finally:
        go.set()
        # Finished, the clients are leaving on their own; interrupted (Ctrl-C), they are stopped at once.
        deadline = time.monotonic() + (5.0 if finished else 0.0)
        for p in processes:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(1.0)
    for i, report in enumerate(reports):
        if report is None:
            reports[i] = {"format": "pcm16" if raw[i] else "opus", "exception": "no report: the process hung"}
    return {"clients": [{"client": i, **r} for i, r in enumerate(reports)], "server": _server_report(before, after)}


def bench_serve(engine=None, url: Optional[str] = None, clients: int = 4, seconds: float = 10.0,
                formats: str = "mixed", nice: int = 10, token: Optional[str] = None, server_options=None,
                progress: Optional[Callable[[str], None]] = None) -> dict:
    """Run the load against ``url``, or against a VoiceServer on ``engine`` started here on a free loopback port
    (``server_options``: a ServerOptions, its host and port replaced)."""
    if (engine is None) == (url is None):
        raise ValueError("give an engine to serve or the url of a running server, not both")
    if clients < 1 or not seconds > 0:
        raise ValueError("clients must be >= 1 and seconds > 0")
    report = {"benchmark": "serve", "clients_count": clients, "seconds": seconds, "formats": formats,
              "client_nice": nice, "client_host": f"{platform.node()}, {os.cpu_count()} cores"}
    if url is not None:
        report.update(url=url, **asyncio.run(run_clients(url, clients, seconds, formats, nice, token, progress)))
        report["verdict"] = verdict(report)
        return report

    if engine.slots < clients:
        raise ValueError(f"{clients} clients need {clients} slots; the engine has {engine.slots}")
    report.update(serve_here(engine, lambda url: run_clients(url, clients, seconds, formats, nice, token, progress),
                             server_options, token=token, **UNLIMITED_RATES))
    report["verdict"] = verdict(report)
    return report


# A load benchmark's clients, and the fuzzer, all come from this machine: one peer standing in for many users, which
# may open dozens of sessions, or churn connections, at once. The servers they start here do not limit request
# rates, so that what is measured is serving (the rate limits have their own tests:
# tests/serving/test_network_limits.py); pass these as ``serve_here``'s options.
UNLIMITED_RATES = {name: 1e9 for name in ("http_per_peer", "http_peer_burst", "http_total", "http_total_burst",
                                          "upgrades_per_peer", "upgrades_peer_burst", "upgrades_total",
                                          "upgrades_total_burst")}


def serve_here(engine, work, server_options=None, token: Optional[str] = None, **options) -> dict:
    """Run ``work(url)`` (a coroutine function) against a VoiceServer on ``engine`` started on a free loopback
    port (``server_options`` and ``options`` as ServerOptions, host and port replaced); returns its result with
    the server's hardware and torch version. The server's own log lines below errors are silenced meanwhile:
    the report counts what its warnings (late ticks, dropped frames) would say. As ``duplex serve`` does, what is
    alive at the start (the engine) is kept out of the garbage collector's full passes while the server runs
    (``runtime.realtime.freeze_startup_objects``), and given back after, so the caller's collector is as it was."""
    # Here, not at the top: client processes import this module and must not load torch (seconds each).
    import torch  # noqa: PLC0415 - keeps the client processes torch-free

    from codec.utils.stats import describe_device  # noqa: PLC0415 - imports torch

    from ..serving.server import ServerOptions, VoiceServer  # noqa: PLC0415 - imports torch

    # With its front process, as ``duplex serve`` runs (a flood meets what users would run).
    settings = dataclasses.replace(server_options or ServerOptions(), host="127.0.0.1", port=0, token=token,
                                   front=True, **options)

    async def main():
        server = VoiceServer(engine, settings)
        await server.start()
        try:
            return await work(f"ws://127.0.0.1:{server.port}")
        finally:
            await server.stop()

    freeze_startup_objects()
    try:
        with quiet("duplex.serving"):
            result = asyncio.run(main())
    finally:
        gc.unfreeze()
    return {"url": None, "hardware": describe_device(engine.device), "torch": torch.__version__,
            "quantization": getattr(engine, "quantization", None), **result}


@contextlib.contextmanager
def quiet(logger: str, level: int = logging.ERROR):
    """Only ``level`` and above from ``logger`` (and the loggers under it) while inside."""
    log = logging.getLogger(logger)
    before = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(before)


def verdict(report: dict) -> str:
    """One line: whether every client was served in real time, and if not, what went wrong first."""
    clients, server = report["clients"], report["server"]
    failed = [c for c in clients if "exception" in c]
    if failed:
        return f"NOT served: {len(failed)} client(s) failed ({failed[0]['exception']})"
    problems = []
    if any(c["lost"] or c["errors"] for c in clients):
        problems.append(f"{sum(c['lost'] for c in clients)} replies lost, "
                        f"{sum(len(c['errors']) for c in clients)} errors")
    if server["dropped_in"] or server["dropped_out"]:
        problems.append(f"{server['dropped_in']} input frames and {server['dropped_out']} replies dropped")
    late = max(c["late_replies"] / max(1, c["replies"]) for c in clients)
    if late > 0.01:
        problems.append(f"up to {late:.0%} of a client's replies more than 80 ms late "
                        f"(latency grew by up to {max(c['max_lateness_ms'] or 0 for c in clients):.0f} ms)")
    return "real time: every reply, on schedule, nothing dropped" if not problems else \
        "NOT real time: " + "; ".join(problems)


def where(report: dict) -> str:
    """Which server a report measured: its address, or the one started here (its hardware and torch), with its
    quantization when known ("int8 weights, fp8 KV")."""
    quantization = quantization_text(report.get("quantization") or (report.get("server") or {}).get("quantization"))
    if report.get("url"):
        return report["url"] + (f" ({quantization})" if quantization else "")
    return (f"a server started here ({report['hardware']}, torch {report['torch']}"
            + (f", {quantization}" if quantization else "") + ")")


def format_report(report: dict) -> str:
    """What ``duplex bench serve`` prints: a title line, one row per client, the server's line, the verdict."""
    rows = [f"# serve -- {report['clients_count']} x {report['seconds']:g} s ({report['formats']}) against "
            f"{where(report)}",
            f"{'client':>6} {'format':>6} {'replies/sent':>12} {'lost':>5} {'msg/s':>6} {'late':>5} "
            f"{'max late ms':>11}  errors"]
    for c in report["clients"]:
        if "exception" in c:
            rows.append(f"{c['client']:>6} {c['format']:>6}  failed: {c['exception']}")
            continue
        replies = f"{c['replies']}/{c['frames_sent']}"
        late = "-" if c["max_lateness_ms"] is None else f"{c['max_lateness_ms']:.1f}"
        rows.append(f"{c['client']:>6} {c['format']:>6} {replies:>12} {c['lost']:>5} {c['steady_rate']:>6.2f} "
                    f"{c['late_replies']:>5} {late:>11}  {'; '.join(c['errors']) or '-'}")
    s = report["server"]
    step = s["step_ms"]
    step_text = "no steps" if step["p50"] is None else f"step p50 {step['p50']:.1f} ms, p99 {step['p99']:.1f} ms"
    rows.append(f"server: {s['ticks']} ticks, {s['late_ticks']} late (step past its 80 ms deadline), {step_text}; "
                f"dropped {s['dropped_in']} input frames (a client too fast, or the server behind) and "
                f"{s['dropped_out']} replies (a client too slow); {s['underruns']} underruns (no input in time: "
                f"silence used); {s['sessions_after']} sessions left open"
                + ("" if s.get("late_input") is None else
                   f"; the user heard more than 2 frames late at {s['late_input']} of {s['steps']} steps, "
                   f"{s['drained_in']} input frames drained"))
    rows.append(verdict(report))
    return "\n".join(rows)
