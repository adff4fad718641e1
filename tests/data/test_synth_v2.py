"""The second mix of the synthetic corpus (``--mix v2``): what each scenario claims is what its turns do, and the
first mix is left as it was."""

import json

import numpy as np
import pytest
import soundfile as sf

from duplex.cli import main

espeak = pytest.importorskip("duplex.data.synth.espeak")
try:
    espeak.Synthesizer()
except espeak.EspeakError:  # pragma: no cover - .ci/run installs espeak-ng
    pytest.skip("needs espeak-ng (apt install espeak-ng)", allow_module_level=True)

from duplex.data.synth.conversation import (  # noqa: E402
    HELDOUT_USER_VOICES,
    MIXES,
    SynthOptions,
    make_conversation,
    synthesize_corpus,
)
from duplex.data.synth.grammar import BACKCHANNELS_V2, LEAD_INS_V2, TAILS_V2, exchange_v2  # noqa: E402
from duplex.errors import UsageError  # noqa: E402

V2 = dict(mix="v2", min_seconds=14, max_seconds=18)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus_v2")
    rows = synthesize_corpus(str(out), 10, seed=4, options=SynthOptions(heldout_every=5, opening_greeting=0.5, **V2),
                             workers=2, progress=False)
    metas = [json.loads((out / row["json"]).read_text()) for row in rows]
    return out, rows, metas


def _inside(meta, scenario):
    turns = [t for t in meta["turns"] if scenario["start"] - 1e-6 <= t["start"] < scenario["end"]]
    return [t for t in turns if t["channel"] == "user"], [t for t in turns if t["channel"] == "assistant"]


def _scenarios(metas, kind):
    return [(meta, s) for meta in metas for s in meta["scenarios"] if s["type"] == kind]


def test_every_scenario_of_the_mix_is_made(corpus):
    _, _, metas = corpus
    assert {s["type"] for m in metas for s in m["scenarios"]} == set(MIXES["v2"])
    assert all(m["mix"] == "v2" and set(m["effects"]) <= {"room", "noise", "gain_db"} for m in metas)
    assert any("room" in m["effects"] for m in metas) and any("noise" in m["effects"] for m in metas)


def test_greetings_are_answered_with_greetings(corpus):
    _, _, metas = corpus
    greetings = [(m, s) for m, s in _scenarios(metas, "smooth") if s["topic"] == "greeting"]
    openings = [m for m in metas if m["scenarios"][0]["topic"] == "greeting" and m["scenarios"][0]["type"] == "smooth"]
    assert openings  # some conversations open with the user's greeting
    for meta, scenario in greetings:
        user, bot = _inside(meta, scenario)
        if user[0]["text"].split()[0] in ("hello", "hi", "hey", "good"):
            assert bot[0]["text"].split()[0] in ("hi", "hello", "hey", "good")
            assert bot[0]["start"] > user[-1]["end"]


def test_answers_are_turns(corpus):
    """Every answer has at least four words and lasts about a second or more: Full-Duplex-Bench counts it as taking
    the turn (it does not count under 1 s and at most 3 words)."""
    _, _, metas = corpus
    checked = 0
    for meta, scenario in _scenarios(metas, "smooth") + _scenarios(metas, "pause"):
        _, bot = _inside(meta, scenario)
        answer = bot[-1]
        assert len(answer["text"].split()) >= 4 and answer["end"] - answer["start"] > 0.8, answer["text"]
        checked += 1
    assert checked >= 5


def test_pauses_leave_the_clause_open(corpus):
    _, _, metas = corpus
    pauses = _scenarios(metas, "pause")
    assert pauses
    for meta, scenario in pauses:
        user, bot = _inside(meta, scenario)
        gaps = [(b["start"] - a["end"], i) for i, (a, b) in enumerate(zip(user, user[1:]))]
        gap, i = max(gaps)
        assert gap >= 0.6 - 0.05
        assert not [t for t in bot if t["start"] < user[-1]["end"]]  # nothing said in the pause
        said = " ".join(t["text"] for t in user[:i + 1])
        assert said.split()[-1] not in ("?",) and not said.endswith("?")
        assert len(bot) == 1 and bot[0]["start"] > user[-1]["end"]


def test_barge_ins_anywhere_stop_the_assistant_fast(corpus):
    _, _, metas = corpus
    interrupts = _scenarios(metas, "interrupt")
    assert len(interrupts) >= 2
    for meta, scenario in interrupts:
        user, bot = _inside(meta, scenario)
        cut = [t for t in bot if t.get("interrupted")]
        assert cut, scenario
        barge = [t for t in user if t["start"] > cut[0]["start"]][0]
        assert 0 <= cut[0]["end"] - barge["start"] <= 0.3  # stops within 0.3 s of the barge-in
        assert barge["start"] >= cut[0]["start"] + 0.25
        assert bot[-1]["start"] > barge["end"] and not bot[-1].get("interrupted")  # and answers the new turn


def test_the_users_backchannels_are_not_turns(corpus):
    _, _, metas = corpus
    found = _scenarios(metas, "user_backchannel")
    assert found
    for meta, scenario in found:
        user, bot = _inside(meta, scenario)
        assert user[-1]["text"] in [b.replace(",", "") for b in BACKCHANNELS_V2]
        assert len(bot) == 1 and not bot[0].get("interrupted")  # the answer goes on; no reply to the backchannel
        assert any(bot[0]["text"].endswith(t.rstrip(".?").replace(",", "")) for t in TAILS_V2)


def test_user_channel_varies_and_heldout_voice(corpus):
    out, rows, metas = corpus
    rates, pitches = set(), set()
    for row, meta in zip(rows, metas):
        audio, _ = sf.read(out / row["wav"], dtype="float32")
        assert np.abs(audio).max() < 0.95
        user = meta["voices"]["user"]
        assert (user["name"].split("+")[0] in HELDOUT_USER_VOICES) == (row["split"] == "heldout")
        rates.add(user["rate"])
        pitches.add(user["pitch"])
    assert len(rates) > 5 and len(pitches) > 5


def test_grammar_v2_answers_are_sentences():
    import random

    rng = random.Random(0)
    for _ in range(500):
        ex = exchange_v2(rng)
        assert len(ex.answer.replace(",", " ").split()) >= 5, ex
    assert all(len(lead.split()) >= 1 for lead in LEAD_INS_V2)


def test_v2_is_reproducible_and_differs_from_v1(tmp_path):
    options = SynthOptions(min_seconds=6, max_seconds=8, heldout_every=2, mix="v2")
    made = []
    for name, workers in (("a", 1), ("b", 2)):
        synthesize_corpus(str(tmp_path / name), 2, seed=3, options=options, workers=workers, progress=False)
        made.append({p.relative_to(tmp_path / name): p.read_bytes()
                     for p in sorted((tmp_path / name).rglob("*")) if p.is_file()})
    assert made[0] == made[1]


def test_mix_options_are_checked(tmp_path, capsys):
    synth = espeak.Synthesizer()
    _, meta = make_conversation(1, 0, SynthOptions(shares={"user_backchannel": 1}, **V2), synth)
    assert {s["type"] for s in meta["scenarios"]} == {"user_backchannel"}
    with pytest.raises(UsageError, match="unknown scenario"):
        SynthOptions(shares={"user_backchannel": 1}).validate()  # not a scenario of mix v1
    with pytest.raises(UsageError, match="unknown mix"):
        SynthOptions(mix="v3").validate()
    assert SynthOptions().scenario_shares() == MIXES["v1"]
    assert main(["data", "synth", str(tmp_path / "c"), "--conversations", "1", "--mix", "v2", "--min-seconds", "5",
                 "--max-seconds", "6", "--shares", "smooth=1", "--opening-greeting", "1", "--workers", "1"]) == 0
    meta = json.loads(next((tmp_path / "c").rglob("*.json")).read_text())
    assert meta["mix"] == "v2" and meta["scenarios"][0]["topic"] == "greeting"
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["data", "synth", "--help"])
    assert "user_backchannel=0.1" in capsys.readouterr().out


def test_make_set_cuts_a_v2_corpus(corpus, tmp_path):
    from duplex.bench.turntaking import make_set

    out, _, _ = corpus
    counts = make_set.make_set(out, tmp_path / "set", split="train", per_task=3)
    assert all(n > 0 for n in counts.values()), counts


def test_a_clean_user_channel_is_the_same_conversation_without_room_noise_or_gain_at_any_share(tmp_path, capsys,
                                                                                               default_v2):
    made = {"default": default_v2, **_made(tmp_path, clean={"clean_user_share": 1.0}, half={"clean_user_share": 0.5})}
    noisy = []
    for (stereo, meta), (clean_stereo, clean_meta) in zip(made["default"], made["clean"]):
        assert clean_meta["effects"] == {}
        # the same words, voices and timings, and the same assistant channel: the option changes the user's sound only
        assert {k: v for k, v in clean_meta.items() if k != "effects"} == {k: v for k, v in meta.items()
                                                                            if k != "effects"}
        assert np.array_equal(clean_stereo[0], stereo[0])
        # nothing on the clean user channel outside the user's utterances (no noise floor, no room tail)
        outside = _outside_user_turns(meta, stereo.shape[1])
        assert np.abs(clean_stereo[1][outside]).max() < 1e-3
        if "noise" in meta["effects"]:
            noisy.append(np.abs(stereo[1][outside]).max())
    assert noisy and min(noisy) > 1e-3  # where the default adds noise, it is there outside the utterances
    # at a share between 0 and 1, each conversation is one of the two, channel for channel, and both kinds occur
    kinds = []
    for (stereo, meta), (clean, _), (half, half_meta) in zip(made["default"], made["clean"], made["half"]):
        kind = "clean" if half_meta["effects"] == {} else "noisy"
        assert np.array_equal(half, clean if kind == "clean" else stereo)
        assert half_meta == (meta if kind == "noisy" else {**meta, "effects": {}})
        kinds.append(kind)
    assert set(kinds) == {"clean", "noisy"}, kinds
    with pytest.raises(UsageError, match="--mix v2"):
        SynthOptions(clean_user_share=1.0).validate()
    with pytest.raises(UsageError, match="0-1"):
        SynthOptions(clean_user_share=1.5, mix="v2").validate()
    assert main(["data", "synth", str(tmp_path / "c"), "--conversations", "1", "--clean-user-channel"]) == 2
    assert "--mix v2" in capsys.readouterr().err
    assert main(["data", "synth", str(tmp_path / "c"), "--conversations", "1", "--mix", "v2",
                 "--clean-user-share", "-0.1"]) == 2
    assert "0-1" in capsys.readouterr().err


@pytest.fixture(scope="module")
def default_v2(tmp_path_factory):
    """The default options' version of ``_made``'s conversations (what each variant is compared with), made once."""
    return _made(tmp_path_factory.mktemp("default_v2"), default={})["default"]


def _made(tmp_path, **variants):
    """{name: [(stereo [2, T], metadata), ...]}: 4 conversations of seed 5 per variant (SynthOptions' fields)."""
    made = {}
    for name, fields in variants.items():
        rows = synthesize_corpus(str(tmp_path / name), 4, seed=5, options=SynthOptions(**fields, **V2), workers=2,
                                 progress=False)
        made[name] = [(sf.read(tmp_path / name / row["wav"], dtype="float32")[0].T,
                       json.loads((tmp_path / name / row["json"]).read_text())) for row in rows]
    return made


def _outside_user_turns(meta, length, tail_s=0.25):
    """A mask of the samples away from every user turn (50 ms before it, ``tail_s`` after: a turn's last word can
    sound up to about 0.1 s past its end in the corpus's timings, and a room's reverb up to 0.6 s)."""
    outside = np.ones(length, bool)
    for turn in meta["turns"]:
        if turn["channel"] == "user":
            outside[max(0, int(turn["start"] * 24000) - 1200):int((turn["end"] + tail_s) * 24000)] = False
    return outside


def test_the_user_noise_level_changes_the_noise_and_nothing_else(tmp_path, capsys, default_v2):
    made = {"default": default_v2, **_made(tmp_path, quiet={"user_noise_snr": (45.0, 45.0)})}
    noisy = 0
    for (stereo, meta), (quiet, quiet_meta) in zip(made["default"], made["quiet"]):
        assert {k: v for k, v in quiet_meta.items() if k != "effects"} == {k: v for k, v in meta.items()
                                                                            if k != "effects"}
        assert np.array_equal(quiet[0], stereo[0])  # the assistant's channel, byte for byte
        assert quiet_meta["effects"].keys() == meta["effects"].keys()  # the same draws: room, noise and gain or not
        if "noise" in meta["effects"]:
            noisy += 1
            assert quiet_meta["effects"]["noise"]["snr_db"] == 45.0
            assert quiet_meta["effects"]["noise"]["colour"] == meta["effects"]["noise"]["colour"]
            assert 10.0 <= meta["effects"]["noise"]["snr_db"] <= 40.0
            outside = _outside_user_turns(meta, stereo.shape[1])
            # the noise floor between the user's utterances is lower (45 dB under the speech, at most 40 before)
            assert np.sqrt(np.mean(quiet[1][outside] ** 2)) < np.sqrt(np.mean(stereo[1][outside] ** 2))
    assert noisy
    with pytest.raises(UsageError, match="LOW <= HIGH"):
        SynthOptions(user_noise_snr=(30.0, 20.0), **V2).validate()
    with pytest.raises(UsageError, match="--mix v2"):
        SynthOptions(user_noise_snr=(20.0, 30.0)).validate()
    assert main(["data", "synth", str(tmp_path / "c"), "--conversations", "1", "--mix", "v2",
                 "--user-noise-snr", "40", "nan"]) == 2
    assert "LOW <= HIGH" in capsys.readouterr().err


def test_no_user_room_leaves_out_the_reverb_and_nothing_else(tmp_path, capsys, default_v2):
    made = {"default": default_v2, **_made(tmp_path, dry={"user_room": False})}
    rooms = both = 0
    for (stereo, meta), (dry, dry_meta) in zip(made["default"], made["dry"]):
        assert {k: v for k, v in dry_meta.items() if k != "effects"} == {k: v for k, v in meta.items()
                                                                          if k != "effects"}
        assert np.array_equal(dry[0], stereo[0])  # the assistant's channel, byte for byte
        # the same noise and gain, drawn alike; the room only where the default has one, and then not applied
        assert dry_meta["effects"] == {k: v for k, v in meta["effects"].items() if k != "room"}
        if "room" in meta["effects"]:
            rooms += 1
            assert not np.array_equal(dry[1], stereo[1])
            if "noise" in meta["effects"]:  # the same noise waveform (its level follows the speech, room or not)
                away = _outside_user_turns(meta, stereo.shape[1], tail_s=0.7)
                both += 1
                assert np.corrcoef(dry[1][away], stereo[1][away])[0, 1] > 0.999
        else:
            assert np.array_equal(dry[1], stereo[1])
    assert rooms and both
    with pytest.raises(UsageError, match="--mix v2"):
        SynthOptions(user_room=False).validate()
    assert main(["data", "synth", str(tmp_path / "c"), "--conversations", "1", "--no-user-room"]) == 2
    assert "--mix v2" in capsys.readouterr().err


def test_each_reply_keeps_its_questions_topic_and_key_and_a_set_scores_a_barge_in_by_its_own(corpus, tmp_path):
    """Every reply to a question keeps that exchange's topic and key with its turn (what `bench turns make-set`
    writes as the answer): whole replies hold their own key; an interruption's annotation has the barge-in's topic,
    the one of the reply after it, not the scenario's (the first question's)."""
    from duplex.bench.turntaking.make_set import make_set
    from duplex.bench.turntaking.score import holds, said_words

    out, rows, metas = corpus
    replies = [t for m in metas for t in m["turns"] if t["channel"] == "assistant" and "topic" in t]
    assert replies and {t["topic"] for t in replies} >= {"arithmetic", "facts"}
    for turn in replies:
        if turn["key"] and not turn.get("interrupted"):
            assert holds(said_words(turn["text"]), turn["key"]), turn
    made = make_set(out, tmp_path / "set", split="train")
    assert made["user_interruption"] > 0
    # a late reply still has room: MIN_TAIL s after the question or the barge-in, silence added where needed
    from duplex.bench.turntaking.make_set import MIN_TAIL
    for task, file, index in (("smooth_turn_taking", "turn_taking.json", 0), ("user_interruption", "interrupt.json", 1)):
        for folder in (tmp_path / "set" / task).iterdir():
            event = json.loads((folder / file).read_text())[0]["timestamp"][index]
            assert sf.info(folder / "input.wav").duration >= event + MIN_TAIL - 1e-3
    for folder in (tmp_path / "set" / "pause_handling").iterdir():  # a pause sample ends as it did, no silence
        source = json.loads((folder / "source.json").read_text())
        meta = next(m for m in metas if m["id"] == source["conversation"])
        resumed = [t for t in meta["turns"] if t["channel"] == "user"
                   and source["scenario"]["start"] <= t["start"] < source["scenario"]["end"]][-1]
        cut = min(resumed["end"], resumed["start"] + 0.7) - source["scenario"]["start"]
        assert abs(sf.info(folder / "input.wav").duration - cut) < 0.01
    checked = 0
    for folder in (tmp_path / "set" / "user_interruption").iterdir():
        entry = json.loads((folder / "interrupt.json").read_text())[0]
        source = json.loads((folder / "source.json").read_text())
        meta = next(m for m in metas if m["id"] == source["conversation"])
        start = source["scenario"]["start"]
        barge = entry["timestamp"][0] + start
        reply = next(t for t in sorted(meta["turns"], key=lambda t: t["start"])
                     if t["channel"] == "assistant" and t["start"] >= barge)
        if "answer_topic" in entry:
            assert entry["answer_topic"] == reply["topic"] and entry["answer_key"] == reply["key"]
            checked += 1
    assert checked > 0
