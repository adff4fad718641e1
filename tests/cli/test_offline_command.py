"""``duplex offline IN OUT`` and ``duplex voices`` (issue 24, deliverables 3 and 5): on the small fixture models
(PersonaPlex's and Moshi's layout) with a voice and a text prompt, and on the default model text-only; the reply has
the input's length, the text NVIDIA's JSON layout; the same seed gives the same reply; bad inputs are one line;
``mic --input-file`` still works, now with prompts."""

import json
import re

import numpy as np
import pytest
import soundfile as sf
from helpers import FIXTURES, MIMI_SMALL, MIMI_SMALL_CONFIG, SMALL_MODEL_ARGS, speech

from duplex.cli import main

PERSONA_ARGS = ["--lm", str(FIXTURES / "personaplex_small.safetensors"), "--lm-config",
                str(FIXTURES / "personaplex_small.json"), "--mimi", str(MIMI_SMALL), "--mimi-config",
                str(MIMI_SMALL_CONFIG), "--device", "cpu"]
SAMPLES = 30000  # 1.25 s: not a whole number of frames


@pytest.fixture
def wav(tmp_path):
    path = tmp_path / "in.wav"
    sf.write(path, speech(SAMPLES / 24000, seed=1), 24000, subtype="FLOAT")
    return path


def _run(args, capsys):
    code = main(args)
    err = capsys.readouterr().err
    return code, err


def _outputs(tmp_path, name):
    audio, rate = sf.read(tmp_path / f"{name}.wav")
    return audio, rate, json.loads((tmp_path / f"{name}.json").read_text())


@pytest.mark.parametrize("model", ["personaplex", "moshi"])
def test_a_small_model_with_a_voice_and_a_text_prompt(tmp_path, wav, capsys, small_tokenizer_path, model):
    args = (PERSONA_ARGS if model == "personaplex" else SMALL_MODEL_ARGS) + ["--tokenizer", str(small_tokenizer_path)]
    voice = tmp_path / "voice.pt"
    assert _run(["voices", "make", str(wav), str(voice), *args], capsys)[0] == 0  # made for this model
    runs = []
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        code, err = _run(["offline", str(wav), str(tmp_path / f"{name}.wav"), "--output-text",
                          str(tmp_path / f"{name}.json"), "--voice-prompt", str(voice), "--text-prompt",
                          "hello there, how are you today?", "--seed", seed, *args], capsys)
        assert code == 0, err
        assert "system prompt:" in err and "voice.pt" in err and "role 'hello there" in err
        runs.append(_outputs(tmp_path, name))
    audio, rate, text = runs[0]
    assert rate == 24000 and audio.shape == (SAMPLES,)
    frames = -(-SAMPLES // 1920)
    assert len(text) == frames and all(isinstance(t, str) for t in text)  # after a prompt every frame has text
    np.testing.assert_array_equal(runs[0][0], runs[1][0])  # the same seed: the same reply
    assert runs[0][2] == runs[1][2]
    assert not np.array_equal(runs[0][0], runs[2][0])  # another seed: another one


def test_the_default_model_text_only_and_greedy(tmp_path, wav, capsys):
    outs = []
    for name in ("a", "b"):
        code, err = _run(["offline", str(wav), str(tmp_path / f"{name}.wav"), "--output-text",
                          str(tmp_path / f"{name}.json"), "--text-prompt", "you are a friendly assistant.",
                          "--greedy", "--device", "cpu"], capsys)
        assert code == 0, err
        outs.append(_outputs(tmp_path, name))
    audio, rate, text = outs[0]
    assert audio.shape == (SAMPLES,) and len(text) == 16
    np.testing.assert_array_equal(outs[0][0], outs[1][0])  # greedy: no seed needed for the same reply


def test_the_default_models_voices_answer_nvidias_names(tmp_path, wav, capsys):
    code, err = _run(["offline", str(wav), str(tmp_path / "o.wav"), "--voice-prompt", "NATF2.pt", "--seed", "1",
                      "--device", "cpu"], capsys)
    assert code == 0, err
    assert "weights/voices/NATF2.pt" in err and sf.read(tmp_path / "o.wav")[0].shape == (SAMPLES,)
    code, err = _run(["voices", "list"], capsys)
    assert code == 0


@pytest.mark.parametrize("extra, message", [
    (["--voice-prompt", "NOPE.pt"], "voice prompt 'NOPE.pt' not found in .*voices there: NATF0.pt"),
    (["--seed", "-5"], "--seed -5: a seed is an integer >= 0"),
    (["--output-text", "/nonexistent/x.json"], "output folder /nonexistent does not exist"),
    (["--voice-prompt", "NATF0.pt", "--voice-prompt-dir", "/nonexistent"], "not found in /nonexistent"),
])
def test_bad_inputs_are_one_line(tmp_path, wav, capsys, extra, message):
    code, err = _run(["offline", str(wav), str(tmp_path / "o.wav"), "--device", "cpu", *extra], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("duplex: error: ")
    assert re.search(message, err), err


def test_bad_files_are_one_line(tmp_path, wav, capsys):
    for args, message in (
            (["offline", str(tmp_path / "missing.wav"), str(tmp_path / "o.wav")], "input .*missing.wav: no such file"),
            (["offline", str(wav), str(tmp_path)], "is a folder"),
            (["voices", "make", str(wav), str(tmp_path / "v.bin")], "is named NAME.pt"),
            (["voices", "folder", str(tmp_path / "vf"), "--voice", "NATF0"], "expected NAME=RECORDING")):
        code, err = _run(args + ["--device", "cpu"], capsys)
        assert code == 2 and err.count("\n") == 1 and err.startswith("duplex: error: "), err
        assert re.search(message, err), err


def test_mic_input_file_runs_the_same_function_with_prompts(tmp_path, wav, capsys):
    code, err = _run(["mic", "--input-file", str(wav), "--output-file", str(tmp_path / "m.wav"), "--text-prompt",
                      "hello", "--device", "cpu"], capsys)
    assert code == 0, err
    assert "system prompt:" in err and sf.read(tmp_path / "m.wav")[0].shape == (SAMPLES,)
