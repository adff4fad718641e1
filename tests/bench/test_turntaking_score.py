"""The turn-taking scorer against answers known by construction: FDB v1's rules and edge cases, v1.5's intervals,
and a folder of hand-made samples scored end to end."""

import json
import math

import numpy as np
import pytest
import soundfile as sf

from duplex.bench.turntaking import metrics
from duplex.bench.turntaking.fdb import Chunk, FDBError, read_chunks, task_of, write_chunks
from duplex.bench.turntaking.score import score_dir
from duplex.cli import main


def words(*spans):
    return [Chunk(f"w{i}", s, e) for i, (s, e) in enumerate(spans)]


def test_takeover_rule_and_its_edges():
    assert metrics.takeover([]) == 0  # a model that never speaks
    assert metrics.takeover(words((1.0, 1.2), (1.3, 1.5), (1.6, 1.9))) == 0  # under 1 s, 3 words: a backchannel
    assert metrics.takeover(words((1.0, 1.1), (1.2, 1.3), (1.4, 1.5), (1.6, 1.7))) == 1  # 4 words
    assert metrics.takeover(words((1.0, 1.5), (1.6, 2.0))) == 1  # exactly 1 s: not "under 1 s"
    assert metrics.takeover(words((1.0, 1.2), (1.95, None))) == 0  # a missing last end counts as its start
    assert metrics.takeover(words((1.0, 1.2), (2.1, None))) == 1


def test_latency_is_clipped_at_zero_and_only_for_takeovers():
    answer = words((3.5, 3.8), (3.9, 4.3), (4.4, 4.9))
    assert metrics.latency(answer, 3.0) == pytest.approx(0.5)  # answers 0.5 s after the turn's end
    assert metrics.latency(words((2.0, 2.5), (2.6, 3.5)), 3.0) == 0.0  # spoke before the turn ended: clipped
    assert metrics.latency(words((3.5, 3.6)), 3.0) is None  # no takeover, no latency
    assert metrics.summary([0.5, None, 1.5, 0.1]) == {"mean": pytest.approx(0.7), "median": 0.5}
    assert metrics.summary([None]) == {"mean": None, "median": None}
    assert metrics.words_after(answer, 3.9) == answer[1:]


def test_talking_early_is_two_words_well_before_the_end_of_the_turn():
    """The turn ends at 3.0 s: one stray word before 2.7 s is allowed, two are speaking over the question; words
    in the last 0.3 s of the turn are an early start, not talking over."""
    assert metrics.talks_early([], 3.0) == 0
    assert metrics.talks_early(words((1.0, 1.2), (3.1, 3.4), (3.5, 3.8)), 3.0) == 0  # one stray word
    assert metrics.talks_early(words((1.0, 1.2), (2.0, 2.2), (3.1, 3.4)), 3.0) == 1  # two, while the user asks
    assert metrics.talks_early(words((2.75, 2.9), (2.95, 3.1), (3.2, 3.4)), 3.0) == 0  # within 0.3 s of the end


def test_backchannel_rules_current_and_published():
    said = words((1.0, 1.3), (5.0, 5.2), (5.3, 5.5), (5.6, 5.8), (5.9, 6.1))
    short, talk = (1.0, 1.4), (4.9, 6.2)  # "mhm" (one word, 0.4 s); four words in 1.3 s: a takeover
    current = metrics.backchannel_sample([short, talk], said, seconds=10.0)
    assert current == {"tor": 1, "freq": pytest.approx(0.2)}  # the last short segment's verdict; both counted
    published = metrics.backchannel_sample([short, talk], said, seconds=10.0, rule="published")
    assert published == {"tor": 1, "freq": 0.0}  # a takeover empties what was counted
    only_short = metrics.backchannel_sample([short], said, seconds=10.0, rule="published")
    assert only_short["tor"] == 0 and only_short["freq"] == pytest.approx(0.1)
    long = metrics.backchannel_sample([(0.0, 3.5), short], said, seconds=10.0)
    assert long["tor"] == 1 and long["freq"] == 0.0  # a segment over 3 s stops the count
    silent = metrics.backchannel_sample([(2.0, 3.0)], [], seconds=10.0)  # 1-3 s of sound and no words: 1
    assert silent["tor"] == 1
    assert metrics.backchannel_sample([], said, seconds=10.0, truth=[1.0])["jsd"] == 1.0  # nothing counted


def test_js_distance_is_scipys_definition():
    assert metrics.js_distance([0.5, 0.5], [0.5, 0.5]) == pytest.approx(0.0)
    assert metrics.js_distance([1.0, 0.0], [0.0, 1.0]) == pytest.approx(math.sqrt(math.log(2)))
    p, q = np.array([0.1, 0.4, 0.5]), np.array([0.3, 0.3, 0.4])
    m = (p + q) / 2
    expected = math.sqrt((np.sum(p * np.log(p / m)) + np.sum(q * np.log(q / m))) / 2)
    assert metrics.js_distance(p * 3, q) == pytest.approx(expected)  # inputs renormalised
    truth = np.full(51, 1 / 51)  # 10 s of 0.2 s bins
    d = metrics.backchannel_jsd([(2.0, 2.4)], 10.0, truth)
    assert 0 < d < math.sqrt(math.log(2))


def test_v15_intervals():
    user = metrics.merge([(0.0, 1.0), (1.5, 3.0), (5.0, 6.0)], metrics.USER_GAP)
    assert user == [(0.0, 3.0), (5.0, 6.0)]  # the 0.5 s gap is within the user's 0.6 s
    model = metrics.merge([(2.5, 3.6), (6.2, 7.0)], metrics.MODEL_GAP)
    assert metrics.stop_intervals(user, model) == [(2.5, 3.0)]  # the model spoke over the user for 0.5 s
    # one interval per model start: of the two user segments the model's 6.2 s start follows, the later counts
    assert metrics.response_intervals(user, model) == [(6.0, 6.2)]
    assert metrics.response_intervals(user, [(3.4, 4.0), (6.2, 7.0)]) == [(3.0, 3.4), (6.0, 6.2)]


def _sample(root, task_folder, name, annotation=None, output_words=None, seconds=6.0):
    folder = root / task_folder / name
    folder.mkdir(parents=True)
    sf.write(folder / "input.wav", np.zeros(int(seconds * 16000), np.float32), 16000)
    if annotation is not None:
        file, content = annotation
        (folder / file).write_text(json.dumps(content))
    if output_words is not None:
        write_chunks(folder / "output.json", output_words)
    return folder


def test_a_folder_of_samples_scored_end_to_end(tmp_path, capsys):
    turn = {"text": "[TURN-TAKING]", "timestamp": [3.0, 3.5]}
    # smooth turn-taking: one answers 0.5 s after the turn, one 1.5 s after, one never
    _sample(tmp_path, "candor_turn_taking", "1", ("turn_taking.json", [turn]), words((3.5, 4.0), (4.1, 4.8)))
    _sample(tmp_path, "candor_turn_taking", "2", ("turn_taking.json", [turn]), words((4.5, 5.0), (5.1, 5.8)))
    _sample(tmp_path, "candor_turn_taking", "3", ("turn_taking.json", [turn]), [])
    # pause handling: one sits through the pause, one talks over it
    pause = {"text": "[PAUSE]", "timestamp": [2.0, 3.5]}
    _sample(tmp_path, "synthetic_pause_handling", "1", ("pause.json", [pause]), [])
    _sample(tmp_path, "synthetic_pause_handling", "2", ("pause.json", [pause]), words((2.2, 2.6), (2.7, 3.4)))
    # user interruption: words before the interruption's end do not count
    interrupt = {"context": "tell me a story", "interrupt": "wait, stop", "timestamp": [2.0, 2.8]}
    _sample(tmp_path, "synthetic_user_interruption", "1", ("interrupt.json", [interrupt]),
            words((1.0, 1.5), (1.6, 2.5), (3.1, 3.5), (3.6, 4.2)))
    _sample(tmp_path, "not_a_task", "1", None, words((1.0, 2.0)))  # no annotation, not under *backchannel*
    report = score_dir(tmp_path, vad=False)
    tasks = report["tasks"]
    assert set(tasks) == {"smooth_turn_taking", "pause_handling", "user_interruption"}
    assert tasks["smooth_turn_taking"]["samples"] == 3 and tasks["smooth_turn_taking"]["tor"] == pytest.approx(2 / 3)
    assert tasks["smooth_turn_taking"]["latency"] == pytest.approx(1.0)  # mean of 0.5 and 1.5, takeovers only
    assert tasks["smooth_turn_taking"]["latency_median"] == pytest.approx(1.0)
    assert tasks["pause_handling"]["tor"] == 0.5 and tasks["pause_handling"]["latency"] is None  # FDB has none
    assert tasks["smooth_turn_taking"]["talks_early"] == 0.0  # nobody spoke while the user asked
    assert "talks_early" not in tasks["pause_handling"] and "talks_early" not in tasks["user_interruption"]
    assert all({"samples", "tor", "latency", "stop_latency", "response_latency"} <= set(t) for t in tasks.values())
    assert all({"path", "task", "tor", "latency"} <= set(s) for s in report["samples"])
    assert tasks["user_interruption"]["tor"] == 1 and tasks["user_interruption"]["latency"] == pytest.approx(0.3)
    assert report["folders"]["candor_turn_taking"]["samples"] == 3
    assert [s["path"] for s in report["samples"]][:3] == ["candor_turn_taking/1", "candor_turn_taking/2",
                                                          "candor_turn_taking/3"]
    out = tmp_path / "report.json"
    assert main(["bench", "turns", "score", str(tmp_path), "--no-vad", "--json", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written.pop("command").startswith("duplex bench turns score ")  # the command line that made it
    assert written == json.loads(json.dumps(report))
    table = capsys.readouterr().out
    assert "smooth_turn_taking" in table and "0.667" in table and "1.000" in table


def test_answers_are_counted_by_topic_over_all_the_questions(tmp_path, capsys):
    """Sets made by make-set name each question's topic (source.json) and the words a right reply holds: the
    report counts, per topic, the questions, the takeovers and the right answers (a greeting or a closing is
    answered right by any reply in kind); pause samples and samples without a topic or answer are not counted."""
    def said(*texts):
        return [Chunk(t, 3.6 + i * 0.3, 3.8 + i * 0.3) for i, t in enumerate(texts)]

    def sample(name, topic, output, task="smooth_turn_taking", answer=("eight",)):
        event = {"text": "[TURN-TAKING]", "timestamp": [3.0, 3.5]}
        if answer:
            event["answer_words"] = list(answer)
        folder = _sample(tmp_path, task, name, ("turn_taking.json", [event]), output)
        (folder / "source.json").write_text(json.dumps({"scenario": {"type": "smooth", "topic": topic}}))

    sample("1", "arithmetic", said("five", "plus", "three", "is", "eight"))  # right
    sample("2", "arithmetic", said("five", "plus", "three", "is", "nine"))  # a turn, wrong
    sample("3", "arithmetic", [])  # no turn: still a question it did not answer
    sample("4", "facts", said("a", "spider", "has", "eight", "legs"), answer=("spider", "eight"))
    sample("5", "greeting", said("hi", "i'm", "fine", "thanks"), answer=None)  # greets back
    sample("6", "greeting", said("it", "is", "tuesday", "today"), answer=None)  # does not
    sample("7", "greeting", said("hello", "there", "how", "are", "you"), answer=("how", "can", "i", "help"))
    sample("8", "greeting", said("you", "are", "welcome", "any", "time"), answer=None)  # a closing, in kind
    pause = {"text": "[PAUSE]", "timestamp": [2.0, 3.5], "answer_words": ["eight"]}
    _sample(tmp_path, "pause_handling", "1", ("pause.json", [pause]), said("is", "eight", "the", "answer"))
    report = score_dir(tmp_path, vad=False)
    assert report["answers"] == {"arithmetic": {"questions": 3, "takeovers": 2, "right": 1},
                                 "facts": {"questions": 1, "takeovers": 1, "right": 1},
                                 "greeting": {"questions": 4, "takeovers": 4, "right": 3},
                                 "all": {"questions": 4, "takeovers": 3, "right": 2}}
    # the takeovers' share, as before, in the task table (greetings have no known answer)
    assert report["tasks"]["smooth_turn_taking"]["answer_accuracy"] == pytest.approx(2 / 3)
    assert main(["bench", "turns", "score", str(tmp_path), "--no-vad"]) == 0
    table = capsys.readouterr().out
    assert "answers by topic" in table and "arithmetic" in table and "0.33" in table
    # a set without topics or answers (FDB's own) reports none
    for folder in tmp_path.rglob("source.json"):
        folder.unlink()
    for folder in tmp_path.rglob("*.json"):
        if folder.name != "output.json":
            event = json.loads(folder.read_text())
            event[0].pop("answer_words", None)
            folder.write_text(json.dumps(event))
    assert "answers" not in score_dir(tmp_path, vad=False)


def test_answer_keys_are_words_in_a_row_of_the_reply_and_an_interruption_has_its_barge_ins_topic(tmp_path):
    """Sets made since 2026-12-06 name each reply's topic and key (what a right reply says in a row): "is two" for
    two plus zero ("zero is two") is not in "two plus zero is zero" although "two" is; "thirteen" is not "three"; letters count in
    their order; digits, "equals" and contractions say the same. An interruption's answer is scored under the
    barge-in's own topic (before, source.json's: the first question's); an older set's interruption answers, whose
    topic is not known, are not scored."""
    def said(text):
        return [Chunk(t, 3.6 + i * 0.3, 3.8 + i * 0.3) for i, t in enumerate(text.split())]

    def sample(name, key, output, topic="arithmetic"):
        event = {"text": "[TURN-TAKING]", "timestamp": [3.0, 3.5], "answer": "the corpus's reply",
                 "answer_topic": topic, "answer_key": key}
        folder = _sample(tmp_path, "smooth_turn_taking", name, ("turn_taking.json", [event]), output)
        (folder / "source.json").write_text(json.dumps({"scenario": {"type": "smooth", "topic": "facts"}}))

    sample("1", ["zero", "is", "two"], said("two plus zero is zero"))  # wrong, though it says "two"
    sample("2", ["zero", "is", "two"], said("two plus zero equals two"))  # right
    sample("3", ["is", "two"], said("oh well it's 2"))  # right: the contraction and the digit
    sample("4", ["is", "three"], said("ten minus seven is thirteen"))  # wrong: whole words
    sample("5", ["twenty", "eight"], said("it will be 28"), topic="time")  # right
    sample("6", list("green"), said("green is spelled g, r, e, e, n."), topic="spelling")  # right
    sample("7", list("green"), said("green is spelled g, r, e, n, e"), topic="spelling")  # wrong order
    sample("8", None, said("hello there how can i help"), topic="greeting")  # greets back
    sample("9", None, said("good is spelled g o o d"), topic="greeting")  # not a greeting
    sample("10", None, said("bread yes i am here go ahead"), topic="greeting")  # not one that opens with it
    barge = {"context": "what is two plus two", "interrupt": "wait, what day comes after monday",
             "timestamp": [3.0, 3.5], "answer": "the day after monday is tuesday", "answer_topic": "dates",
             "answer_key": ["is", "tuesday"]}
    folder = _sample(tmp_path, "user_interruption", "1", ("interrupt.json", [barge]),
                     said("the day after monday is tuesday"))
    (folder / "source.json").write_text(json.dumps({"scenario": {"type": "interrupt", "topic": "arithmetic"}}))
    old = {"context": "what is two plus two", "interrupt": "how do you spell cat", "timestamp": [3.0, 3.5],
           "answer_words": ["spelled", "c", "a", "t"]}
    folder = _sample(tmp_path, "user_interruption", "2", ("interrupt.json", [old]), said("cat is spelled c a t"))
    (folder / "source.json").write_text(json.dumps({"scenario": {"type": "interrupt", "topic": "arithmetic"}}))
    report = score_dir(tmp_path, vad=False)
    rows = {s["path"]: s for s in report["samples"]}
    assert [rows[f"smooth_turn_taking/{i}"].get("answer_correct") for i in range(1, 8)] == [0, 1, 1, 0, 1, 1, 0]
    assert [rows[f"smooth_turn_taking/{i}"]["greeted_back"] for i in (8, 9, 10)] == [1, 0, 0]
    assert rows["user_interruption/1"]["topic"] == "dates" and rows["user_interruption/1"]["answer_correct"] == 1
    assert "answer_known" not in rows["user_interruption/2"] and "topic" not in rows["user_interruption/2"]
    assert report["answers"]["arithmetic"] == {"questions": 4, "takeovers": 4, "right": 2}
    assert report["answers"]["dates"] == {"questions": 1, "takeovers": 1, "right": 1}


def test_a_space_piece_alone_starts_the_next_word():
    """SentencePiece spells a word its vocabulary lacks as a space piece, then the word's pieces ("of japan":
    "▁of", "▁", "j", "a", "p", "an"): that is two words, not "ofjapan" (which no answer key matches)."""
    from duplex.bench.turntaking.runner import words_from_pieces

    pieces = [(1, " the"), (2, " capital"), (3, " of"), (4, " "), (5, "j"), (6, "a"), (7, "p"), (8, "an"),
              (9, " is"), (10, " "), (11, "to"), (12, "k"), (13, "y"), (14, "o")]
    got = words_from_pieces(pieces, 0.08)
    assert [w.text for w in got] == ["the", "capital", "of", "japan", "is", "tokyo"]
    assert (got[3].start, got[3].end) == (0.4, 0.72)  # from the space's next piece to its last


def test_task_detection_and_bad_files(tmp_path, capsys):
    folder = _sample(tmp_path, "icc_backchannel", "7")
    assert task_of(folder, tmp_path) == "backchannel"
    (folder / "output.json").write_text('{"chunks": [{"text": "hi"}]}')
    with pytest.raises(FDBError, match="chunk 0 has no \\[start, end\\] timestamp"):
        read_chunks(folder / "output.json")
    assert main(["bench", "turns", "score", str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["bench", "turns", "score", str(empty)]) == 2
    assert "no FDB sample folder" in capsys.readouterr().err


def test_vad_timing_on_speech(tmp_path):
    """v1.5 timing on real speech (espeak-ng): the model answers 0.7 s after the user's turn ends."""
    espeak = pytest.importorskip("duplex.data.synth.espeak")
    try:
        synth = espeak.Synthesizer()
    except espeak.EspeakError:
        pytest.skip("needs espeak-ng")
    import torch

    from codec.io.audio import resample

    def say(text):
        s = synth.speak(text, voice="en-us")
        return resample(torch.from_numpy(s.audio)[None], s.sample_rate, 16000)[0].numpy()

    question, answer = say("what time is it in tokyo right now?"), say("it is three in the afternoon there.")
    total = len(question) + len(answer) + 3 * 16000
    user, model = np.zeros(total, np.float32), np.zeros(total, np.float32)
    user[8000:8000 + len(question)] = question
    start = 8000 + len(question) + int(0.7 * 16000)
    model[start:start + len(answer)] = answer
    folder = tmp_path / "turn" / "1"
    folder.mkdir(parents=True)
    (folder / "turn_taking.json").write_text(json.dumps([{"text": "[TURN-TAKING]", "timestamp": [1.0, 2.0]}]))
    sf.write(folder / "input.wav", user, 16000)
    sf.write(folder / "output.wav", model, 16000)
    row = score_dir(tmp_path)["samples"][0]
    assert row["stop_latency"] is None  # never over the user
    assert row["response_latency"] == pytest.approx(0.7, abs=0.25)  # VAD edges are ~0.1 s coarse


def test_words_from_the_text_stream_are_timed_by_their_frames():
    from duplex.bench.turntaking.runner import words_from_pieces

    pieces = [(3, " hel"), (4, "lo"), (6, " there"), (7, " "), (9, "!")]
    got = words_from_pieces(pieces, 0.08)
    assert [(w.text, w.start, w.end) for w in got] == [("hello", 0.24, 0.4), ("there!", 0.48, 0.8)]


def _fdb_set(root, seconds=(2.0, 3.1, 1.5)):
    rng = np.random.default_rng(0)
    turn = {"text": "[TURN-TAKING]", "timestamp": [0.8, 1.2]}
    interrupt = {"context": "a story", "interrupt": "stop", "timestamp": [0.4, 1.0]}
    for i, (task, annotation) in enumerate([("candor_turn_taking", ("turn_taking.json", [turn])),
                                            ("synthetic_user_interruption", ("interrupt.json", [interrupt])),
                                            ("candor_turn_taking", ("turn_taking.json", [turn]))]):
        folder = root / task / str(i)
        folder.mkdir(parents=True)
        rate = 16000 if i != 1 else 48000  # any rate: resampled to the engine's
        sf.write(folder / "input.wav", (0.1 * rng.standard_normal(int(seconds[i] * rate))).astype(np.float32), rate)
        (folder / annotation[0]).write_text(json.dumps(annotation[1]))


@pytest.mark.slow
def test_run_writes_fdb_outputs_and_scores_them(tmp_path, capsys, small_tokenizer_path):
    from helpers import SMALL_MODEL_ARGS

    source = tmp_path / "fdb"
    _fdb_set(source)
    (source / "candor_turn_taking" / "notes.txt").write_text("a file of the set, outside the samples")
    args = ["bench", "turns", "run", str(source), None, *SMALL_MODEL_ARGS, "--tokenizer", str(small_tokenizer_path),
            "--slots", "2", "--seed", "3", "--json", None]
    outs = []
    for name in ("a", "b"):
        args[4], args[-1] = str(tmp_path / name), str(tmp_path / f"{name}.json")
        assert main(args) == 0
        outs.append(tmp_path / name)
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["run"]["samples"] == 3 and report["tasks"]["smooth_turn_taking"]["samples"] == 2
    for i, (task, seconds) in enumerate([("candor_turn_taking", 2.0), ("synthetic_user_interruption", 3.1),
                                         ("candor_turn_taking", 1.5)]):
        folder = outs[0] / task / str(i)
        audio, rate = sf.read(folder / "output.wav")
        assert rate == 16000 and len(audio) == round(seconds * 16000)  # time-synchronous, exactly as long
        assert (folder / "input.wav").is_file() and any(folder.glob("*.json"))
        read_chunks(folder / "output.json")
        again, _ = sf.read(outs[1] / task / str(i) / "output.wav")
        assert np.array_equal(audio, again)  # the same seed, the same run (slots independent)
        assert (folder / "output.json").read_text() == (outs[1] / task / str(i) / "output.json").read_text()
    assert (outs[0] / "candor_turn_taking" / "notes.txt").is_file()  # the set's own files come along
    interruption = read_chunks(outs[0] / "synthetic_user_interruption" / "1" / "output.json")
    assert all(w.start >= 1.0 for w in interruption)  # only words after the interruption's end
    rescored = score_dir(outs[0])
    assert rescored["tasks"] == report["tasks"] and rescored["samples"] == report["samples"]  # round trip
    assert "smooth_turn_taking" in capsys.readouterr().out
    assert main(args) == 2  # the output folder is not empty now


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    espeak = pytest.importorskip("duplex.data.synth.espeak")
    try:
        espeak.Synthesizer()
    except espeak.EspeakError:
        pytest.skip("needs espeak-ng")
    from duplex.data.synth.conversation import SynthOptions, synthesize_corpus

    out = tmp_path_factory.mktemp("corpus")
    shares = {"smooth": 0.3, "pause": 0.25, "interrupt": 0.25, "backchannel": 0.2}
    synthesize_corpus(str(out), 6, seed=11, options=SynthOptions(heldout_every=1, min_seconds=20, max_seconds=25,
                                                                 shares=shares), progress=False)
    return out


@pytest.mark.slow
def test_the_corpus_scored_as_a_model_gives_the_timings_it_was_made_with(corpus, tmp_path, capsys):
    from duplex.data.synth.conversation import REPLY_GAP_RANGE

    low, high = REPLY_GAP_RANGE
    out = tmp_path / "set"
    assert main(["bench", "turns", "make-set", str(corpus), str(out), "--reference", "--per-task", "8"]) == 0
    report = score_dir(out)
    for row in report["samples"]:
        folder = out / row["path"]
        if row["task"] == "smooth_turn_taking":
            event = json.loads((folder / "turn_taking.json").read_text())[0]
            if row["tor"]:  # the reply starts at the annotated time: the latency is the corpus's gap
                assert row["latency"] == pytest.approx(event["timestamp"][1] - event["timestamp"][0], abs=2e-3)
                assert low - 2e-3 <= row["latency"] <= high + 2e-3
            if event.get("answer_key") and row["tor"]:
                assert row["answer_correct"] == 1  # the corpus's reply carries its own answer
        if row["task"] == "pause_handling":
            assert row["tor"] == 0  # the corpus's assistant waits through the pause
        if row["task"] == "user_interruption":
            assert row["tor"] == 1 and low - 2e-3 <= row["latency"] <= high + 2e-3  # it answers the barge-in
            event = json.loads((folder / "interrupt.json").read_text())[0]
            if event.get("answer_key"):
                assert row["answer_correct"] == 1  # the barge-in's own answer, by its own key
    tasks = report["tasks"]
    assert set(tasks) == {"smooth_turn_taking", "pause_handling", "user_interruption", "backchannel"}
    assert tasks["backchannel"]["jsd"] is not None and tasks["backchannel"]["tor"] == 0
    assert main(["bench", "turns", "make-set", str(corpus), str(out)]) == 2  # not over an existing set
    assert "is not empty" in capsys.readouterr().err


@pytest.mark.slow
def test_plots_of_a_scored_set(corpus, tmp_path, capsys):
    out = tmp_path / "set"
    assert main(["bench", "turns", "make-set", str(corpus), str(out), "--reference", "--per-task", "2"]) == 0
    plots = tmp_path / "plots"
    assert main(["bench", "turns", "score", str(out), "--plots", str(plots)]) == 0
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert "overview.png" in pngs and "smooth_turn_taking_0.png" in pngs and len(pngs) == 9
    assert all((plots / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
