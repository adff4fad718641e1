"""``duplex data synth``'s persona options (the data of a LoRA adapter, demos/lora-persona): one fixed assistant
voice, a signature greeting into a quiet line, and without them the corpus exactly as before."""

import ctypes
import hashlib
import json

import numpy as np
import pytest
import soundfile as sf

from duplex.cli import main
from duplex.errors import UsageError

espeak = pytest.importorskip("duplex.data.synth.espeak")
try:
    espeak.Synthesizer()
except espeak.EspeakError:  # pragma: no cover - .ci/run installs espeak-ng
    pytest.skip("needs espeak-ng (apt install espeak-ng)", allow_module_level=True)

from duplex.data.synth.conversation import SynthOptions, kyutai_alignments, make_conversation, synthesize_corpus  # noqa: E402

GREETING = "hi, this is duplex, your friendly helper"
GREETING_WORDS = ["hi", "this", "is", "duplex", "your", "friendly", "helper"]
PERSONA = dict(assistant_voice="en-us-nyc+Annie", assistant_rate=160, assistant_pitch=60)

# The tiny corpus below as the code before the persona options made it (espeak-ng 1.51): its files' SHA-256, and
# the voices, which come from the seed alone whatever espeak-ng's version.
BEFORE_SHA256 = "c636f7dd34616ef505ff7a72b47a1fc999e6bd93762a3b1b8a67163b17ccc10a"
BEFORE_ESPEAK = "1.51"
BEFORE_VOICES = {
    "c000000": {"assistant": {"name": "en-gb-x-rp+f1", "rate": 187, "pitch": 37},
                "user": {"name": "en-gb-x-gbcwmd+f3", "rate": 157, "pitch": 42}},
    "c000001": {"assistant": {"name": "en-029+f4", "rate": 167, "pitch": 55},
                "user": {"name": "en-gb-x-gbclan+m7", "rate": 162, "pitch": 54}},
    "c000002": {"assistant": {"name": "en-029+f3", "rate": 164, "pitch": 48},
                "user": {"name": "en-gb-x-gbcwmd+f2", "rate": 178, "pitch": 33}},
}


@pytest.fixture(scope="module")
def synth():
    return espeak.Synthesizer()


def _espeak_version() -> str:
    lib = ctypes.CDLL(espeak.ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1")
    lib.espeak_Info.restype = ctypes.c_char_p
    return lib.espeak_Info(None).decode()


def _tree_sha256(folder) -> str:
    """The files' hash, each conversation's metadata as it was before its replies kept their question's topic and
    key (2026-12-06: fields added to the turns, nothing else changed)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        data = path.read_bytes()
        if path.suffix == ".json" and path.name.startswith("c"):
            meta = json.loads(data)
            for turn in meta["turns"]:
                turn.pop("topic", None)
                turn.pop("key", None)
            data = json.dumps(meta, indent=1).encode()
        h.update(data)
    return h.hexdigest()


def test_default_corpus_unchanged(tmp_path):
    """Without the persona options a corpus is the one the code before them made, file for file."""
    out = tmp_path / "c"
    assert main(["data", "synth", str(out), "--conversations", "3", "--seed", "11", "--heldout-every", "2",
                 "--min-seconds", "6", "--max-seconds", "10", "--workers", "1"]) == 0
    voices = {json.loads(p.read_text())["id"]: json.loads(p.read_text())["voices"] for p in out.rglob("c*.json")}
    assert voices == BEFORE_VOICES
    assert all("opening" not in json.loads(p.read_text()) for p in out.rglob("c*.json"))
    if _espeak_version() != BEFORE_ESPEAK:  # pragma: no cover - another espeak-ng speaks otherwise
        pytest.skip(f"the recorded bytes are espeak-ng {BEFORE_ESPEAK}'s; this is {_espeak_version()}")
    assert _tree_sha256(out) == BEFORE_SHA256


def _persona(share=1.0, **extra):
    return SynthOptions(**PERSONA, greeting=GREETING, greeting_share=share, min_seconds=8, max_seconds=12, **extra)


def test_fixed_voice_keeps_the_users(synth):
    """Every assistant utterance in the persona's voice; the user's voices are those of the same seed without it."""
    for index in range(4):
        _, plain = make_conversation(index, 5, SynthOptions(min_seconds=8, max_seconds=12), synth)
        _, persona = make_conversation(index, 5, SynthOptions(**PERSONA, min_seconds=8, max_seconds=12), synth)
        assert persona["voices"]["assistant"] == {"name": "en-us-nyc+Annie", "rate": 160, "pitch": 60}
        assert persona["voices"]["user"] == plain["voices"]["user"]
        assert "opening" not in persona


def _rms(x, rate, start, end):
    return float(np.sqrt(np.mean(x[int(start * rate):int(end * rate)] ** 2) + 1e-12))


def test_greeting_opens_a_quiet_line(synth):
    seen = set()
    for index in range(10):
        stereo, meta = make_conversation(index, 2, _persona(share=0.5), synth)
        turns, opening = meta["turns"], meta["opening"]
        seen.add(opening)
        said = [w for t in turns if t["channel"] == "assistant" for w in t["text"].split()]
        if opening == "greeting":
            first, second = turns[0], turns[1]
            assert first["channel"] == "assistant" and first["text"].split() == GREETING_WORDS
            assert 0.3 <= first["start"] <= 1.2  # where conversations open
            assert second["channel"] == "user" and second["start"] >= first["end"] + 0.4 - 1e-6
            assert meta["scenarios"][0]["type"] == "greeting"
            assert [w[0] for w in kyutai_alignments(meta)[:7]] == GREETING_WORDS
            rate = meta["sample_rate"]
            assert _rms(stereo[0], rate, first["start"], first["end"]) > \
                10 * _rms(stereo[1], rate, first["start"], first["end"])
            assert said.count("friendly") == 1  # once, at the start
        else:
            assert turns[0]["channel"] == "user" and turns[0]["start"] < 0.6  # at once (a filler first: 0.1-0.3 s later)
            assert meta["scenarios"][0]["type"] != "silence" and "friendly" not in said
    assert seen == {"greeting", "user"}


def test_greeting_share(synth):
    openings = [make_conversation(i, 4, _persona(share=1.0), synth)[1]["opening"] for i in range(6)]
    assert openings == ["greeting"] * 6
    openings = [make_conversation(i, 4, _persona(share=0.0), synth)[1]["opening"] for i in range(6)]
    assert openings == ["user"] * 6


def test_corpus_files_carry_the_greeting(tmp_path):
    """The greeting is in the assistant's words as Kyutai's fine-tuning code reads them (the text stream)."""
    rows = synthesize_corpus(str(tmp_path / "p"), 2, seed=1, options=_persona(heldout_every=0), progress=False)
    for row in rows:
        meta = json.loads((tmp_path / "p" / row["json"]).read_text())
        assert [w for w, _, speaker in meta["alignments"][:7]] == GREETING_WORDS
        assert all(speaker == "SPEAKER_MAIN" for _, _, speaker in meta["alignments"])
        audio, rate = sf.read(tmp_path / "p" / row["wav"], dtype="float32")
        assert rate == 24000 and audio.shape[1] == 2
        assert row["scenarios"][0] == "greeting"


@pytest.mark.parametrize("changes, message", [
    (dict(greeting_share=0.5), "needs a greeting"),
    (dict(greeting=" , . "), "no words"),
    (dict(greeting="hi", greeting_share=1.5), "0-1"),
    (dict(assistant_voice=" "), "voice is empty"),
    (dict(assistant_voice="en-us", assistant_pitch=120), "pitch"),
    (dict(assistant_voice="en-us", assistant_rate=20), "rate"),
])
def test_validation(changes, message):
    with pytest.raises(UsageError, match=message):
        SynthOptions(**changes).validate()


def test_cli(tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["data", "synth", str(out), "--conversations", "2", "--seed", "3", "--heldout-every", "0",
                 "--min-seconds", "6", "--max-seconds", "8", "--workers", "1", "--assistant-voice", "en-us-nyc+f5",
                 "--assistant-rate", "150", "--assistant-pitch", "70", "--greeting", GREETING]) == 0
    capsys.readouterr()
    for path in out.rglob("c*.json"):
        meta = json.loads(path.read_text())
        assert meta["voices"]["assistant"] == {"name": "en-us-nyc+f5", "rate": 150, "pitch": 70}
        assert meta["opening"] == "greeting"
    assert main(["data", "synth", str(tmp_path / "q"), "--greeting-share", "0.5"]) == 2
    assert "needs a greeting" in capsys.readouterr().err
    assert main(["data", "synth", str(tmp_path / "r"), "--conversations", "1", "--workers", "1",
                 "--assistant-voice", "xx-nonexistent"]) == 2
    assert "no voice 'xx-nonexistent'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
