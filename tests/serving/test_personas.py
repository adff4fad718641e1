"""System prompts on the server (NVIDIA's query parameters): voices by name from the server's folder, refusals before
the handshake, the handshake after the prompt, the other sessions talking meanwhile, prompts kept by content."""

import asyncio
import json
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from helpers import make_engine, serve, speech
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from duplex.cli import main
from duplex.model.tokenizer import TextTokenizer
from duplex.serving.personas import PromptCache, Refusal, VoiceCatalog
from duplex.serving.protocol import AUDIO, HANDSHAKE, MAX_TEXT_PROMPT_CHARS, message, parse_query

ROLE = "hello there, how are you today?"


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    """A voice folder for the small model: NATF2.pt made from a recording (as ``duplex voices make`` does), a .pt
    that is not a voice file, and files that are not voices at all."""
    from duplex.runtime.voices import make_voice_file

    folder = tmp_path_factory.mktemp("voices")
    make_voice_file(make_engine(1), speech(1.0), folder / "NATF2.pt")
    (folder / "broken.pt").write_bytes(b"not a torch file")
    (folder / "notes.txt").write_text("not a voice")
    (folder / ".hidden.pt").write_bytes(b"")
    return folder


def _engine(tokenizer_path, slots=2):
    return make_engine(slots, tokenizer=TextTokenizer(tokenizer_path))


def _chat(url, **query):
    return url + "/api/chat?" + urllib.parse.urlencode(dict(format="pcm16", **query))


async def _refused(url):
    """The HTTP status and body an upgrade got instead of the handshake."""
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url):
            pass
    return refused.value.response.status_code, refused.value.response.body.decode()


def _get(base, path):
    try:
        with urllib.request.urlopen(base + path, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


# ------------------------------------------------------------------------------------------ the query, the names
def test_nvidia_query_parameters_are_read():
    q = parse_query("/api/chat?voice_prompt=NATF2.pt&text_prompt=%20You%20are%20kind.%20&text_seed=5&audio_seed=9")
    assert q.voice_prompt == "NATF2.pt" and q.text_prompt == "You are kind." and q.sampling == {"seed": 9}
    assert parse_query("/api/chat?text_seed=5").sampling == {"seed": 5}  # NVIDIA's client: both seeds, audio wins
    assert parse_query("/api/chat?text_seed=5&seed=6").sampling == {"seed": 6}
    assert parse_query("/api/chat?seed=-1").sampling == {}  # NVIDIA's -1: a random seed
    assert parse_query("/api/chat?seed=4&audio_seed=-1").sampling == {}
    empty = parse_query("/api/chat?voice_prompt=&text_prompt=%20")
    assert empty.voice_prompt is None and empty.text_prompt is None


def test_voices_are_plain_names_in_the_folder(voices, tmp_path, monkeypatch):
    catalog = VoiceCatalog([str(voices)])
    assert catalog.names() == ["NATF2.pt", "broken.pt"]  # voice files only, hidden ones left out
    assert catalog.find("NATF2.pt") == str(voices / "NATF2.pt") and catalog.find("NATF2") == str(voices / "NATF2.pt")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here.pt").write_bytes(b"")  # a file beside the server is no voice of its folder
    for name in ("../NATF2.pt", f"{voices}/NATF2.pt", "sub/NATF2.pt", "..\\NATF2.pt", ".hidden.pt", "..", "a\x00.pt",
                 "C:NATF2.pt"):
        with pytest.raises(Refusal) as refused:
            catalog.find(name)
        assert refused.value.status == 400 and "paths are not accepted" in refused.value.reason, name
    for name in ("here.pt", "NATM0.pt", "notes.txt"):
        with pytest.raises(Refusal) as refused:
            catalog.find(name)
        assert refused.value.status == 404 and "NATF2.pt, broken.pt" in refused.value.reason, name
    with pytest.raises(Refusal) as refused:
        VoiceCatalog([]).find("NATF2.pt")
    assert refused.value.status == 404 and "--voice-prompt-dir" in refused.value.reason


def test_prompts_are_built_once_per_file_and_text(tmp_path):
    calls = []

    def build(voice, text):
        calls.append((voice, text))
        time.sleep(0.05)
        return object()

    voice = tmp_path / "v.pt"
    voice.write_bytes(b"1")

    async def main():
        cache = PromptCache(build)
        try:
            a, b = await asyncio.gather(cache.get(str(voice), "x"), cache.get(str(voice), "x"))  # one build
            c = await cache.get(str(voice), "y")
            voice.write_bytes(b"22")  # the file changed: built again
            d = await cache.get(str(voice), "x")
            return a, b, c, d
        finally:
            cache.close()

    a, b, c, d = asyncio.run(main())
    assert a is b and c is not a and d is not a and len(calls) == 3


# ------------------------------------------------------------------------------------------------ the server
def test_refusals_come_before_the_handshake_with_the_reason(voices, small_tokenizer_path):
    async def test(server, url):
        base = url.replace("ws://", "http://")
        loop = asyncio.get_running_loop()
        listed = await loop.run_in_executor(None, _get, base, "/api/voices")
        refusals = [await _refused(_chat(url, voice_prompt=name)) for name in ("NATM9.pt", "../NATF2.pt",
                                                                              "/etc/passwd", "broken.pt")]
        refusals.append(await _refused(_chat(url, text_prompt="x" * (MAX_TEXT_PROMPT_CHARS + 1))))
        return listed, refusals, server.connections, server.engine.free_slots, server.stats()["prompts"]

    listed, refusals, connections, free, prompts = serve(test, engine=_engine(small_tokenizer_path),
                                                         voice_prompt_dir=str(voices))
    assert listed[0] == 200
    info = json.loads(listed[1])
    assert info["voices"] == ["NATF2.pt", "broken.pt"] and info["text_prompt"] and not info["personaplex"]
    (missing, missing_body), (up, _), (absolute, _), (broken, broken_body), (long, long_body) = refusals
    assert missing == 404 and "'NATM9.pt' not found" in missing_body and "NATF2.pt, broken.pt" in missing_body
    assert up == 400 and absolute == 400
    assert broken == 500 and "broken.pt" in broken_body and "cannot be used" in broken_body
    assert long == 400 and str(MAX_TEXT_PROMPT_CHARS) in long_body
    assert connections == 0 and free == 2  # no session began, no slot was taken
    assert prompts["refused"] == 5


def test_voices_need_the_token_too(voices, small_tokenizer_path):
    async def test(server, url):
        base = url.replace("ws://", "http://")
        loop = asyncio.get_running_loop()
        return (await loop.run_in_executor(None, _get, base, "/api/voices"),
                await loop.run_in_executor(None, _get, base, "/api/voices?token=s3cret"))

    (without, _), (with_token, body) = serve(test, engine=_engine(small_tokenizer_path),
                                             voice_prompt_dir=str(voices), token="s3cret")
    assert without == 401 and with_token == 200 and json.loads(body)["voices"] == ["NATF2.pt", "broken.pt"]


@pytest.mark.slow
def test_the_handshake_waits_for_the_prompt_while_others_talk(voices, small_tokenizer_path):
    """B's prompt is stepped one frame a tick among A's steps; A gets its reply every tick meanwhile; B's handshake
    comes when the prompt is done; C, asking for the same persona, starts from the kept state at once."""
    async def test(server, url):
        a = await connect(_chat(url))
        assert await asyncio.wait_for(a.recv(), 5) == message(HANDSHAKE)
        received = []

        async def read_a():
            while True:
                msg = await a.recv()
                if msg[:1] == bytes([AUDIO]):
                    received.append(time.perf_counter())

        reader = asyncio.create_task(read_a())
        await asyncio.sleep(0.5)
        persona = dict(voice_prompt="NATF2.pt", text_prompt=ROLE)
        ticks0, since = server.clock.ticks, time.perf_counter()
        b = await connect(_chat(url, **persona))
        for _ in range(200):  # the slot opens on the engine's worker thread, then waits for its prompt
            if server.stats()["prompting"]:
                break
            await asyncio.sleep(0.01)
        prompting = server.stats()["prompting"]
        first = await asyncio.wait_for(b.recv(), 60)
        ticks_b, until = server.clock.ticks - ticks0, time.perf_counter()
        a_during = sum(since < t <= until for t in received)
        frames = len(next(iter(server.prompts._kept.values())))
        b_audio = 0
        for _ in range(40):  # its replies, text pieces among them (as many as the model says)
            if (await asyncio.wait_for(b.recv(), 5))[:1] == bytes([AUDIO]):
                b_audio += 1
                if b_audio == 4:
                    break
        await b.close()
        while not server.engine.free_slots:
            await asyncio.sleep(0.02)
        ticks0 = server.clock.ticks
        c = await connect(_chat(url, **persona))
        c_first = await asyncio.wait_for(c.recv(), 60)
        ticks_c = server.clock.ticks - ticks0
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        for ws in (a, c):
            await ws.close()
        return prompting, first, ticks_b, a_during, frames, b_audio, c_first, ticks_c, server.stats()["prompts"]

    prompting, first, ticks_b, a_during, frames, b_audio, c_first, ticks_c, prompts = serve(test, engine=_engine(small_tokenizer_path), voice_prompt_dir=str(voices))
    assert prompting == 1 and frames > 20
    # one prompt frame a tick, then the handshake (the clock counts a tick once its step is done and its replies
    # handed over, so the tick that stepped the last frame may not be counted yet when the handshake arrives)
    assert first == message(HANDSHAKE) and ticks_b >= frames - 1
    assert a_during >= frames - 3  # A's replies went on, one a tick (the last few may still be on their way)
    assert b_audio >= 4  # then B talks
    assert c_first == message(HANDSHAKE) and ticks_c < frames  # the kept state: no stepping again
    assert prompts == {"sessions": 2, "built": 1, "reused": 1, "refused": 0}


@pytest.mark.slow
def test_a_client_that_leaves_during_its_prompt_frees_its_slot(small_tokenizer_path):
    async def test(server, url):
        ws = await connect(_chat(url, text_prompt=ROLE * 3))
        while not server.stats()["prompting"]:
            await asyncio.sleep(0.02)
        await ws.close()
        for _ in range(100):
            if server.engine.free_slots == 2 and not server.stats()["prompting"]:
                break
            await asyncio.sleep(0.05)
        return server.engine.free_slots, server.stats()["prompting"], len(server.sessions)

    assert serve(test, engine=_engine(small_tokenizer_path)) == (2, 0, 0)


def test_serve_names_a_missing_voice_folder_before_the_model_loads(tmp_path, capsys):
    assert main(["serve", "--port", "0", "--slots", "1", "--voice-prompt-dir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--voice-prompt-dir" in err and "no such folder" in err


@pytest.mark.slow
def test_the_default_model_serves_nvidias_voice_names():
    """Without --voice-prompt-dir the model's own voices are served: the default model's folder answers the 18 names
    NVIDIA's client offers."""
    from duplex.runtime.engine import Engine
    from duplex.runtime.voices import NVIDIA_VOICE_NAMES

    async def test(server, url):
        base = url.replace("ws://", "http://")
        _, listed = await asyncio.get_running_loop().run_in_executor(None, _get, base, "/api/voices")
        async with connect(_chat(url, voice_prompt="NATF0.pt", text_seed=1, audio_seed=2)) as ws:
            first = await asyncio.wait_for(ws.recv(), 60)
            audio = sum([(await asyncio.wait_for(ws.recv(), 5))[:1] == bytes([AUDIO]) for _ in range(3)])
        return json.loads(listed), first, audio, server.stats()["prompts"]

    info, first, audio, prompts = serve(test, engine=Engine.default(slots=1))
    assert info["voices"] == sorted(f"{name}.pt" for name in NVIDIA_VOICE_NAMES) and info["text_prompt"]
    assert info["default_voice"] is None and info["default_text_prompt"] == ""  # not PersonaPlex: none chosen
    assert first == message(HANDSHAKE) and audio >= 2
    assert prompts["sessions"] == 1 and prompts["built"] == 1
