"""The default model that ships: its files, Kyutai's implementation reading it unchanged, and a conversation."""

import json
import os

import numpy as np
import pytest
import torch

import duplex
from duplex.model.lm import MoshiLM

SET = os.path.join(os.path.dirname(__file__), "..", "..", "demos", "fdb-synthetic")


def test_default_model_paths_are_the_shipped_files():
    paths = duplex.default_model_paths()
    assert set(paths) == {"lm", "lm_config", "mimi", "mimi_config", "tokenizer"}
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in paths.values())
    total = sum(os.path.getsize(p) for p in paths.values())
    assert total < 62e6, f"the shipped model is {total / 1e6:.1f} MB"
    from safetensors import safe_open

    with safe_open(paths["lm"], framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}


@pytest.mark.slow
def test_kyutais_implementation_loads_the_shipped_lm_strictly_and_gives_the_same_greedy_tokens():
    loaders = pytest.importorskip("moshi.models.loaders")
    from moshi.models.lm import LMGen

    paths = duplex.default_model_paths()
    config = json.loads(open(paths["lm_config"]).read())
    theirs = loaders.get_moshi_lm(paths["lm"], lm_kwargs=config, device="cpu", dtype=torch.float32)
    ours = MoshiLM.from_checkpoint(paths["lm"], paths["lm_config"], dtype=torch.float32)
    user = torch.randint(0, 2048, (1, 8, 40), generator=torch.Generator().manual_seed(0))
    reference = LMGen(theirs, use_sampling=False)
    expected = []
    with reference.streaming(1), torch.no_grad():
        for s in range(user.shape[-1]):
            out = reference.step(user[:, :, s:s + 1])
            if out is not None:
                expected.append(out[0, :, 0])
    gen = ours.generator(1, greedy=True)
    got = [gen.step(user[:, :, s])[0] for s in range(user.shape[-1])][1:]
    assert torch.equal(torch.stack(got), torch.stack(expected))


def _conversation(engine, folder: str, tail_seconds: float = 2.0):
    """The sample's user audio through the engine one 80 ms frame per step, as a live session: (seconds, piece)
    of every text piece the model wrote, and its audio."""
    from codec.io.audio import load_audio

    pcm = load_audio(os.path.join(folder, "input.wav"), engine.sample_rate)[0].numpy()
    pcm = np.concatenate([pcm, np.zeros(int(tail_seconds * engine.sample_rate), np.float32)])
    frame = engine.frame_size
    slot = engine.open(seed=0)
    pieces, audio = [], []
    try:
        for i in range(len(pcm) // frame):
            out, piece = engine.step({slot: pcm[i * frame:(i + 1) * frame]})[slot]
            audio.append(out)
            if piece:
                pieces.append((i * frame / engine.sample_rate, piece))
    finally:
        engine.close(slot)
    return pieces, np.concatenate(audio)


@pytest.mark.slow
def test_the_default_model_waits_for_the_end_of_the_turn_then_answers():
    """On held-out samples of the shipped set (a user voice training never heard): at most one word while the user
    asks (a backchannel such as "mhm", which is listening, not taking the turn; the turn-taking benchmark's "talks
    early" is two words or more), words within a second of the end of the user's turn, and audio with them."""
    from duplex import Engine

    engine = Engine.default(slots=1)
    answered = 0
    samples = sorted(os.listdir(os.path.join(SET, "smooth_turn_taking")), key=int)[:6]
    for name in samples:
        folder = os.path.join(SET, "smooth_turn_taking", name)
        end = json.load(open(os.path.join(folder, "turn_taking.json")))[0]["timestamp"][0]
        pieces, audio = _conversation(engine, folder)
        early = [p for t, p in pieces if t < end - 0.3]
        prompt = [t for t, p in pieces if end - 0.3 <= t <= end + 1.0]
        # words, not pieces: a piece that starts with a space starts a word (" m" "hm" is one word, "mhm")
        words = sum(1 for i, p in enumerate(early) if i == 0 or p.startswith(" "))
        assert words <= 1, (name, end, pieces)  # it listens while the user speaks
        if prompt:
            answered += 1
            reply = audio[int(prompt[0] * 24000):int((prompt[0] + 1.0) * 24000)]
            assert np.sqrt(np.mean(reply ** 2)) > 0.01, (name, pieces)  # and it speaks what it writes
    assert answered >= len(samples) - 1, answered
