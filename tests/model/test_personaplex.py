"""PersonaPlex against vectors made with NVIDIA's own code (tests/fixtures/make_personaplex_vectors.py: its
``LMGen``, CPU, float32, greedy) on a small random model with PersonaPlex's layout (dep_q == n_q = 16)."""

import numpy as np
import pytest
import torch
from helpers import FIXTURES
from safetensors.torch import load_file

from codec import Mimi
from duplex.errors import PromptError
from duplex.model import prompts as P
from duplex.model.config import LMConfig
from duplex.model.generator import voice_embedding_file
from duplex.model.lm import MoshiLM

LM = FIXTURES / "personaplex_small.safetensors"
CONFIG = FIXTURES / "personaplex_small.json"
VOICE_WAV = FIXTURES / "personaplex_voice.wav"
VOICE_PT = FIXTURES / "personaplex_voice.pt"


@pytest.fixture(scope="module")
def io():
    return load_file(str(FIXTURES / "personaplex_small_io.safetensors"))


@pytest.fixture(scope="module")
def lm():
    return MoshiLM.from_checkpoint(LM, config=CONFIG, dtype=torch.float32)


@pytest.fixture(scope="module")
def mimi():
    return Mimi.from_checkpoint(FIXTURES / "mimi_small.safetensors", config=FIXTURES / "mimi_small_config.json",
                                num_codebooks=8)


@pytest.fixture(scope="module")
def constants(io):
    return P.PromptConstants(silence_tokens=tuple(io["silence_tokens"].tolist()),
                             sine_tokens=tuple(io["sine_tokens"].tolist()))


def test_layout_is_told_from_the_config():
    cfg = LMConfig.load(CONFIG)
    assert cfg.personaplex and cfg.dep_q == 16 and cfg.model_codebooks == 8 and cfg.user_codebooks == 8
    moshi = LMConfig.moshi_7b()
    assert not moshi.personaplex and moshi.model_codebooks == 8 and moshi.user_codebooks == 8
    assert LMConfig.personaplex_7b().personaplex and LMConfig.load("personaplex_7b").dep_q == 16


def test_plain_conversation_identical(lm, io):
    """No prompt, batch 2, 40 calls: nothing for the first two calls (one more than Kyutai's), the 16-step window
    (NVIDIA's: 15 past steps) wraps twice."""
    gen = lm.generator(2, greedy=True)
    user = io["plain_user"]
    out = torch.stack([gen.step(user[:, :, s]) for s in range(40)], -1)
    assert torch.equal(out, io["plain_out"][:, :9])
    assert (out[:, :, :2] == -2).all() and (out[:, :, 2:] >= 0).all()


def test_the_window_is_context_minus_one(lm, io):
    """The vectors tell the window apart: with Kyutai's (context past steps) the tokens differ once it is full."""
    from duplex.model import generator

    original = generator.ring_step_tables
    try:
        generator.ring_step_tables = lambda o, t, cap, ctx, *a: original(o, t, cap, ctx + 1, *a)
        gen = lm.generator(2, greedy=True)
        out = torch.stack([gen.step(io["plain_user"][:, :, s]) for s in range(40)], -1)
    finally:
        generator.ring_step_tables = original
    assert torch.equal(out[:, :, :16], io["plain_out"][:, :9, :16])  # the window is not full yet
    assert not torch.equal(out, io["plain_out"][:, :9])


def test_voice_audio_normalised_and_encoded_as_nvidia(mimi, io, constants):
    pcm = P.normalize_loudness(P.read_voice_audio(VOICE_WAV, 24000), 24000)
    np.testing.assert_allclose(pcm, io["voice_pcm_normalized"][0].double().numpy(), atol=1e-6, rtol=0)
    assert abs(P.integrated_loudness(pcm, 24000) + 24.0) < 1e-6
    voice = P.voice_from_audio(VOICE_WAV, mimi, 8, constants)
    assert torch.equal(voice.codes, io["voice_codes"])


def _voice(name, mimi, constants):
    if name.startswith("voice"):
        return P.voice_from_audio(VOICE_WAV, mimi, 8, constants)
    if name.startswith("pt"):
        return P.load_voice(VOICE_PT)
    return None


@pytest.mark.parametrize("name", ["voice_text", "pt_text", "text_only", "voice_only", "pt_only"])
def test_system_prompt_then_conversation_identical(lm, mimi, io, constants, name):
    """NVIDIA's step_system_prompts (voice file / its .pt / none, text / none), then 24 calls: same greedy tokens."""
    text = tuple(io["text_prompt"].tolist()) if name.endswith("text") or name == "text_only" else ()
    frames = P.prompt_frames(lm.config, _voice(name, mimi, constants), text, constants)
    gen = lm.generator(1, greedy=True)
    gen.step_prompt(frames)
    assert int(gen.state["offset"][0]) == int(io[f"{name}_offset"])
    user = io["user"]
    out = torch.stack([gen.step(user[:, :, s]) for s in range(user.shape[-1])], -1)[0]
    assert torch.equal(out, io[f"{name}_out"][:9])


def test_voice_embedding_file_is_nvidias(lm, io, constants, tmp_path):
    """A .pt written from a recording's codes equals the one NVIDIA's save_voice_prompt_embeddings wrote, and
    reads back through load_voice."""
    frames = P.prompt_frames(lm.config, P.VoicePrompt(codes=io["voice_codes"]), (), constants)
    embeddings, cache = voice_embedding_file(lm, frames)
    theirs = torch.load(VOICE_PT, weights_only=True)
    assert torch.equal(embeddings, theirs["embeddings"].reshape(embeddings.shape))
    assert torch.equal(cache, theirs["cache"][0])
    path = tmp_path / "mine.pt"
    P.save_voice_embeddings(path, embeddings, cache)
    again = torch.load(path, weights_only=True)
    assert again["embeddings"].shape == theirs["embeddings"].shape and again["cache"].shape == theirs["cache"].shape
    assert torch.equal(P.load_voice(path).embeddings, embeddings)


def test_system_tags_as_nvidia_wraps_them():
    assert P.wrap_with_system_tags("  You are a teacher. ") == "<system> You are a teacher. <system>"
    assert P.wrap_with_system_tags("<system> x <system>") == "<system> x <system>"


def test_prompt_refusals(lm, small_lm, io):
    with pytest.raises(PromptError, match="silence_tokens"):  # a Moshi-style model takes prompts (re-timed) too
        P.prompt_frames(small_lm.config, None, (1, 2))
    with pytest.raises(PromptError, match="silence_tokens"):  # NVIDIA's tokens do not fit 64-entry codebooks
        P.prompt_frames(lm.config, None, (1, 2))
    with pytest.raises(PromptError, match="another model"):
        wrong = P.VoicePrompt(embeddings=torch.zeros(3, 7), cache=torch.zeros(17, 4, dtype=torch.long))
        P.prompt_frames(lm.config, wrong, (), P.PromptConstants(silence_tokens=(0,) * 8, sine_tokens=(0,) * 8))
    with pytest.raises(PromptError, match="NVIDIA's layout"):
        P.load_voice(VOICE_WAV.with_suffix(".missing.pt"))


def test_a_personaplex_7b_file_is_told_by_its_tensors():
    """NVIDIA's loader takes Moshi 7B's keywords with dep_q = 16 from code: 475 tensors against Moshi's 355."""
    from duplex.runtime.checkpoints import ModelFiles, _preset_shapes, seven_b_preset

    assert len(_preset_shapes("moshi_7b")) == 355 and len(_preset_shapes("personaplex_7b")) == 475
    assert seven_b_preset(LM) is None  # the small file: its config beside it tells the layout
    assert LMConfig.load(ModelFiles.for_lm(LM, mimi=FIXTURES / "mimi_small.safetensors",
                                           mimi_config=FIXTURES / "mimi_small_config.json").lm_config).personaplex
