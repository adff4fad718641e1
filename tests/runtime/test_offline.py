"""``runtime.offline`` and system prompts on a Moshi-style model (issue 24, deliverable 3): a recording through
the engine as ``duplex offline`` and ``mic --input-file`` run it; NVIDIA's frames re-timed to Kyutai's step; a
voice replayed from its ``.pt`` ends in the state its recording ends in; one slot prompting leaves the others'
tokens unchanged; the prompt constants of a model's own codec."""

import numpy as np
import pytest
import torch
from helpers import make_engine, speech

from duplex.model import prompts as P
from duplex.runtime.offline import PromptedEngine, nvidia_text, run_offline
from duplex.runtime.voices import make_voice_file

TEXT = (5, 17, 42, 9)


@pytest.fixture(scope="module")
def constants():
    return P.codec_prompt_constants(make_engine(1).mimi)


def _engine(constants, slots=1, greedy=True):
    engine = make_engine(slots, greedy=greedy, cuda_graphs=False)
    engine.prompt_constants = constants
    return engine


def test_without_a_prompt_a_seed_gives_the_same_reply_as_long_as_the_input():
    pcm = speech(1.3)
    ours = run_offline(_engine(None, greedy=False), pcm, seed=4)
    assert ours.reply.shape == pcm.shape and not ours.interrupted
    again = run_offline(_engine(None, greedy=False), pcm, seed=4)
    np.testing.assert_array_equal(ours.reply, again.reply)  # the seed asked for: the same reply
    assert ours.tokens == again.tokens and ours.frames == ours.total == 17
    assert ours.tokens[0] == -2 and all(t >= 0 for t in ours.tokens[1:])  # Kyutai's first frame returns nothing


def test_nvidias_text_layout():
    class Tok:
        class sp:
            @staticmethod
            def GetPieceSize():
                return 7

            @staticmethod
            def IdToPiece(i):
                return {5: "\u2581hello", 6: "lo", 1: "<s>"}[i]

    assert nvidia_text([-2, -2, 0, 3, 5, 6, 1, 9], Tok) == ["EPAD", "PAD", " hello", "lo", "<s>", ""]


def test_kyutai_steps_retime_nvidias_frames(constants):
    cfg = make_engine(1).lm.config
    voice = P.VoicePrompt(codes=torch.arange(8 * 5).view(8, 5) % 64)
    frames = P.prompt_frames(cfg, voice, TEXT, constants)
    n = 5 + 2 * constants.silence_frames + len(TEXT)
    assert len(frames) == n - 1 and frames.voice_frames == 4
    # step s forces the target column s + 1: text and semantic of frame s + 1, acoustic of frame s
    assert torch.equal(frames.model[0, 1:], torch.cat([voice.codes[:1, 1], voice.codes[1:, 0]]))
    assert int(frames.model[0, 0]) == constants.zero_text_code
    text_at = 5 + constants.silence_frames - 1  # frame index of the first text token, minus one
    assert [int(t) for t in frames.model[text_at:text_at + len(TEXT), 0]] == list(TEXT)
    assert torch.equal(frames.user[0], torch.tensor(constants.sine_tokens))


def _state_after(engine, frames):
    slot = engine.open(prompt=frames)
    while engine.prompting(slot):
        engine.step({})
    st = engine.generator_state
    return slot, {"cache": st["cache"][slot].clone(), "offset": st["offset"][slot].clone(),
                  "k": torch.stack([layer["k"][slot].clone() for layer in st["layers"].values()])}


def test_a_voice_file_replays_its_recording(constants, tmp_path):
    """The .pt written for this model (NVIDIA's layout) ends the prompt in the state the recording ends it in:
    the same token ring and offset, the same keys in the attention window."""
    engine = _engine(constants)
    pcm = speech(0.9, seed=2)
    embeddings, frames = make_voice_file(engine, pcm, tmp_path / "v.pt")
    assert (embeddings, frames) == (11, 12)  # 0.9 s: 12 frames, 11 steps (Kyutai's step s is NVIDIA's call s + 1)
    saved = torch.load(tmp_path / "v.pt", weights_only=True)
    assert saved["embeddings"].shape == (11, 1, 1, engine.lm.config.dim) and saved["cache"].shape == (1, 17, 4)

    from_codes = engine.system_prompt(P.VoicePrompt(codes=P.encode_voice(engine.mimi, P.normalize_loudness(
        pcm.astype(np.float64), 24000), 8)), None)
    from_file = engine.system_prompt(tmp_path / "v.pt", None)
    assert len(from_codes) == len(from_file)
    _, a = _state_after(_engine(constants), from_codes)
    _, b = _state_after(_engine(constants), from_file)
    assert torch.equal(a["cache"], b["cache"]) and torch.equal(a["offset"], b["offset"])
    assert torch.equal(a["k"], b["k"])  # bit for bit


def test_one_slot_prompting_leaves_the_others_unchanged(constants):
    rng = np.random.default_rng(3)
    pcm = rng.uniform(-0.3, 0.3, (25, 2, 1920)).astype(np.float32)
    runs = []
    for with_prompt in (False, True):
        engine = _engine(constants, slots=3, greedy=False)
        talkers = [engine.open(seed=i) for i in range(2)]
        if with_prompt:
            engine.open(prompt=engine.system_prompt(P.VoicePrompt(codes=torch.randint(0, 64, (8, 6))), None))
        tokens = []
        for t in range(25):
            engine.step({s: pcm[t, i] for i, s in enumerate(talkers)})
            tokens.append(engine.last_tokens[talkers].clone())
        runs.append(torch.stack(tokens))
    assert torch.equal(runs[0], runs[1])


def test_a_prompted_run_repeats_and_the_prompt_state_is_kept(constants):
    engine = _engine(constants, greedy=False)
    frames = P.prompt_frames(engine.lm.config, None, TEXT, constants)
    pcm = speech(1.0)
    first = run_offline(engine, pcm, prompt=frames, seed=9)
    assert frames.key in engine.prompt_states and first.prompt_frames == len(frames)
    assert first.tokens[0] >= 0  # after a prompt the model speaks from the first frame
    second = run_offline(_engine(constants, greedy=False), pcm, prompt=frames, seed=9)
    np.testing.assert_array_equal(first.reply, second.reply)
    plain = run_offline(_engine(constants, greedy=False), pcm, seed=9)
    assert not np.array_equal(first.reply, plain.reply)  # the prompt changes the conversation


def test_a_prompted_engine_opens_every_session_in_its_prompt(constants):
    engine = _engine(constants, slots=2)
    frames = P.prompt_frames(engine.lm.config, None, TEXT, constants)
    view = PromptedEngine(engine, frames)
    slot = view.open(seed=1)
    assert engine.prompting(slot) == 0 and int(engine.generator_state["offset"][slot]) == len(frames)
    assert view.frame_size == engine.frame_size


def test_codec_prompt_constants(constants):
    engine = make_engine(1)
    again = P.codec_prompt_constants(engine.mimi)
    assert again == constants and len(constants.silence_tokens) == 8
    assert all(0 <= t < 64 for t in constants.silence_tokens + constants.sine_tokens)
    assert constants.silence_tokens != constants.sine_tokens
    assert engine.prompt_constants == constants  # a Moshi-style model gets its codec's own
