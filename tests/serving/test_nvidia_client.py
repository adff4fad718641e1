"""NVIDIA's own PersonaPlex web client (``client/`` of github.com/NVIDIA/personaplex), built and unchanged, against
``duplex serve`` in headless Chromium with a fake microphone: a voice and a role chosen in it reach the server as
its query parameters, the session opens with that system prompt, and the two talk (Ogg/Opus both ways).

The built client is a test fixture (tests/fixtures/personaplex_client.tgz, MIT licence beside it; how to rebuild it:
tests/fixtures/personaplex_client.md): nothing is downloaded at test time. Its page is served by a static file
server of the test's, and told where duplex listens with its own ``?worker_addr=`` parameter.
"""

import asyncio
import functools
import http.server
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import FIXTURES, make_engine
from test_browser import CHROMIUM, DevTools, devtools_page_url, fake_microphone
from websockets.asyncio.client import connect

from duplex.model.tokenizer import TextTokenizer
from duplex.serving.server import ServerOptions, VoiceServer

CLIENT = FIXTURES / "personaplex_client.tgz"
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt install chromium)"),
              pytest.mark.skipif(not CLIENT.exists(), reason="needs the built NVIDIA client fixture")]

ROLE = "hello there, how are you today?"
# React keeps its own copy of a controlled field's value: set it through the element's native setter, then say so.
SET_FIELD = """((selector, value) => { const el = document.querySelector(selector);
  const proto = el.tagName === 'SELECT' ? HTMLSelectElement.prototype : HTMLTextAreaElement.prototype;
  Object.getOwnPropertyDescriptor(proto, 'value').set.call(el, value);
  el.dispatchEvent(new Event(el.tagName === 'SELECT' ? 'change' : 'input', {bubbles: true}));
  return el.value; })"""
CLICK = """((label) => { const b = [...document.querySelectorAll('button')].find((e) => e.textContent.trim() === label);
  if (b) b.click(); return !!b; })"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_nvidias_web_client_talks_to_duplex_with_a_chosen_voice_and_role(tmp_path, small_tokenizer_path):
    from duplex.runtime.voices import make_voice_file

    site = tmp_path / "site"
    with tarfile.open(CLIENT) as tar:
        tar.extractall(site, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))  # our own file
    root = next(p.parent for p in site.rglob("index.html"))
    static = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=static.serve_forever, daemon=True).start()
    wav = tmp_path / "mic.wav"
    fake_microphone(wav)
    voices = tmp_path / "voices"
    voices.mkdir()
    make_voice_file(make_engine(1), (0.3 * np.sin(np.arange(24000) / 24000 * 2 * np.pi * 170)).astype(np.float32),
                    voices / "VARF1.pt")

    async def main():
        engine = make_engine(1, tokenizer=TextTokenizer(small_tokenizer_path))
        server = VoiceServer(engine, ServerOptions(port=0, voice_prompt_dir=str(voices)))
        await server.start()
        profile = Path(tempfile.mkdtemp(prefix="duplex-chromium-"))
        browser = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--remote-debugging-port=0", "--use-fake-ui-for-media-stream",
             "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}",
             "--autoplay-policy=no-user-gesture-required",
             f"http://127.0.0.1:{static.server_address[1]}/?worker_addr=127.0.0.1:{server.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            page = await asyncio.get_running_loop().run_in_executor(None, devtools_page_url, profile)
            async with connect(page, max_size=None) as ws:
                tools = DevTools(ws)
                for _ in range(300):
                    if await tools.evaluate("!!document.querySelector('#voice-prompt')"):
                        break
                    await asyncio.sleep(0.1)
                voice = await tools.evaluate(f"{SET_FIELD}('#voice-prompt', 'VARF1.pt')")
                role = await tools.evaluate(f"{SET_FIELD}('#text-prompt', {json.dumps(ROLE)})")
                assert await tools.evaluate(f"{CLICK}('Connect')", gesture=True)
                stats = {}
                for _ in range(600):
                    stats = server.stats()
                    per = list(stats["per_session"].values())
                    if per and per[0]["frames_in"] >= 25 and per[0]["steps"] >= 25:
                        break
                    await asyncio.sleep(0.1)
                shown = await tools.evaluate("document.body.innerText")
                asked = list(server.prompts._kept)
                return voice, role, stats, shown, asked
        finally:
            browser.terminate()
            browser.wait(10)
            shutil.rmtree(profile, ignore_errors=True)
            await server.stop()
            static.shutdown()

    voice, role, stats, shown, asked = asyncio.run(main())
    assert voice == "VARF1.pt" and role == ROLE
    assert stats["prompts"]["sessions"] == 1 and stats["prompts"]["refused"] == 0, stats
    assert len(asked) == 1 and asked[0][0].endswith("VARF1.pt") and asked[0][-1] == ROLE, asked
    session, = stats["per_session"].values()
    assert session["frames_in"] >= 25 and session["bad_messages"] == 0, stats  # its microphone, as Ogg/Opus
    assert "Disconnect" in shown, shown  # still in the conversation
    played = re.search(r"Audio played:\s*(\d+):(\d+(?:\.\d+)?)", shown)  # its own figures: it plays our Opus
    assert played and 60 * int(played[1]) + float(played[2]) >= 0.5, shown
