"""Stopping the server gracefully (issue 23, deliverable 4): on SIGTERM as on Ctrl-C, nothing new is admitted
(upgrades get HTTP 503, ``/health`` says "draining" with 503), waiting clients are told and sent away (1001),
live sessions may end on their own within the drain time, those left are closed with 1001, and the counters are
logged; ``duplex serve`` exits 0 on SIGTERM and 130 on SIGINT. It used to die on SIGTERM at once: clients got no
close frame (1006), nothing was logged."""

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import SMALL_MODEL_ARGS, EchoEngine, serve
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from duplex.serving.protocol import ERROR, HANDSHAKE, message

ROOT = Path(__file__).resolve().parents[2]


def get(url):
    """(status, body) of a plain GET; an HTTP error status is an answer too."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


async def until(condition, timeout=10.0):
    """Wait for ``condition()`` (a generous timeout: it is no speed test)."""
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.01)


async def errors_until_closed(ws, timeout=30.0):
    """The error notices received until the server closes the connection, and its close code."""
    notices = []
    try:
        while True:
            data = await asyncio.wait_for(ws.recv(), timeout)
            if isinstance(data, bytes) and data[:1] == message(ERROR, b"")[:1]:
                notices.append(data[1:].decode())
    except ConnectionClosed as e:
        return notices, e.rcvd.code if e.rcvd else None


def run(test, slots=1, **options):
    """``test(server, "host:port")`` against a fresh server on the echo stand-in engine."""
    return serve(lambda server, url: test(server, url.removeprefix("ws://")), engine=EchoEngine(slots), **options)


def test_health_says_ok_and_draining_with_a_status_load_balancers_understand():
    """/health needs no token (probes have none); while draining it is 503, and upgrades are refused with 503."""
    async def test(server, address):
        before = await asyncio.to_thread(get, f"http://{address}/health")
        drain = asyncio.create_task(server.drain(60))
        await until(lambda: server.draining)
        during = await asyncio.to_thread(get, f"http://{address}/health")
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"ws://{address}/api/chat?token=s3cret")
        await asyncio.wait_for(drain, 30)  # no live session: nothing to wait for
        return before, during, refused.value.response

    before, during, refused = run(test, token="s3cret")
    assert before == (200, "ok\n")
    assert during == (503, "draining\n")
    assert refused.status_code == 503 and b"shutting down" in refused.body


def test_a_drain_waits_for_live_sessions_and_ends_when_they_do():
    """A live session is told, goes on being served, and the drain ends as soon as it ends on its own."""
    async def test(server, address):
        ws = await connect(f"ws://{address}/api/chat?format=pcm16")
        assert await asyncio.wait_for(ws.recv(), 5) == message(HANDSHAKE)
        drain = asyncio.create_task(server.drain(600))
        notice = None
        while notice is None:  # audio keeps coming meanwhile; the notice is among it
            data = await asyncio.wait_for(ws.recv(), 10)
            if data[:1] == message(ERROR, b"")[:1]:
                notice = data[1:].decode()
        ticks = server.clock.ticks
        await until(lambda: server.clock.ticks > ticks + 2)  # still served while draining
        still_draining = not drain.done()
        await ws.close()
        await asyncio.wait_for(drain, 30)  # long before its 600 s
        return notice, still_draining

    notice, still_draining = run(test)
    assert "shutting down" in notice and "600 s" in notice
    assert still_draining


def test_waiting_clients_are_told_and_sent_away_when_the_drain_begins():
    """A waiter would never get a slot now: it is told why and closed with 1001 at once, not after the drain."""
    async def test(server, address):
        holder = await connect(f"ws://{address}/api/chat")
        assert await asyncio.wait_for(holder.recv(), 5) == message(HANDSHAKE)
        waiter = await connect(f"ws://{address}/api/chat")
        queued = await asyncio.wait_for(waiter.recv(), 5)
        drain = asyncio.create_task(server.drain(600))
        told = await errors_until_closed(waiter)
        await until(lambda: server.waiting == 0)  # it has left the queue
        sent_away_first = not drain.done()  # not after the drain: the holder is still live
        await holder.close()
        await asyncio.wait_for(drain, 30)
        return queued, told, sent_away_first

    queued, (notices, code), sent_away_first = run(test, max_waiting=1)
    assert b"number 1 in the queue" in queued
    assert code == 1001 and any("shutting down" in n for n in notices)
    assert sent_away_first


def test_sessions_left_when_the_drain_time_is_over_are_closed_with_1001_and_the_counters_logged(caplog):
    async def test(server, address):
        ws = await connect(f"ws://{address}/api/chat?format=pcm16")
        assert await asyncio.wait_for(ws.recv(), 5) == message(HANDSHAKE)
        await server.drain(0.2)  # the client does not leave
        await server.stop()
        return await errors_until_closed(ws)

    with caplog.at_level(logging.INFO, logger="duplex.serving.server"):
        notices, code = run(test)
    assert code == 1001
    assert "drain time over: closing 1 live session" in caplog.text
    stopped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stopped: ")]
    assert stopped and re.search(r"1 session served \(1 connections, 0 refused\), \d+ ticks, \d+ late; frames "
                                 r"dropped \d+ in .*and \d+ out", stopped[0])


# ---------------------------------------------------------------------------------------- duplex serve
def start(*options):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "duplex", "serve", "--port", "0", "--slots", "1", *options,
                             *SMALL_MODEL_ARGS], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_port(process, timeout=120):
    """The port from the start-up line ("open http://localhost:PORT/ in a browser")."""
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        seen.append(line)
        found = re.search(r"localhost:(\d+)/ in a browser", line)
        if found:
            return int(found.group(1))
        if not line:
            break
    process.kill()
    pytest.fail("the server did not start: " + "".join(seen))


def finish(process, timeout=60):
    """(exit status, the rest of stderr)."""
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"still running {timeout} s after the signal")
    return process.returncode, err


async def live_session(port):
    ws = await connect(f"ws://127.0.0.1:{port}/api/chat?format=pcm16")
    assert await asyncio.wait_for(ws.recv(), 30) == message(HANDSHAKE)
    return ws


@pytest.mark.slow
def test_sigterm_drains_refuses_newcomers_and_exits_0_when_the_last_session_ends():
    """It used to die at once (exit -15, the client got 1006, nothing logged)."""
    process = start("--drain", "600")
    port = wait_for_port(process)

    async def main():
        ws = await live_session(port)
        os.kill(process.pid, signal.SIGTERM)
        for _ in range(1000):
            health = await asyncio.to_thread(get, f"http://127.0.0.1:{port}/health")
            if health[0] == 503:
                break
            await asyncio.sleep(0.05)
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"ws://127.0.0.1:{port}/api/chat")
        ticks_go_on = len([await asyncio.wait_for(ws.recv(), 30) for _ in range(5)])
        await ws.close()  # the last session ends on its own: the drain is over long before its 600 s
        return health, refused.value.response.status_code, ticks_go_on

    health, refused, ticks_go_on = asyncio.run(main())
    code, err = finish(process)
    assert health == (503, "draining\n") and refused == 503 and ticks_go_on == 5
    assert code == 0, err
    assert "draining (SIGTERM; another SIGTERM or SIGINT closes at once): 1 live session" in err
    assert "stopped (SIGTERM)" in err
    assert re.search(r"stopped: 1 session served .* \d+ ticks, \d+ late; frames dropped \d+ in .*and \d+ out", err)
    assert "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize("number, exit_code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_a_session_that_stays_is_closed_with_1001_after_the_drain(number, exit_code):
    process = start("--drain", "1")
    port = wait_for_port(process)

    async def main():
        ws = await live_session(port)
        os.killpg(process.pid, number)  # to the process group, as a terminal's Ctrl-C
        return await errors_until_closed(ws, timeout=60)

    notices, close_code = asyncio.run(main())
    code, err = finish(process)
    assert close_code == 1001 and any("shutting down" in n for n in notices)
    assert code == exit_code, err
    assert "drain time over: closing 1 live session" in err and "stopped: 1 session served" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_a_second_signal_ends_the_drain_at_once():
    process = start("--drain", "600")
    port = wait_for_port(process)

    async def main():
        ws = await live_session(port)
        os.kill(process.pid, signal.SIGTERM)
        notices = []
        while not notices:  # the drain has begun once the session is told
            data = await asyncio.wait_for(ws.recv(), 30)
            if data[:1] == message(ERROR, b"")[:1]:
                notices.append(data)
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C, as an impatient operator: the first signal sets the code
        return await errors_until_closed(ws, timeout=60)

    _, close_code = asyncio.run(main())
    code, err = finish(process)
    assert close_code == 1001 and code == 0, err
    assert "SIGINT during the drain: closing at once" in err and "Traceback" not in err
