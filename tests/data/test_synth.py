"""The synthetic conversation corpus: what it claims is what is in the audio."""

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

from duplex.data.synth.conversation import SynthOptions, make_conversation, synthesize_corpus  # noqa: E402


@pytest.fixture(scope="module")
def synth():
    return espeak.Synthesizer()


def test_word_timestamps(synth):
    speech = synth.speak("what is seven plus five?", voice="en-us+f3", rate=170, pitch=60)
    words = [w.text for w in speech.words]
    assert words == ["what", "is", "seven", "plus", "five"]
    duration = len(speech.audio) / speech.sample_rate
    times = [(w.start, w.end) for w in speech.words]
    assert all(0 <= s < e <= duration for s, e in times)
    assert all(a[1] <= b[0] + 1e-6 for a, b in zip(times, times[1:]))  # in order, no overlap
    with pytest.raises(espeak.EspeakError, match="no voice"):
        synth.speak("hi", voice="xx-nonexistent")


@pytest.mark.parametrize("text, expected", [
    # espeak points one character early after a sentence-internal period ...
    ("hello, nice to hear you. how can i help?", ["hello", "nice", "to", "hear", "you", "how", "can", "i", "help"]),
    ("yes, i am here. go ahead.", ["yes", "i", "am", "here", "go", "ahead"]),
    # ... gives "o'clock" a length of 1 ...
    ("it is three o'clock.", ["it", "is", "three", "o'clock"]),
    # ... and times "there are" as one word (no event for "are")
    ("there are seven days in a week.", ["there are", "seven", "days", "in", "a", "week"]),
])
def test_transcript_keeps_every_word(synth, text, expected):
    speech = synth.speak(text, voice="en-us")
    assert [w.text for w in speech.words] == expected
    assert " ".join(w.text for w in speech.words) == text.replace(",", "").replace(".", "").replace("?", "")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    rows = synthesize_corpus(str(out), 12, seed=3, options=SynthOptions(heldout_every=4, min_seconds=15,
                                                                          max_seconds=20), progress=False)
    return out, rows


def _load(out, row):
    audio, rate = sf.read(out / row["wav"], dtype="float32")
    return audio, rate, json.loads((out / row["json"]).read_text())


def test_files_and_timestamps_inside_the_audio(corpus):
    out, rows = corpus
    assert len(rows) == 12 and (out / "manifest.jsonl").read_text().count("\n") == 12
    for row in rows:
        audio, rate, meta = _load(out, row)
        assert rate == 24000 and audio.ndim == 2 and audio.shape[1] == 2
        duration = audio.shape[0] / rate
        assert abs(meta["duration"] - duration) < 1e-3
        for turn in meta["turns"]:
            assert 0 <= turn["start"] <= turn["end"] <= duration
            assert all(turn["start"] <= w["start"] <= w["end"] <= turn["end"] for w in turn["words"])


def test_no_clipping(corpus):
    out, rows = corpus
    for row in rows:
        audio, _, _ = _load(out, row)
        assert np.abs(audio).max() < 0.95  # level variation never drives speech into the [-1, 1] clip


def test_sentences_get_one_final_mark():
    from duplex.data.synth.conversation import _sentence

    assert [_sentence(t, "?") for t in ("how can i help", "how can i help?", "go ahead.")] == \
        ["how can i help?", "how can i help?", "go ahead."]


def _rms(x, rate, start, end):
    return float(np.sqrt(np.mean(x[int(start * rate):int(end * rate)] ** 2) + 1e-12))


def test_channels_hold_the_right_speaker(corpus):
    out, rows = corpus
    checked = 0
    for row in rows:
        audio, rate, meta = _load(out, row)
        for turn in meta["turns"]:
            mine = 0 if turn["channel"] == "assistant" else 1
            other_busy = any(t["channel"] != turn["channel"] and t["start"] < turn["end"] and turn["start"] < t["end"]
                             for t in meta["turns"])
            if other_busy or turn["end"] - turn["start"] < 0.3:
                continue
            assert _rms(audio[:, mine], rate, turn["start"], turn["end"]) > \
                10 * _rms(audio[:, 1 - mine], rate, turn["start"], turn["end"])
            checked += 1
    assert checked > 50


def test_scenario_timing(corpus):
    out, rows = corpus
    seen = set()
    for row in rows:
        _, _, meta = _load(out, row)
        turns = meta["turns"]
        for s in meta["scenarios"]:
            seen.add(s["type"])
            inside = [t for t in turns if s["start"] - 1e-6 <= t["start"] < s["end"]]
            user = [t for t in inside if t["channel"] == "user"]
            bot = [t for t in inside if t["channel"] == "assistant"]
            if s["type"] == "smooth":
                assert 0.08 - 0.05 <= bot[0]["start"] - user[-1]["end"] <= 0.45 + 0.15  # around 200 ms
            elif s["type"] == "pause":
                gaps = [b["start"] - a["end"] for a, b in zip(user, user[1:])]
                assert max(gaps) >= 0.5 - 0.05 and bot[-1]["start"] > user[-1]["end"]
            elif s["type"] == "interrupt":
                cut = [t for t in bot if t.get("interrupted")]
                assert cut, s
                barge = [t for t in user if t["start"] > cut[0]["start"]][0]
                assert 0 <= cut[0]["end"] - barge["start"] <= 0.25  # stops within ~200 ms of the barge-in
                assert bot[-1]["start"] > barge["end"]  # and answers the new turn
            elif s["type"] == "backchannel":
                assert bot[0]["text"] in ("mhm", "yeah", "okay", "right", "uh huh")
                assert user[0]["end"] <= bot[0]["start"] and bot[0]["end"] < user[1]["start"]  # inside the pause
            elif s["type"] == "silence":
                assert not inside
    assert seen == {"smooth", "pause", "interrupt", "backchannel", "silence"}


def test_heldout_split_and_voices(corpus):
    out, rows = corpus
    splits = {r["id"]: r["split"] for r in rows}
    assert [i for i, r in enumerate(rows) if r["split"] == "heldout"] == [0, 4, 8]
    train_users = set()
    for row in rows:
        _, _, meta = _load(out, row)
        user_base = meta["voices"]["user"]["name"].split("+")[0]
        if splits[row["id"]] == "heldout":
            assert user_base == "en-gb-x-gbcwmd"
        else:
            train_users.add(user_base)
        assert (out / row["wav"]).parent.name == row["split"]
    assert "en-gb-x-gbcwmd" not in train_users


def test_shares_are_respected(synth):
    only = SynthOptions(shares={"interrupt": 1.0}, min_seconds=10, max_seconds=12)
    _, meta = make_conversation(1, 0, only, synth)
    assert {s["type"] for s in meta["scenarios"]} == {"interrupt"}
    opts = SynthOptions(shares={"smooth": 3, "silence": 1}, min_seconds=30, max_seconds=30)
    kinds = [s["type"] for i in range(12) for s in make_conversation(i, 1, opts, synth)[1]["scenarios"]]
    assert set(kinds) == {"smooth", "silence"} and 0.55 < kinds.count("smooth") / len(kinds) < 0.92
    with pytest.raises(ValueError, match="unknown scenario"):
        SynthOptions(shares={"monologue": 1}).validate()


@pytest.mark.slow
def test_deterministic(tmp_path, synth):
    """The same seed makes the same corpus, file for file, whatever the number of processes and whatever this
    process synthesized before (espeak-ng's output depends on its history: each conversation is made from the
    same untouched espeak state)."""
    synth.speak("something said before, which must not matter", voice="en-us+m3")
    options = SynthOptions(noise=True, min_seconds=8, max_seconds=10, heldout_every=2)
    made = []
    for name, seed, workers in (("a", 11, 1), ("b", 11, 2), ("c", 12, 1)):
        synthesize_corpus(str(tmp_path / name), 3, seed=seed, options=options, workers=workers, progress=False)
        made.append({p.relative_to(tmp_path / name): p.read_bytes()
                     for p in sorted((tmp_path / name).rglob("*")) if p.is_file()})
    assert made[0] == made[1]  # byte for byte
    assert made[0].keys() == made[2].keys() and made[0] != made[2]  # another seed, another corpus


def test_answers_depend_on_the_question(synth):
    _, meta = make_conversation(2, 0, SynthOptions(shares={"smooth": 1}, min_seconds=25, max_seconds=25), synth)
    turns = meta["turns"]
    for q, a in zip(turns[::2], turns[1::2]):
        if q["text"].startswith("what is") and ("plus" in q["text"] or "times" in q["text"]):
            assert q["text"].split("what is ")[1] in a["text"]


def test_cli_with_workers(tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path / "c"), "--conversations", "4", "--workers", "2",
                 "--min-seconds", "5", "--max-seconds", "6", "--seed", "9"]) == 0
    assert "4 conversations (1 held out)" in capsys.readouterr().err
    assert len(list((tmp_path / "c" / "train").glob("*.wav"))) == 3
    assert main(["data", "synth", str(tmp_path / "d"), "--shares", "smooth=x"]) == 2
    capsys.readouterr()
    assert main(["data", "synth", str(tmp_path / "c"), "--conversations", "2"]) == 2  # not over a corpus
    assert "already holds a corpus" in capsys.readouterr().err
    assert len(list((tmp_path / "c" / "train").glob("*.wav"))) == 3
    with pytest.raises(SystemExit):
        main(["data", "synth", str(tmp_path / "e"), "--hours", "0"])
    assert "--hours: '0' is not a number > 0" in capsys.readouterr().err


def test_speech_crops_hold_speech(corpus):
    import torch

    from codec.io.audio import SPEECH_DBFS
    from duplex.data.codec_crops import CorpusAudio

    out, _ = corpus
    audio = CorpusAudio(str(out), "train")
    assert 0 < audio.speech_seconds < audio.seconds
    samples = 2 * 24000
    crops = audio.batch(32, samples, torch.Generator().manual_seed(0), speech=True)
    again = audio.batch(32, samples, torch.Generator().manual_seed(0), speech=True)
    assert crops.shape == (32, 1, samples) and torch.equal(crops, again)  # deterministic in the generator
    frames = crops[:, 0, : samples // 1920 * 1920].reshape(32, -1, 1920)
    loudest = frames.pow(2).mean(-1).sqrt().amax(-1)
    assert bool((loudest > 10 ** (SPEECH_DBFS / 20)).all())  # every crop holds a speech frame
    uniform = audio.batch(200, samples, torch.Generator().manual_seed(0))
    frames = uniform[:, 0, : samples // 1920 * 1920].reshape(200, -1, 1920)
    silent = (frames.pow(2).mean(-1).sqrt() <= 10 ** (SPEECH_DBFS / 20)).float().mean()
    frames = audio.batch(200, samples, torch.Generator().manual_seed(0), speech=True)[:, 0, : samples // 1920 * 1920]
    silent_speech = (frames.reshape(200, -1, 1920).pow(2).mean(-1).sqrt() <= 10 ** (SPEECH_DBFS / 20)).float().mean()
    assert silent_speech < silent  # speech crops spend less of the batch on silence


def test_word_frames_mark_each_channels_words():
    from duplex.data.codec_crops import word_frames

    meta = {"turns": [{"channel": "user", "words": [{"start": 0.05, "end": 0.09}, {"start": 0.2, "end": 0.2}]},
                      {"channel": "assistant", "words": [{"start": 0.0, "end": 0.5}]}]}
    assert word_frames(meta, 9600, 1).tolist() == [True, True, True, False, False]  # 80 ms frames of 1920
    assert word_frames(meta, 9600, 0).tolist() == [True] * 5
    assert word_frames({}, 100, 0).tolist() == [False]


def test_training_speech_frames_follow_the_transcripts(corpus):
    """Crops are centred on frames holding a word of that channel; on a clean corpus that agrees with the energy
    threshold the quality bench used to apply (silence between turns is digital zero)."""
    from codec.io.audio import speech_frames
    from duplex.data.codec_crops import FRAME, CorpusAudio

    out, _ = corpus
    audio = CorpusAudio(str(out), "train")
    assert len(audio.speech_masks) == len(audio.clips)
    agree = total = 0
    for clip, mask in zip(audio.clips, audio.speech_masks):
        assert len(mask) == -(-len(clip) // FRAME)
        energy = speech_frames(clip.astype(np.float32) / 32768.0, FRAME, len(mask))
        agree += int((energy == mask).sum())
        total += len(mask)
    assert agree / total > 0.97
    # the transcript decides: a channel whose words are removed from its JSON has no speech frames left
    row = json.loads((out / "manifest.jsonl").read_text().splitlines()[1])
    meta_path = out / row["json"]
    meta = json.loads(meta_path.read_text())
    original = meta_path.read_text()
    try:
        meta["turns"] = [t for t in meta["turns"] if t["channel"] != "user"]
        meta_path.write_text(json.dumps(meta))
        changed = CorpusAudio(str(out), row["split"])
    finally:
        meta_path.write_text(original)
    index = [r["id"] for r in (json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines())
             if r["split"] == row["split"]].index(row["id"])
    user_clip = changed.clips[2 * index + 1]
    assert np.abs(user_clip).max() > 1000 and not changed.speech_masks[2 * index + 1].any()


def test_in_process_synthesis_leaves_the_thread_count_alone(tmp_path):
    """Synthesis runs in pool processes (one for workers=1): torch's thread count in the caller's process (which
    every later computation of it uses) stays the caller's, and nothing is left in the module's globals."""
    import torch

    from duplex.data.synth import conversation as synth_module

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        synthesize_corpus(str(tmp_path), 1, seed=1, options=SynthOptions(min_seconds=5, max_seconds=6),
                          progress=False)
        assert torch.get_num_threads() == 2
        assert not synth_module._WORKER  # the synthesizer is not kept alive after the call
    finally:
        torch.set_num_threads(threads)


def test_the_corpus_is_also_in_kyutais_fine_tuning_layout(corpus):
    """train.jsonl / heldout.jsonl of {"path", "duration"}; beside each stereo WAV (channel 0 the assistant) a JSON
    whose "alignments" are the assistant's words as [word, [start, end], "SPEAKER_MAIN"], sorted by start."""
    out, rows = corpus
    listed = {}
    for split in ("train", "heldout"):
        for line in (out / f"{split}.jsonl").read_text().splitlines():
            entry = json.loads(line)
            assert set(entry) == {"path", "duration"}
            listed[entry["path"]] = (split, entry["duration"])
    assert {r["wav"]: (r["split"], r["duration"]) for r in rows} == listed
    for row in rows:
        audio, rate, meta = _load(out, row)
        alignments = meta["alignments"]
        assistant = [w for t in meta["turns"] if t["channel"] == "assistant" for w in t["words"]]
        assert len(alignments) == len([w for w in assistant if w["end"] > w["start"]])
        assert all(label == "SPEAKER_MAIN" and s < e for _, (s, e), label in alignments)
        assert [a[1][0] for a in alignments] == sorted(a[1][0] for a in alignments)
        assert {a[0] for a in alignments} <= set(meta["text"]["assistant"].split())


def test_reply_gaps_are_like_peoples(corpus):
    out, rows = corpus
    gaps = []
    for row in rows:
        _, _, meta = _load(out, row)
        for s in meta["scenarios"]:
            if s["type"] == "smooth":
                inside = [t for t in meta["turns"] if s["start"] - 1e-6 <= t["start"] < s["end"]]
                user = [t for t in inside if t["channel"] == "user"]
                bot = [t for t in inside if t["channel"] == "assistant"]
                gaps.append(bot[0]["start"] - user[-1]["end"])
    assert len(gaps) >= 10 and 0.12 <= float(np.median(gaps)) <= 0.3  # around 200 ms


@pytest.mark.slow
def test_encode_caches_both_channels_and_resumes(corpus, capsys):
    import torch
    from helpers import MIMI_SMALL, MIMI_SMALL_CONFIG

    from codec import Mimi
    from duplex.data.encode import codes_path, load_stereo_codes

    out, rows = corpus
    codec = ["--checkpoint", str(MIMI_SMALL), "--config", str(MIMI_SMALL_CONFIG), "--device", "cpu"]
    assert main(["data", "encode", str(out), *codec]) == 0
    assert f"{len(rows)} files encoded" in capsys.readouterr().err
    mimi = Mimi.from_checkpoint(MIMI_SMALL, config=MIMI_SMALL_CONFIG)
    first = out / rows[0]["wav"]
    codes, meta = load_stereo_codes(codes_path(first))
    audio, rate = sf.read(first, dtype="float32")
    expected = mimi.encode(torch.from_numpy(audio.T.copy())[:, None])  # the model's channel, then the user's
    assert codes.shape == (2, 8, -(-audio.shape[0] // 1920)) and torch.equal(codes, expected)
    assert meta["channels"] == "model,user" and int(meta["num_samples"]) == audio.shape[0]
    codes_path(out / rows[1]["wav"]).write_bytes(b"cut short")  # a run interrupted while writing
    assert main(["data", "encode", str(out), *codec]) == 0
    err = capsys.readouterr().err
    assert "1 file encoded" in err and f"{len(rows) - 1} already encoded" in err  # only what was missing
    assert main(["data", "encode", str(out.parent), *codec]) == 2
    assert "no manifest of" in capsys.readouterr().err
    # a codec of the same shape with other weights (another training run, a fine-tune) makes other codes: all again
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(MIMI_SMALL))
    name = sorted(k for k in tensors if k.endswith("weight"))[0]
    tensors[name] = tensors[name] * 1.5
    other = out.parent / "other-codec.safetensors"
    save_file(tensors, str(other))
    other_codec = ["--checkpoint", str(other), "--config", str(MIMI_SMALL_CONFIG), "--device", "cpu"]
    assert main(["data", "encode", str(out), *other_codec]) == 0
    assert f"{len(rows)} files encoded" in capsys.readouterr().err
    assert load_stereo_codes(codes_path(first))[1]["codec_weights"] != meta["codec_weights"]
    assert main(["data", "encode", str(out), *codec]) == 0  # and back: the corpus as the other tests know it
    assert f"{len(rows)} files encoded" in capsys.readouterr().err
    assert torch.equal(load_stereo_codes(codes_path(first))[0], expected)


def test_train_tokenizer_on_the_transcripts(corpus, tmp_path, capsys):
    from duplex.model.tokenizer import TextTokenizer

    out, rows = corpus
    path = tmp_path / "tok" / "duplex.model"
    assert main(["train", "tokenizer", "--data", str(out), "--out", str(path), "--vocab-size", "120"]) == 0
    assert "-> " in capsys.readouterr().err
    tokenizer = TextTokenizer(path)
    sp = tokenizer.sp
    assert [sp.IdToPiece(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<pad>"]  # Moshi's ids: 0 and 3 hidden
    assert not tokenizer.is_shown(0) and not tokenizer.is_shown(3)
    _, _, meta = _load(out, rows[0])
    sentence = meta["turns"][0]["text"]
    assert tokenizer.decode(tokenizer.encode(sentence)) == sentence  # the corpus's words round-trip
    assert main(["train", "tokenizer", "--data", str(out), "--out", str(tmp_path / "x.bin")]) == 2
    assert "ends in .model" in capsys.readouterr().err


def test_a_synthesizer_speaks_after_another_one_was_freed():
    """libespeak-ng's callback is process-wide: a freed synthesizer's must not be the one libespeak calls (this
    crashed the process once an in-process corpus run released its synthesizer)."""
    import gc

    first = espeak.Synthesizer()
    second = espeak.Synthesizer()
    second.speak("hello")
    del second
    gc.collect()
    assert len(first.speak("still here").words) == 2
    third = espeak.Synthesizer()
    third.speak("one")
    del third
    gc.collect()
    assert first.speak("and again").words
