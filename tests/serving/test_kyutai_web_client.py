"""Kyutai's own web UI (``client/`` of github.com/kyutai-labs/moshi), built and unchanged, against ``duplex serve`` in
headless Chromium with a fake microphone: Connect, the session opens, the microphone reaches the server as Ogg/Opus
and the page plays the server's Ogg/Opus.

The built UI is a test fixture (tests/fixtures/kyutai_web_client.tgz, MIT licence beside it; how to rebuild it:
tests/fixtures/kyutai_web_client.md): nothing is downloaded at test time. Its page is served by a static file server
of the test's and told where duplex listens by its own ``?worker_addr=HOST:PORT`` parameter (without one it connects
to the host that served the page). The page's WebSocket is watched through Chromium's DevTools (its Network domain):
what it sent and received, message kind by message kind, as the browser saw it.

``kyutai_web_client(chat_host_port, seconds)`` (a coroutine) and ``run_kyutai_web_client`` (the same, blocking) are
what the test does, against any server that serves /api/chat: tests/cluster can run them against Ray Serve's ingress.
"""

import asyncio
import base64
import collections
import functools
import http.server
import itertools
import json
import re
import subprocess
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import pytest
from helpers import FIXTURES, make_engine
from test_browser import CHROMIUM, devtools_page_url, fake_microphone
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from duplex.model.tokenizer import TextTokenizer
from duplex.serving.server import ServerOptions, VoiceServer

CLIENT = FIXTURES / "kyutai_web_client.tgz"
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt install chromium)"),
              pytest.mark.skipif(not CLIENT.exists(), reason="needs the built Kyutai web client fixture")]

# Kyutai's message kinds (its src/protocol/encoder.ts), by their first byte
KINDS = {0: "handshake", 1: "audio", 2: "text", 3: "control", 4: "metadata", 5: "error", 6: "ping", 7: "coloredtext"}
CLICK = """((label) => { const b = [...document.querySelectorAll('button')].find((e) => e.textContent.trim() === label);
  if (b) b.click(); return !!b; })"""
HAS_BUTTON = """((label) => [...document.querySelectorAll('button')].some((e) => e.textContent.trim() === label))"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _Tab:
    """DevTools on one page, keeping the page's WebSocket traffic (Network events) while it is driven."""

    def __init__(self, ws):
        self.ws, self.ids, self.pending = ws, itertools.count(1), {}
        self.sockets, self.closed = [], 0  # the URLs the page opened; how many of them closed
        self.sent, self.received = collections.Counter(), collections.Counter()
        self.errors = []  # the text of each 0x05 message the page received
        self.reader = asyncio.create_task(self._read())

    async def _read(self):
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                if "id" in message:
                    future = self.pending.pop(message["id"], None)
                    if future is not None and not future.done():
                        future.set_result(message)
                else:
                    self._event(message.get("method"), message.get("params", {}))
        except ConnectionClosed:
            pass

    def _event(self, method, params):
        if method == "Network.webSocketCreated":
            self.sockets.append(params["url"])
        elif method == "Network.webSocketClosed":
            self.closed += 1
        elif method in ("Network.webSocketFrameSent", "Network.webSocketFrameReceived"):
            frame, counts = params["response"], self.sent if method.endswith("Sent") else self.received
            if frame["opcode"] != 2:  # Kyutai's protocol is binary; a text frame is counted as such
                counts["text frame"] += 1
                return
            data = base64.b64decode(frame["payloadData"])
            kind = KINDS.get(data[0], f"0x{data[0]:02x}") if data else "empty"
            counts[kind] += 1
            if kind == "error" and counts is self.received:
                self.errors.append(data[1:].decode(errors="replace"))

    async def call(self, method, **params):
        call_id = next(self.ids)
        future = self.pending[call_id] = asyncio.get_running_loop().create_future()
        await self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        reply = await asyncio.wait_for(future, 30)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply["result"]

    async def evaluate(self, expression, gesture=False):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True,
                                 userGesture=gesture)
        return result["result"].get("value")

    async def until(self, expression, seconds):
        """Whether ``expression`` became true within ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if await self.evaluate(expression):
                return True
            await asyncio.sleep(0.1)
        return False


async def kyutai_web_client(chat_host_port: str, seconds: float, connect_timeout: float = 30.0) -> dict:
    """Kyutai's built web UI in headless Chromium (a fake microphone playing a 3 s tone, looped), told to talk to
    ``chat_host_port`` ("HOST:PORT" of a server with ws://HOST:PORT/api/chat): it clicks Connect, waits up to
    ``connect_timeout`` s for the server's handshake, lets the conversation run ``seconds`` s, reads the page, closes
    the browser (the conversation ends with it) and says what it observed:

    ``socket``: the URL the page opened (None: it opened none); ``opened``: the page received the handshake (0x00);
    ``connected``: the page still shows its Disconnect button at the end; ``closed``: its WebSocket had closed by
    then; ``sent`` / ``received``: the page's binary messages by kind ("audio", "text", "handshake", "error" ...,
    counted by DevTools); ``errors``: the text of the 0x05 messages it received; ``played_s``: the page's own
    "Audio played" figure in seconds (its audio worklet played the server's decoded Opus), None if not shown;
    ``text``: the model's text as the page shows it; ``shown``: the page's visible text."""
    with tempfile.TemporaryDirectory(prefix="duplex-kyutai-web-") as tmp:
        tmp = Path(tmp)
        with tarfile.open(CLIENT) as tar:
            tar.extractall(tmp / "site", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))  # ours
        root = next(p.parent for p in (tmp / "site").rglob("index.html"))
        static = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
        threading.Thread(target=static.serve_forever, daemon=True).start()
        fake_microphone(tmp / "mic.wav")
        profile = tmp / "profile"
        profile.mkdir()
        page_url = f"http://127.0.0.1:{static.server_address[1]}/?worker_addr={chat_host_port}"
        browser = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--remote-debugging-port=0", "--use-fake-ui-for-media-stream",
             "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={tmp / 'mic.wav'}",
             "--autoplay-policy=no-user-gesture-required", "--window-size=1000,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            devtools = await asyncio.get_running_loop().run_in_executor(None, devtools_page_url, profile)
            async with connect(devtools, max_size=None) as ws:
                tab = _Tab(ws)
                await tab.call("Network.enable")
                await tab.call("Page.enable")
                await tab.call("Page.navigate", url=page_url)
                assert await tab.until(f"{HAS_BUTTON}('Connect')", 30), "Kyutai's page did not show Connect"
                assert await tab.evaluate(f"{CLICK}('Connect')", gesture=True)
                deadline = time.monotonic() + connect_timeout
                while not tab.received["handshake"] and not tab.closed and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                if tab.received["handshake"]:
                    await asyncio.sleep(seconds)
                shown = await tab.evaluate("document.body.innerText")
                text = await tab.evaluate("document.querySelector('.player-text')?.innerText ?? ''")
                connected = await tab.evaluate(f"{HAS_BUTTON}('Disconnect')")
                played = re.search(r"Audio played:\s*(\d+):(\d+(?:\.\d+)?)", shown)
                return {"page": page_url, "socket": tab.sockets[0] if tab.sockets else None,
                        "opened": tab.received["handshake"] > 0, "connected": connected, "closed": tab.closed > 0,
                        "sent": dict(tab.sent), "received": dict(tab.received), "errors": list(tab.errors),
                        "played_s": 60 * int(played[1]) + float(played[2]) if played else None,
                        "text": text, "shown": shown}
        finally:
            browser.terminate()
            try:
                browser.wait(10)
            except subprocess.TimeoutExpired:
                browser.kill()
                browser.wait()
            static.shutdown()
            static.server_close()


def run_kyutai_web_client(chat_host_port: str, seconds: float, connect_timeout: float = 30.0) -> dict:
    """``kyutai_web_client``, blocking (for a caller outside an event loop)."""
    return asyncio.run(kyutai_web_client(chat_host_port, seconds, connect_timeout))


@pytest.mark.slow
def test_kyutais_web_ui_talks_to_duplex(small_tokenizer_path):
    async def main():
        server = VoiceServer(make_engine(1, tokenizer=TextTokenizer(small_tokenizer_path)), ServerOptions(port=0))
        await server.start()
        seen = {"sessions": 0, "frames_in": 0, "steps": 0, "bad_messages": 0}

        async def watch():  # the server's own counters while the page talks to it
            while True:
                stats = server.stats()
                seen["sessions"] = max(seen["sessions"], stats["sessions"])
                for name in ("frames_in", "steps", "bad_messages"):
                    seen[name] = max(seen[name], stats["totals"][name])
                await asyncio.sleep(0.1)

        watcher = asyncio.create_task(watch())
        try:
            observed = await kyutai_web_client(f"127.0.0.1:{server.port}", seconds=3.0)
            await asyncio.sleep(0.3)
            return observed, seen, server.stats(), server.port
        finally:
            watcher.cancel()
            await server.stop()

    observed, seen, after, port = asyncio.run(main())
    assert observed["socket"].startswith(f"ws://127.0.0.1:{port}/api/chat?"), observed["socket"]
    assert observed["opened"] and observed["connected"] and not observed["errors"], observed
    assert seen["sessions"] == 1 and after["sessions"] == 0, (seen, after)  # one session, ended with the page
    assert observed["sent"].get("audio", 0) >= 25, observed  # its microphone, as Ogg/Opus pages
    assert seen["frames_in"] >= 25 and seen["steps"] >= 25 and seen["bad_messages"] == 0, seen  # ... heard
    assert observed["received"].get("audio", 0) >= 10, observed  # our Ogg/Opus ...
    assert observed["played_s"] is not None and observed["played_s"] >= 0.5, observed["shown"]  # ... played
