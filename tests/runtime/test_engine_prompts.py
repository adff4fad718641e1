"""System prompts in the engine (PersonaPlex, the small NVIDIA-layout fixture): one slot prompting while three
talk, and a kept prompt state copied into a slot equals the prompt stepped in it, bit for bit."""

import numpy as np
import pytest
import torch
from helpers import FIXTURES, MIMI_SMALL, MIMI_SMALL_CONFIG

from codec import Mimi
from duplex.errors import PromptError
from duplex.model import prompts as P
from duplex.model.generator import step_prompt_frames
from duplex.model.lm import MoshiLM
from duplex.runtime.engine import Engine, SamplingOptions

CONSTANTS = P.PromptConstants(silence_tokens=(11, 23, 5, 60, 37, 2, 48, 19), sine_tokens=(7, 31, 54, 12, 45, 26, 3, 63))
TEXT = (1, 17, 42, 5, 99)


def _engine(slots=4):
    lm = MoshiLM.from_checkpoint(FIXTURES / "personaplex_small.safetensors",
                                 config=FIXTURES / "personaplex_small.json", dtype=torch.float32)
    mimi = Mimi.from_checkpoint(MIMI_SMALL, config=MIMI_SMALL_CONFIG)
    engine = Engine(lm, mimi, slots=slots, cuda_graphs=False, sampling=SamplingOptions(greedy=True))
    engine.prompt_constants = CONSTANTS
    return engine


def _pcm(ticks, talkers=3):
    rng = np.random.default_rng(3)
    return rng.uniform(-0.3, 0.3, (ticks, talkers, 1920)).astype(np.float32)


def test_one_slot_prompting_leaves_the_others_unchanged():
    pcm = _pcm(30)
    runs = []
    for with_prompt in (False, True):
        engine = _engine()
        talkers = [engine.open(seed=i) for i in range(3)]
        if with_prompt:
            engine.open(prompt=P.prompt_frames(engine.lm.config, prompt_voice(), TEXT, CONSTANTS))
        tokens = []
        for t in range(30):
            engine.step({s: pcm[t, i] for i, s in enumerate(talkers)})
            tokens.append(engine.last_tokens[talkers].clone())
        runs.append(torch.stack(tokens))
    assert torch.equal(runs[0], runs[1])


def prompt_voice():
    return P.load_voice(FIXTURES / "personaplex_voice.pt")


def test_prompt_in_engine_equals_the_generator_path():
    """The engine's slot ends its prompt in the state the generator (checked against NVIDIA's vectors) ends in."""
    engine = _engine()
    frames = P.prompt_frames(engine.lm.config, prompt_voice(), TEXT, CONSTANTS)
    slot = engine.open(prompt=frames)
    assert engine.prompting(slot) == len(frames)
    while engine.prompting(slot):
        engine.step({})
    gen = engine.lm.generator(1, greedy=True)
    step_prompt_frames(engine.lm, gen.state, gen.scratch, gen.sampling, gen.forcing, frames)
    for name in ("cache", "provided", "offset"):
        assert torch.equal(engine.generator_state[name][slot], gen.state[name][0])
    assert frames.key in engine.prompt_states


def test_kept_prompt_state_equals_the_stepped_path_bit_for_bit():
    pcm = _pcm(12, talkers=4)
    frames = P.prompt_frames(_engine().lm.config, prompt_voice(), TEXT, CONSTANTS)
    stepped, copied = _engine(), _engine()
    # Stepped among three talking slots.
    talkers = [stepped.open(seed=i) for i in range(3)]
    slot_a = stepped.open(prompt=frames, seed=9)
    t = 0
    while stepped.prompting(slot_a):
        stepped.step({s: pcm[t % 12, i] for i, s in enumerate(talkers)})
        t += 1
    # Prepared alone, then copied into a slot when it opens.
    copied.prepare_prompt(frames)
    slot_b = copied.open(prompt=frames, seed=9)
    assert copied.prompting(slot_b) == 0
    a, b = stepped.generator_state, copied.generator_state
    for name in ("cache", "provided", "offset"):
        assert torch.equal(a[name][slot_a], b[name][slot_b])
    for i, layer in a["layers"].items():
        for kv, ring in layer.items():
            capacity = ring.shape[2] - 1  # the last slot takes the writes of rows that do not run: not state
            assert torch.equal(ring[slot_a, :, :capacity], b["layers"][i][kv][slot_b, :, :capacity])
    out_a, out_b = [], []
    for t in range(12):
        out_a.append(stepped.step({slot_a: pcm[t, 3]})[slot_a][0])
        out_b.append(copied.step({slot_b: pcm[t, 3]})[slot_b][0])
        assert torch.equal(stepped.last_tokens[slot_a], copied.last_tokens[slot_b])
    np.testing.assert_array_equal(np.stack(out_a), np.stack(out_b))


def test_prompt_refusals():
    engine = _engine()
    slot = engine.open(prompt=P.prompt_frames(engine.lm.config, None, TEXT, CONSTANTS))
    with pytest.raises(ValueError, match="system prompt"):
        engine.step({slot: np.zeros(1920, np.float32)})
    with pytest.raises(PromptError, match="tokenizer"):
        engine.system_prompt(None, "You are a teacher.")
