"""``duplex serve --ray`` for real: a local Ray cluster, two replicas of the default model with two slots each.

One scenario, in order (each step needs the state the one before left): conversations split across the
replicas; when all slots are taken, callers wait with the server's own queue notices, then are refused with its
"server full" answer; waiters get the slots as they free; Kyutai's own clients (Python, and its web UI in headless Chromium) talk through Ray's ingress; an
engine that dies closes its conversation with 1012 and a client reconnecting at once reaches the other replica;
on Ctrl-C, a live conversation goes on (the drain) while new ones are turned away, and the command ends once it is
over. Behaviour only, no timings."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("ray.serve")

from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidHandshake  # noqa: E402

from duplex.cluster.relay import ENGINE_GONE  # noqa: E402

FRAME = bytes(3840)  # 80 ms of pcm16 silence


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Talker:
    """One pcm16 conversation that sends silence in real time and counts the audio it gets back."""

    def __init__(self, ws):
        self.ws, self.replies, self.notices, self.closed = ws, 0, [], None
        self.handshake = asyncio.get_running_loop().create_future()
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._send())]

    @classmethod
    async def open(cls, url):
        return cls(await connect(url))

    async def _read(self):
        try:
            async for data in self.ws:
                if data == b"\x00" and not self.handshake.done():
                    self.handshake.set_result(True)
                elif data[:1] == b"\x05":
                    self.notices.append(data[1:].decode())
                elif data[:1] == b"\x01":
                    self.replies += 1
        except ConnectionClosed:
            pass
        self.closed = (self.ws.close_code, self.ws.close_reason)
        if not self.handshake.done():
            self.handshake.set_result(False)

    async def _send(self):
        await self.handshake
        while self.closed is None:
            try:
                await self.ws.send(b"\x01" + FRAME)
            except ConnectionClosed:
                return
            await asyncio.sleep(0.08)

    async def until_closed(self, timeout=20.0):
        await asyncio.wait_for(self._tasks[0], timeout)
        return self.closed

    async def close(self):
        await self.ws.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def stats(base) -> dict:
    with urllib.request.urlopen(f"http://{base}/api/stats", timeout=10) as r:
        return json.loads(r.read())


async def until(check, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        await asyncio.sleep(0.25)
    raise AssertionError(f"not within {timeout:g} s: {what}")


def sessions_per_replica(base):
    return sorted(r["sessions"] for r in stats(base)["per_replica"].values())


def kyutai_web_ui():
    """tests/serving/test_kyutai_web_client.py's kyutai_web_client, or None without Chromium or its fixture."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
    try:
        import test_kyutai_web_client as web
    finally:
        sys.path.pop(0)
    return web.kyutai_web_client if web.CHROMIUM and web.CLIENT.exists() else None


@pytest.mark.slow
def test_two_replicas_route_queue_refuse_fail_over_and_drain(monkeypatch, tmp_path):
    port = free_port()
    base = f"127.0.0.1:{port}"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    log = open(tmp_path / "serve.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "duplex", "serve", "--ray", "--replicas", "2", "--slots", "2",
                                "--max-waiting", "1", "--drain", "30", "--port", str(port), "--threads", "1",
                                "--cpus-per-replica", "0"], stdout=log, stderr=subprocess.STDOUT, env=env)

    async def scenario():
        url = f"ws://{base}/api/chat?format=pcm16"
        await until(lambda: stats(base)["replicas"] == 2, 240, "two replicas serving")
        # 1. Four conversations: two on each replica (the emptiest with a free slot first)
        talkers = [await Talker.open(url) for _ in range(4)]
        assert all([await asyncio.wait_for(t.handshake, 30) for t in talkers])
        await until(lambda: sessions_per_replica(base) == [2, 2], 10, "sessions split 2 + 2")
        # 2. All slots taken: one waiter at each replica (its queue notice), then the server's "full" answer
        waiters = [await Talker.open(url) for _ in range(2)]
        await until(lambda: all(w.notices for w in waiters), 10, "queue notices")
        assert all("number 1 in the queue" in w.notices[0] for w in waiters)
        refused = await Talker.open(url)
        assert await refused.until_closed() == (1013, "server full")
        assert any("server full" in n for n in refused.notices)
        # 3. The slots free: the waiters get them
        for t in talkers:
            await t.close()
        assert all([await asyncio.wait_for(w.handshake, 20) for w in waiters])
        for w in waiters:
            await w.close()
        # 4. Kyutai's own Python client, unchanged, through Ray's ingress
        try:
            kyutai_client = __import__("moshi.client", fromlist=["run"])
            __import__("aiohttp")
        except ImportError:
            kyutai_client = None
        if kyutai_client is not None:
            from helpers import KyutaiPrinter, fake_sound_devices

            played = fake_sound_devices(monkeypatch, kyutai_client)
            printer = KyutaiPrinter()

            class Args:
                url = f"ws://{base}"
                https = False

            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(kyutai_client.run(printer, Args()), 3.5)
            assert ("info", "connected!") in [(level, m) for level, m, _ in printer.logs], printer.logs
            assert sum(abs(p).max() > 0 for p in played) >= 2  # it played the model's audio
        # 4b. Kyutai's own web UI (built unchanged: tests/fixtures/kyutai_web_client.tgz) in headless Chromium
        web = kyutai_web_ui()
        if web is not None:
            seen = await web(base, seconds=3.0)
            assert seen["opened"] and not seen["errors"], seen
            assert seen["sent"].get("audio", 0) >= 10 and seen["received"].get("audio", 0) >= 5, seen
        # 5. An engine dies mid-call: the caller hears 1012 and reconnects at once to the other replica
        caller = await Talker.open(url)
        assert await asyncio.wait_for(caller.handshake, 20)
        await until(lambda: sessions_per_replica(base) == [0, 1], 10, "one session")
        holder = next(r for r in stats(base)["per_replica"].values() if r["sessions"] == 1)
        os.kill(holder["pid"], signal.SIGKILL)
        code, _ = await caller.until_closed()
        assert code == ENGINE_GONE
        again = await Talker.open(url)
        assert await asyncio.wait_for(again.handshake, 20)
        # 6. Ctrl-C: the live conversation goes on, new callers are turned away, then the command ends
        process.send_signal(signal.SIGINT)
        before = again.replies
        await asyncio.sleep(3.0)
        assert again.closed is None and again.replies > before + 10
        with pytest.raises((InvalidHandshake, OSError)):
            late = await connect(url, open_timeout=10)
            await late.recv()  # (should the handshake pass, the first message cannot be the handshake byte)
            raise OSError("not turned away")
        await again.close()

    try:
        asyncio.run(scenario())
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()
        print((tmp_path / "serve.log").read_text()[-3000:])
