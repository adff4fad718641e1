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
from helpers import make_engine
from websockets.asyncio.client import connect

from duplex.model.tokenizer import TextTokenizer
from duplex.serving.server import ServerOptions, VoiceServer

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


class Page:
    """Headless Chromium on a URL, with the fake microphone playing ``wav``; ``tools`` drives it."""

    def __init__(self, url: str, wav: Path, downloads: Path):
        self.url, self.wav, self.downloads = url, wav, downloads

    async def __aenter__(self):
        self.profile = Path(tempfile.mkdtemp(prefix="duplex-chromium-"))
        self.browser = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={self.profile}", "--remote-debugging-port=0", "--use-fake-ui-for-media-stream",
             "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={self.wav}",
             "--autoplay-policy=no-user-gesture-required", "--window-size=1000,900", self.url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        loop = asyncio.get_running_loop()
        page = await loop.run_in_executor(None, devtools_page_url, self.profile)
        self._ws = await connect(page, max_size=None).__aenter__()
        self.tools = DevTools(self._ws)
        for _ in range(200):  # wait for our page (the tab starts on about:blank, also "complete")
            if await self.tools.evaluate("location.protocol === 'http:' && document.readyState === 'complete'"
                                         " && !!document.getElementById('toggle')"):
                break
            await asyncio.sleep(0.1)
        await self.tools.call("Page.setDownloadBehavior", behavior="allow", downloadPath=str(self.downloads))
        return self

    async def __aexit__(self, *exc):
        await self._ws.__aexit__(*exc)
        self.browser.terminate()
        self.browser.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)

    async def text(self, element_id: str) -> str:
        return await self.tools.evaluate(f"document.getElementById('{element_id}').textContent")

    async def wait_for_text(self, element_id: str, needle: str, seconds: float = 20.0) -> str:
        """The element's text once it contains ``needle`` (or whatever it holds after ``seconds``)."""
        for _ in range(int(seconds / 0.1)):
            text = await self.text(element_id)
            if needle in text:
                return text
            await asyncio.sleep(0.1)
        return await self.text(element_id)

    async def screenshot(self, path: Path) -> bytes:
        import base64

        data = base64.b64decode((await self.tools.call("Page.captureScreenshot", format="png"))["data"])
        path.write_bytes(data)
        return data


STATE = ("({status: document.getElementById('status').textContent,"
         " received: +document.getElementById('received').textContent,"
         " text: [...document.querySelectorAll('#transcript .turn.model .words')].map((e) => e.textContent).join(' '),"
         " transcript: document.getElementById('transcript').textContent,"
         " rtt: document.getElementById('rtt').textContent, felt: document.getElementById('felt').textContent,"
         " feltParts: document.getElementById('felt-parts').textContent,"
         " inDb: document.getElementById('in-db').textContent, outDb: document.getElementById('out-db').textContent,"
         " inWidth: document.getElementById('in-fill').style.width,"
         " model: document.getElementById('model').textContent,"
         " quantization: document.getElementById('quantization').textContent,"
         " free: document.getElementById('free').textContent, health: document.getElementById('health').textContent,"
         " recordable: !document.getElementById('record').disabled})")


@pytest.mark.slow
def test_page_shows_the_conversation_and_downloads_it(tmp_path, small_tokenizer_path):
    wav = tmp_path / "mic.wav"
    fake_microphone(wav)
    downloads = tmp_path / "downloads"
    downloads.mkdir()

    async def main():
        engine = make_engine(2, tokenizer=TextTokenizer(small_tokenizer_path))
        server = VoiceServer(engine, ServerOptions(port=0, model_name="test model"))
        await server.start()
        try:
            async with Page(f"http://127.0.0.1:{server.port}/?audio_topk=50&seed=3", wav, downloads) as page:
                await page.wait_for_text("model", "test model")  # asked of the server before Start
                before = await page.tools.evaluate(STATE)
                assert await page.tools.evaluate("document.getElementById('audio_topk').value") == "50"
                await page.tools.evaluate("document.getElementById('toggle').click()", gesture=True)
                shots, state = [], {}
                for i in range(150):
                    await asyncio.sleep(0.2)
                    state = await page.tools.evaluate(STATE)
                    if i in (8, 16):
                        shots.append(await page.screenshot(tmp_path / f"page{i}.png"))
                    healthy = "on time" in state["health"] or "late" in state["health"]
                    if (i > 16 and state["received"] >= 25 and state["text"] and state["rtt"] != "-"
                            and state["felt"] != "-" and healthy):
                        break
                await page.tools.evaluate("document.getElementById('record').click()", gesture=True)
                for _ in range(200):
                    if len(list(downloads.glob("*.wav"))) == 1 and len(list(downloads.glob("*.txt"))) == 1 \
                            and not list(downloads.glob("*.crdownload")):
                        break
                    await asyncio.sleep(0.1)
                after_stop = await page.tools.evaluate("document.getElementById('toggle').click(), " + STATE,
                                                       gesture=True)  # Stop is synchronous
                # Start again: the last conversation stays until the new one connects (read in the same turn as
                # the click), then the counters and the transcript start afresh
                await page.tools.evaluate("document.getElementById('transcript').appendChild("
                                          "Object.assign(document.createElement('p'), {id: 'last-one'}))")
                restarting = await page.tools.evaluate("document.getElementById('toggle').click(), " + STATE,
                                                       gesture=True)
                await page.wait_for_text("status", "connected")
                restarted = await page.tools.evaluate(
                    "({last: !!document.getElementById('last-one'), ...%s})" % STATE)
                return before, state, shots, after_stop, (restarting, restarted), server.stats()
        finally:
            await server.stop()

    before, state, shots, after_stop, (restarting, restarted), stats = asyncio.run(main())
    assert before["model"] == "test model" and before["free"] == "2 of 2", before
    assert before["quantization"] == " (float32 weights, float32 KV)", before  # what /api/stats says runs
    assert state["status"].startswith("connected"), state
    assert state["received"] >= 25, state  # replies came back, one per 80 ms
    assert state["text"], state  # the model's words appear in the transcript
    assert "(speaking…)" in state["transcript"] or "(you spoke" in state["transcript"], state  # and your turns
    assert state["inDb"] != "-∞" and state["inWidth"] not in ("", "0%"), state  # the input meter moves
    assert state["outDb"] != "", state
    assert state["rtt"] != "-" and int(state["rtt"]) < 1000, state  # the page measured the round trip
    # the latency a person feels: the 80 ms frame, half a tick's wait and the 80 ms acoustic delay at least, plus
    # the measured network, engine step and playback
    assert int(state["felt"]) >= 200 and "step" in state["feltParts"], state
    assert state["free"] == "1 of 2" and ("on time" in state["health"] or "late" in state["health"]), state
    assert shots[0] != shots[1]  # the screenshots differ: meters and the timeline moved
    recording, = downloads.glob("*.wav")
    data, rate = sf.read(recording)
    assert rate == 24000 and data.ndim == 2 and data.shape[1] == 2 and data.shape[0] >= 20 * 1920
    assert np.abs(data[:, 0]).max() > 0.05  # channel 0: you (the fake microphone's tone)
    transcript, = downloads.glob("*.txt")
    assert transcript.read_text().startswith("# seconds")
    assert after_stop["status"] == "stopped" and after_stop["recordable"], after_stop
    assert restarting["transcript"] == after_stop["transcript"] and restarting["received"] == after_stop["received"]
    assert not restarted["last"] and restarted["received"] < after_stop["received"], restarted
    assert stats["connections"] >= 1


@pytest.mark.slow
def test_page_says_what_is_wrong(tmp_path, small_tokenizer_path):
    """A missing token, a server that goes away mid-conversation and a full server each get a plain message."""
    wav = tmp_path / "mic.wav"
    fake_microphone(wav)

    async def main():
        engine = make_engine(1, tokenizer=TextTokenizer(small_tokenizer_path))
        server = VoiceServer(engine, ServerOptions(port=0, token="s3cret"))
        await server.start()
        stopped = False
        try:
            async with Page(f"http://127.0.0.1:{server.port}/", wav, tmp_path) as page:
                await page.wait_for_text("warning", "needs a token")
                no_token = await page.text("warning")
                await page.tools.evaluate("document.getElementById('toggle').click()", gesture=True)
                await page.wait_for_text("status", "token")
                refused = await page.text("status")
            async with Page(f"http://127.0.0.1:{server.port}/?token=s3cret", wav, tmp_path) as page:
                await page.tools.evaluate("document.getElementById('toggle').click()", gesture=True)
                await page.wait_for_text("status", "connected")
                await server.stop()
                stopped = True
                await page.wait_for_text("status", "went away")
                gone = await page.text("status")
            # a full server: its only slot taken by another client
            server2 = VoiceServer(make_engine(1, tokenizer=TextTokenizer(small_tokenizer_path)),
                                  ServerOptions(port=0))
            await server2.start()
            try:
                async with connect(f"ws://127.0.0.1:{server2.port}/api/chat?format=pcm16") as other:
                    await other.recv()  # its handshake: the slot is taken
                    async with Page(f"http://127.0.0.1:{server2.port}/", wav, tmp_path) as page:
                        await page.tools.evaluate("document.getElementById('toggle').click()", gesture=True)
                        await page.wait_for_text("status", "full")
                        full = await page.text("status")
            finally:
                await server2.stop()
            return no_token, refused, gone, full
        finally:
            if not stopped:
                await server.stop()

    no_token, refused, gone, full = asyncio.run(main())
    assert "needs a token" in no_token and "?token=" in no_token, no_token
    assert "needs a token" in refused, refused
    assert "the server went away" in gone, gone
    assert "the server is full" in full, full


def _lan_address():
    """This machine's address on its network (not loopback), or None."""
    import socket

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address


@pytest.mark.slow
def test_page_opened_over_plain_http_from_another_machine_says_the_microphone_needs_https(tmp_path,
                                                                                          small_tokenizer_path):
    address = _lan_address()
    if address is None:
        pytest.skip("no network address besides loopback")
    wav = tmp_path / "mic.wav"
    fake_microphone(wav)

    async def main():
        server = VoiceServer(make_engine(1, tokenizer=TextTokenizer(small_tokenizer_path)),
                             ServerOptions(host="0.0.0.0", port=0))
        await server.start()
        try:
            async with Page(f"http://{address}:{server.port}/", wav, tmp_path) as page:
                await page.tools.evaluate("document.getElementById('toggle').click()", gesture=True)
                await page.wait_for_text("status", "https")
                return await page.text("status"), await page.tools.evaluate("window.isSecureContext")
        finally:
            await server.stop()

    status, secure = asyncio.run(main())
    assert secure is False
    assert "the microphone needs https or localhost" in status and "TypeError" not in status, status


LAYOUT = ("(() => { const r = (id) => { const b = document.getElementById(id).getBoundingClientRect();"
          " return [b.top, b.height]; }; return [r('timeline'), r('transcript'), r('figures'), r('toggle')]; })()")


@pytest.mark.slow
def test_page_keeps_its_layout_and_the_last_conversation(tmp_path, small_tokenizer_path):
    """The falling-behind banner moves nothing and goes with Stop; Start with the server down keeps the last
    conversation on the page (its transcript and its recording)."""
    wav = tmp_path / "mic.wav"
    fake_microphone(wav)

    async def main():
        engine = make_engine(1, tokenizer=TextTokenizer(small_tokenizer_path))
        server = VoiceServer(engine, ServerOptions(port=0))
        await server.start()
        stopped = False
        try:
            async with Page(f"http://127.0.0.1:{server.port}/", wav, tmp_path) as page:
                await page.tools.evaluate("document.getElementById('toggle').click()", gesture=True)
                await page.wait_for_text("status", "connected")
                await page.wait_for_text("transcript", "(", seconds=10)  # your first turn, from the fake microphone
                # the server's figures as they are when it falls behind (40 late steps since Start), the layout
                # measured just before and after, in one turn of the page's event loop
                banner = await page.tools.evaluate(
                    "(() => { const before = " + LAYOUT + "; if (conv.missesAtStart === null) conv.missesAtStart = 0;"
                    " showServer({model: 'm', free_slots: 0, slots: 1, deadline_misses: conv.missesAtStart + 40,"
                    " step_ms_p50: 120, step_ms_p99: 200});"
                    " return [document.getElementById('warning').textContent, before, " + LAYOUT + "]; })()")
                stop = "document.getElementById('toggle').click(), getComputedStyle(document.getElementById('warning')).display"
                after_stop = await page.tools.evaluate(stop, gesture=True)
                await asyncio.sleep(2.5)  # the page asks the server for its figures again
                later = await page.tools.evaluate("getComputedStyle(document.getElementById('warning')).display")
                last = await page.text("transcript")
                await server.stop()
                stopped = True
                await page.tools.evaluate("document.getElementById('toggle').click()", gesture=True)
                refused = await page.wait_for_text("status", "cannot reach")
                kept = await page.tools.evaluate("[document.getElementById('transcript').textContent,"
                                                 " document.getElementById('record').disabled]")
                return banner, after_stop, later, last, refused, kept
        finally:
            if not stopped:
                await server.stop()

    (warning, before, during), after_stop, later, last, refused, kept = asyncio.run(main())
    assert "falling behind" in warning, warning
    assert during == before  # the banner overlays the page: nothing moved
    assert after_stop == "none" and later == "none"  # Stop ends the conversation's warnings
    assert "cannot reach the server" in refused, refused
    assert last and kept == [last, False], (last, kept)  # the last transcript, and its recording, are still there


@pytest.mark.slow
def test_page_shows_turns_and_places_word_labels_apart(tmp_path, small_tokenizer_path):
    """The transcript is a paragraph per turn (yours from the level meter, the model's words); the timeline's
    word labels never overlap."""
    wav = tmp_path / "mic.wav"
    fake_microphone(wav)
    turns_script = """(() => {
      conv = newConversation(); conv.connected = true;
      const you = (level, frames) => { for (let i = 0; i < frames; i++) userFrame(level); };
      const model = (pieces) => { for (const p of pieces) { conv.received++; receiveText(p); } };
      you(0.0001, 5); you(0.3, 8); you(0.0001, 12);  // you speak for 0.64 s, then pause
      model([" Hello", " there", "."]);
      you(0.3, 6);  // you again, while the model goes on
      model([" Sure", "ly"]);
      return [...document.querySelectorAll('#transcript .turn')].map((p) => [p.className, p.textContent]);
    })()"""
    labels_script = """(() => {
      const g = document.getElementById('timeline').getContext('2d'); g.font = '13px system-ui';
      const words = [];
      for (let f = 0; f < 120; f++) words.push({text: f % 3 ? 'a' : 'conversation', frame: f});
      return layoutWords(words, 0, 6, (t) => g.measureText(t).width);
    })()"""

    async def main():
        server = VoiceServer(make_engine(1, tokenizer=TextTokenizer(small_tokenizer_path)), ServerOptions(port=0))
        await server.start()
        try:
            async with Page(f"http://127.0.0.1:{server.port}/", wav, tmp_path) as page:
                return await page.tools.evaluate(turns_script), await page.tools.evaluate(labels_script)
        finally:
            await server.stop()

    turns, labels = asyncio.run(main())
    assert turns == [["turn you", "you(you spoke, 0.6 s)"], ["turn model", "modelHello there."],
                     ["turn you", "you(speaking…)"], ["turn model", "modelSurely"]], turns
    assert len(labels) > 20 and {label["row"] for label in labels} == {0, 1, 2}
    for row in range(3):
        placed = sorted((label["x"], label["x"] + label["width"]) for label in labels if label["row"] == row)
        assert all(end <= next_start for (_, end), (next_start, _) in zip(placed, placed[1:])), placed
    for label in labels:  # each label at its own word's time
        frame = (label["x"] - 50) / 6
        assert frame == int(frame) and label["text"] == ("a" if int(frame) % 3 else "conversation"), label


@pytest.mark.slow
def test_page_picks_a_persona_from_the_servers_voices(tmp_path, small_tokenizer_path):
    """The persona picker lists the server's voices (/api/voices), keeps the choice in the page address, and the
    session opens with that voice and role (NVIDIA's query names): the page connects once the prompt is done."""
    from duplex.runtime.voices import make_voice_file

    wav = tmp_path / "mic.wav"
    fake_microphone(wav)
    voices = tmp_path / "voices"
    voices.mkdir()
    for name in ("NATF2", "VARM1"):
        make_voice_file(make_engine(1), 0.3 * np.sin(np.arange(24000) / 24000 * 2 * np.pi * (150 + len(name)))
                        .astype(np.float32), voices / f"{name}.pt")
    role = "hello there, how are you today?"

    async def main():
        engine = make_engine(1, tokenizer=TextTokenizer(small_tokenizer_path))
        server = VoiceServer(engine, ServerOptions(port=0, voice_prompt_dir=str(voices)))
        await server.start()
        try:
            async with Page(f"http://127.0.0.1:{server.port}/", wav, tmp_path) as page:
                for _ in range(100):
                    if await page.tools.evaluate("!document.getElementById('persona').hidden"):
                        break
                    await asyncio.sleep(0.1)
                offered = await page.tools.evaluate(
                    "[...document.getElementById('voice_prompt').options].map((o) => [o.value, o.textContent])")
                picked = await page.tools.evaluate(
                    "(() => { const v = document.getElementById('voice_prompt'), t = document.getElementById("
                    "'text_prompt'); v.value = 'VARM1.pt'; v.onchange(); t.value = %s; t.onchange();"
                    " return location.search; })()" % json.dumps(role))
                await page.tools.evaluate("document.getElementById('toggle').click()", gesture=True)
                preparing = await page.wait_for_text("status", "persona", seconds=10)
                connected = await page.wait_for_text("status", "connected", seconds=60)
                asked = [key for key in server.prompts._kept]
                return offered, picked, preparing, connected, asked, server.stats()["prompts"]
        finally:
            await server.stop()

    offered, picked, preparing, connected, asked, prompts = asyncio.run(main())
    assert offered == [["", "(none)"], ["NATF2.pt", "NATF2"], ["VARM1.pt", "VARM1"]], offered
    assert "voice_prompt=VARM1.pt" in picked and "text_prompt=hello" in picked, picked
    assert "preparing the persona" in preparing, preparing
    assert connected.startswith("connected"), connected
    assert len(asked) == 1 and asked[0][0].endswith("VARM1.pt") and asked[0][-1] == role, asked
    assert prompts["sessions"] == 1


@pytest.mark.slow
def test_page_picks_an_adapter_when_the_server_has_some(tmp_path):
    """The adapter picker (issue 26) appears only for a server with LoRA adapters, lists them (/api/adapters) with the
    base model, starts on the server's default, keeps the choice in the page address, and the session runs it."""
    from safetensors.torch import load_file, save_file

    from tests.helpers import FIXTURES

    wav = tmp_path / "mic.wav"
    fake_microphone(wav)
    adapter = FIXTURES / "lora_small" / "lora.safetensors"
    inverted = tmp_path / "inverted" / "lora.safetensors"
    inverted.parent.mkdir()
    save_file({k: -v if ".lora_B." in k else v for k, v in load_file(adapter).items()}, inverted)
    shutil.copy(adapter.parent / "config.json", inverted.parent / "config.json")

    async def visit(engine, pick=None):
        server = VoiceServer(engine, ServerOptions(port=0))
        await server.start()
        try:
            async with Page(f"http://127.0.0.1:{server.port}/", wav, tmp_path) as page:
                for _ in range(30):
                    if await page.tools.evaluate("!document.getElementById('adapter-box').hidden"):
                        break
                    await asyncio.sleep(0.1)
                shown = await page.tools.evaluate("!document.getElementById('adapter-box').hidden")
                if pick is None:
                    return shown, None, None, None, None
                offered = await page.tools.evaluate(
                    "[...document.getElementById('adapter').options].map((o) => [o.value, o.textContent])")
                default = await page.tools.evaluate("document.getElementById('adapter').value")
                picked = await page.tools.evaluate(
                    "(() => { const a = document.getElementById('adapter'); a.value = %s; a.onchange();"
                    " return location.search; })()" % json.dumps(pick))
                await page.tools.evaluate("document.getElementById('toggle').click()", gesture=True)
                connected = await page.wait_for_text("status", "connected", seconds=30)
                running = [s["adapter"] for s in server.stats()["per_session"].values()]
                return shown, offered, (default, picked), connected, running
        finally:
            await server.stop()

    shown, offered, (default, picked), connected, running = asyncio.run(
        visit(make_engine(1, adapters=(adapter, inverted)), pick="inverted"))
    assert shown and offered == [["lora_small", "lora_small"], ["inverted", "inverted"],
                                 ["none", "(none: the base model)"]], offered
    assert default == "lora_small" and "adapter=inverted" in picked, (default, picked)
    assert connected == "connected: speak (adapter inverted)" and running == ["inverted"], (connected, running)
    assert asyncio.run(visit(make_engine(1)))[0] is False  # no adapters: no picker
