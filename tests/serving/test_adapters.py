"""LoRA adapters on the server (docs/serving.md, "Serving adapters"): a client picks one with ``adapter=NAME``
(checked before the handshake, an unknown one refused with 404 and the names), sessions with different adapters and
system prompts share one engine and each gets what the engine gives that adapter, ``/api/adapters`` and
``/api/stats`` say which adapters there are and which one each session runs."""

import asyncio
import dataclasses
import json
import shutil
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
import torch
from helpers import FIXTURES, LM_SMALL, LM_SMALL_CONFIG, MIMI_SMALL, MIMI_SMALL_CONFIG, make_engine, serve
from safetensors.torch import load_file, save_file
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from duplex.model.tokenizer import TextTokenizer
from duplex.serving.protocol import AUDIO, HANDSHAKE, message, parse_query, pcm16_bytes

ADAPTER = FIXTURES / "lora_small" / "lora.safetensors"
ROLE = "hello"  # the shortest role: 30 prompt frames on the small model
FRAMES = 8  # audio messages compared per session


@pytest.fixture(scope="module")
def inverted(tmp_path_factory):
    """A second adapter for the small model, ``inverted``: the fixture's with lora_B negated (its config beside it)."""
    folder = tmp_path_factory.mktemp("adapters") / "inverted"
    folder.mkdir()
    save_file({k: -v if ".lora_B." in k else v for k, v in load_file(ADAPTER).items()}, folder / "lora.safetensors")
    shutil.copy(ADAPTER.parent / "config.json", folder / "config.json")
    return folder / "lora.safetensors"


def adapted_engine(slots, adapters=(), tokenizer=None):
    """The small model (greedy, float32) with ``adapters`` (files) beside its weights."""
    return make_engine(slots, tokenizer=tokenizer, greedy=True, adapters=adapters)


def _chat(url, **query):
    return url + "/api/chat?" + urllib.parse.urlencode(dict(format="pcm16", **query))


def _get(base, path):
    try:
        with urllib.request.urlopen(base + path, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


async def _refused(url):
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url):
            pass
    return refused.value.response.status_code, refused.value.response.body.decode()


async def _replies(ws, count=FRAMES):
    """The first ``count`` audio messages of a session (after its handshake); the client sends nothing, so the
    server steps it with silence every tick, whenever its messages arrive."""
    assert await asyncio.wait_for(ws.recv(), 60) == message(HANDSHAKE)
    audio = []
    while len(audio) < count:
        msg = await asyncio.wait_for(ws.recv(), 10)
        if msg[:1] == bytes([AUDIO]):
            audio.append(msg[1:])
    return audio


def _engine_replies(engine, sessions, count=FRAMES):
    """What ``engine`` gives ``sessions`` ([(adapter, prompt frames or None)], opened in that order, one slot each)
    for ``count`` frames of silence, as the server sends it (PCM16)."""
    slots = []
    for adapter, prompt in sessions:
        if prompt is not None:
            engine.prepare_prompt(prompt, adapter=adapter)
        slots.append(engine.open(prompt=prompt, adapter=adapter))
    out = {slot: [] for slot in slots}
    for _ in range(count):
        for slot, (audio, _) in engine.step({slot: np.zeros(engine.frame_size, np.float32) for slot in slots}).items():
            out[slot].append(pcm16_bytes(audio))
    return [out[slot] for slot in slots]


def test_the_adapter_is_read_from_the_query():
    assert parse_query("/api/chat?adapter=lora_small&format=pcm16").adapter == "lora_small"
    assert parse_query("/api/chat?adapter=none").adapter == "none"
    assert parse_query("/api/chat?adapter=").adapter is None and parse_query("/api/chat").adapter is None


def test_unknown_adapters_are_refused_before_the_handshake_with_the_names(inverted):
    async def test(server, url):
        base = url.replace("ws://", "http://")
        loop = asyncio.get_running_loop()
        listed = await loop.run_in_executor(None, _get, base, "/api/adapters")
        refusals = [await _refused(_chat(url, adapter=name)) for name in ("nope", "../lora_small", "lora_small\n")]
        stats = server.stats()
        return listed, refusals, stats, server.engine.free_slots

    listed, refusals, stats, free = serve(test, engine=adapted_engine(2, (ADAPTER, inverted)))
    assert listed[0] == 200
    assert json.loads(listed[1]) == {"adapters": ["lora_small", "inverted"], "default": "lora_small", "fused": None}
    for status, body in refusals:
        assert status == 404 and "not found; this server's adapters: lora_small, inverted (or none: the base " \
            "model)" in body and body.count("\n") == 1
    assert stats["lora"] == {"adapters": ["lora_small", "inverted"], "default": "lora_small", "fused": None,
                             "refused": 3}
    assert stats["connections"] == 0 and free == 2


def test_a_server_without_adapters_says_so_and_takes_none():
    async def test(server, url):
        refused = await _refused(_chat(url, adapter="lora_small"))
        async with connect(_chat(url, adapter="none")) as ws:  # the base model: what every session runs here
            replies = await _replies(ws, 2)
        listed = await asyncio.get_running_loop().run_in_executor(None, _get, url.replace("ws://", "http://"),
                                                                  "/api/adapters")
        return refused, replies, listed

    (status, body), replies, listed = serve(test, engine=adapted_engine(1), token=None)
    assert status == 404 and "this server has no LoRA adapters (duplex serve --lora FILE)" in body
    assert len(replies) == 2
    assert json.loads(listed[1]) == {"adapters": [], "default": None, "fused": None}


def test_adapters_need_the_token_too():
    async def test(server, url):
        base = url.replace("ws://", "http://")
        loop = asyncio.get_running_loop()
        return (await loop.run_in_executor(None, _get, base, "/api/adapters"),
                await loop.run_in_executor(None, _get, base, "/api/adapters?token=s3cret"))

    (without, _), (with_token, body) = serve(test, engine=adapted_engine(1, (ADAPTER,)), token="s3cret")
    assert without == 401 and with_token == 200 and json.loads(body)["adapters"] == ["lora_small"]


@pytest.mark.slow
def test_sessions_with_and_without_adapters_and_prompts_share_one_server(inverted, small_tokenizer_path):
    """Issue 26: one engine serves several adapters at once. Four sessions at a time: the default adapter, the base
    model, and a system prompt with an adapter and without; each gets, frame for frame, what the engine gives that
    adapter (and prompt), the adapter's replies differ from the base model's, the kept prompt states are one per
    adapter, and /api/stats says which adapter each session runs."""
    tokenizer = TextTokenizer(small_tokenizer_path)

    async def test(server, url):
        # in slots 0 to 3, as the reference below opens them (read at once: replies not read in time are dropped)
        sessions, readers = [], []
        for query in ({}, {"adapter": "none"}, {"text_prompt": ROLE, "adapter": "inverted"},
                      {"text_prompt": ROLE, "adapter": "none"}):
            sessions.append(await connect(_chat(url, **query), max_queue=None))  # (closes at once, unread replies
            # or not)
            readers.append(asyncio.create_task(_replies(sessions[-1])))
        got = list(await asyncio.gather(*readers))
        per_session = {slot: v["adapter"] for slot, v in server.stats()["per_session"].items()}
        await sessions[2].close()
        while not server.engine.free_slots:
            await asyncio.sleep(0.02)
        again = await connect(_chat(url, text_prompt=ROLE, adapter="inverted"), max_queue=None)  # slot 2 again: its
        # kept state
        got.append(await _replies(again))
        for ws in [*sessions, again]:
            await ws.close()
        return got, per_session, sorted(server.engine.prompt_states), server.stats()["prompts"]

    engine = adapted_engine(4, (ADAPTER, inverted), tokenizer)
    # replies are compared frame for frame: none may be dropped as stale on a loaded machine (reply_max_age)
    got, per_session, kept, prompts = serve(test, engine=engine, reply_max_age=60.0)
    reference = adapted_engine(4, (ADAPTER, inverted), tokenizer)
    frames = reference.system_prompt(None, ROLE)
    expected = _engine_replies(reference, [(None, None), ("none", None), ("inverted", frames), ("none", frames)])
    for i, (session, reference_replies) in enumerate(zip(got[:4], expected)):  # (said frame by frame if not)
        assert session == reference_replies, (f"session {i}: frames "
                                              f"{[k for k, (x, y) in enumerate(zip(session, reference_replies)) if x != y]}"
                                              f" of {len(session)} differ from the engine's")
    assert got[4] == got[2]
    assert got[0] != got[1] and got[2] != got[3]  # the adapters change the replies
    assert per_session == {"0": "lora_small", "1": None, "2": "inverted", "3": None}
    assert len(kept) == 2 and {key.rsplit("@", 1)[1] for key in kept} == {"0", "2"}  # one state per adapter
    assert prompts == {"sessions": 3, "built": 1, "reused": 2, "refused": 0}


def test_a_fused_adapter_is_what_every_session_runs(tmp_path):
    from duplex.runtime.checkpoints import ModelFiles
    from duplex.runtime.engine import Engine, SamplingOptions

    files = ModelFiles.for_lm(LM_SMALL, mimi=MIMI_SMALL, lm_config=LM_SMALL_CONFIG, mimi_config=MIMI_SMALL_CONFIG)
    fused = dataclasses.replace(files, lora_adapters=(str(ADAPTER),), fuse_lora=True)
    engine = Engine.from_files(fused, slots=1, dtype=torch.float32, sampling=SamplingOptions(greedy=True))

    async def test(server, url):
        refused = [await _refused(_chat(url, adapter=name)) for name in ("none", "other")]
        async with connect(_chat(url, adapter="lora_small")) as ws:  # its own name: what runs anyway
            replies = await _replies(ws, 2)
            adapter = server.stats()["per_session"]["0"]["adapter"]
        return refused, replies, adapter, server.stats()["lora"]

    refused, replies, adapter, lora = serve(test, engine=engine)
    for status, body in refused:
        assert status == 404 and "runs adapter 'lora_small' fused into its weights" in body
    assert len(replies) == 2 and adapter == "lora_small"
    assert lora == {"adapters": [], "default": None, "fused": "lora_small", "refused": 2}


def test_the_server_may_default_to_another_adapter_or_the_base_model(inverted):
    """``--default-adapter``: what a session that names no adapter runs, said in /api/adapters; checked at start."""
    from duplex.errors import UsageError
    from duplex.serving.server import ServerOptions, VoiceServer

    async def test(server, url):
        async with connect(_chat(url)) as ws:
            await _replies(ws, 1)
            return server.stats()["lora"]["default"], list(server.stats()["per_session"].values())[0]["adapter"]

    for default, expected in (("inverted", "inverted"), ("none", None)):
        said, ran = serve(test, engine=adapted_engine(1, (ADAPTER, inverted)), default_adapter=default)
        assert said == expected and ran == expected
    with pytest.raises(UsageError, match="not one of this server's adapters"):
        VoiceServer(adapted_engine(1, (ADAPTER,)), ServerOptions(default_adapter="nope"))
