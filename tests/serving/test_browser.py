"""The browser page end to end in headless Chromium with a fake microphone playing a WAV file.

Chromium is driven through its DevTools protocol over a WebSocket (the project's own websockets dependency).
Skipped when Debian's chromium is not installed (.ci/run installs it).
"""

import asyncio
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect

from duplex.serving.server import ServerOptions, VoiceServer
from duplex.model.tokenizer import TextTokenizer
from helpers import make_engine

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt install chromium)")


def fake_microphone(path: Path) -> None:
    t = np.arange(3 * 24000) / 24000
    voice = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))
    sf.write(path, voice.astype(np.float32), 24000, subtype="PCM_16")


class DevTools:
    def __init__(self, ws):
        self.ws, self.ids = ws, itertools.count(1)

    async def call(self, method, **params):
        call_id = next(self.ids)
        await self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            reply = json.loads(await self.ws.recv())
            if reply.get("id") == call_id:
                if "error" in reply:
                    raise RuntimeError(reply["error"])
                return reply["result"]

    async def evaluate(self, expression, gesture=False):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                                 awaitPromise=True, userGesture=gesture)
        return result["result"].get("value")


def devtools_page_url(profile: Path, timeout=20.0) -> str:
    deadline = time.time() + timeout
    port_file = profile / "DevToolsActivePort"
    # Chromium creates the file before it has written it: wait for both of its lines (port, browser path).
    while len(port_file.read_text().split() if port_file.exists() else []) < 2:
        if time.time() > deadline:
            raise RuntimeError("Chromium did not start")
        time.sleep(0.1)
    port = port_file.read_text().split()[0]
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
            pages = [t for t in json.load(r) if t["type"] == "page"]
        if pages:
            return pages[0]["webSocketDebuggerUrl"]
        time.sleep(0.1)


@pytest.mark.slow
def test_page_connects_plays_replies_and_shows_text(tmp_path, small_tokenizer_path):
    wav = tmp_path / "mic.wav"
    fake_microphone(wav)

    async def main():
        engine = make_engine(2, tokenizer=TextTokenizer(small_tokenizer_path))
        server = VoiceServer(engine, ServerOptions(port=0))
        await server.start()
        profile = Path(tempfile.mkdtemp(prefix="duplex-chromium-"))
        browser = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--remote-debugging-port=0", "--use-fake-ui-for-media-stream",
             "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}",
             "--autoplay-policy=no-user-gesture-required", f"http://127.0.0.1:{server.port}/"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            loop = asyncio.get_running_loop()
            page = await loop.run_in_executor(None, devtools_page_url, profile)
            async with connect(page, max_size=None) as ws:
                tools = DevTools(ws)
                for _ in range(200):  # wait for our page (the tab starts on about:blank, also "complete")
                    if await tools.evaluate("location.protocol === 'http:' && document.readyState === 'complete'"
                                            " && !!document.getElementById('toggle')"):
                        break
                    await asyncio.sleep(0.1)
                await tools.evaluate("document.getElementById('toggle').click()", gesture=True)
                state = {}
                for _ in range(150):
                    await asyncio.sleep(0.2)
                    state = await tools.evaluate(
                        "({status: document.getElementById('status').textContent,"
                        " received: +document.getElementById('received').textContent,"
                        " text: document.getElementById('transcript').textContent,"
                        " rtt: document.getElementById('rtt').textContent})")
                    if state["received"] >= 25 and state["text"] and state["rtt"] != "-":
                        break
                return state, server.stats()
        finally:
            browser.terminate()
            browser.wait(10)
            shutil.rmtree(profile, ignore_errors=True)
            await server.stop()

    state, stats = asyncio.run(main())
    assert state["status"].startswith("connected"), state
    assert state["received"] >= 25, state  # replies came back, one per 80 ms
    assert state["text"], state  # the transcript shows text pieces
    assert state["rtt"] != "-" and int(state["rtt"]) < 1000, state  # the page measured the round trip
    assert stats["connections"] == 1
    frames_in = sum(s["frames_in"] for s in stats["per_session"].values()) if stats["per_session"] else None
    assert frames_in is None or frames_in > 0
