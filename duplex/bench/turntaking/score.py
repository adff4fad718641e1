"""``duplex bench turns score DIR``: Full-Duplex-Bench v1 figures (and v1.5 VAD timing) of the sample folders under
DIR that hold a model's ``output.wav`` and/or ``output.json``, per sample, per folder and per task.

Per-sample figures: ``tor``; ``latency`` (turn-taking and interruption, takeovers only); ``talks_early`` (smooth
turn-taking: words while the user still asks, ``metrics.talks_early``); backchannel ``freq`` and,
with the human distributions, ``jsd``; and from the VAD of input.wav and output.wav, ``stop_latency`` (the mean
length of the stretches where the model speaks over the user) and ``response_latency`` (the mean time from the end
of a user segment to the model's next start). Aggregates are means, as FDB reports them, with medians beside.

Sets made by ``make-set`` also say what a right reply holds and the topic of its question (``answer_key`` and
``answer_topic``; sets made before 2026-12-06: ``answer_words`` and ``source.json``'s topic): the report then counts
the answers by topic (``answers``: questions, takeovers, right answers; for a greeting, whether the reply greets
back), the figures of the default model's targets (issue 28).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ...data.synth.grammar import number_words
from . import metrics
from . import vad as speech
from .fdb import (
    ANNOTATIONS,
    BACKCHANNEL,
    INTERRUPTION,
    PAUSE,
    TASKS,
    TURN,
    FDBError,
    annotation_time,
    find_samples,
    read_chunks,
    task_of,
)

# A reply in kind to the corpus's "greeting" topic, which holds greetings ("hello", "good morning"), presence checks
# ("hey, are you there": "yes, i am here") and closings ("thanks a lot": "you are welcome"; "goodbye": "goodbye,
# talk to you soon"): before 2026-12-06 only greeting words counted, so a reply exactly as the corpus's to a closing
# or a presence check was scored wrong (5 of the 9 such questions of the v1 set, 1 of 6 of the v2 set).
# A reply in kind opens with it: one of these among its first GREETING_OPENING words (since 2026-12-06; before,
# anywhere, and "good" alone counted: "good is spelled g o o d" and "it is a good question" greeted back). "good"
# counts through the word after it (good morning, afternoon, evening).
GREETING_WORDS = frozenset({"hi", "hello", "hey", "morning", "afternoon", "evening", "fine",
                            "welcome", "bye", "goodbye", "here", "listening"})
GREETING_OPENING = 4  # "yes, i am here": the fourth
ANSWERED_TASKS = (TURN, INTERRUPTION)  # the questions a reply should answer as its turn (a pause's comes later)
FIGURES = ("tor", "latency", "freq", "jsd", "stop_latency", "response_latency", "answer_correct", "talks_early")
SHARES = ("tor", "talks_early")  # 0/1 per sample: their mean is a share, with no median beside it
ALWAYS = ("tor", "latency", "stop_latency", "response_latency")  # in every task's and sample's figures (or null)


def _mean(values) -> Optional[float]:
    return None if not values else sum(values) / len(values)


_WORD = re.compile(r"[a-z0-9']+")
# Said otherwise, the same: "equals" is the corpus's other "is"; a contraction is its two words; a number in digits
# is its words (the text stream may write "13" where the corpus says "thirteen").
_SAME = {"equals": ("is",), "it's": ("it", "is"), "that's": ("that", "is"), "what's": ("what", "is"),
         "it'll": ("it", "will"), "there's": ("there", "is"), "i'm": ("i", "am")}


def said_words(text: str) -> List[str]:
    """A reply's words as the answer keys spell them (lower case, contractions and digits written out)."""
    words: List[str] = []
    for word in _WORD.findall(text.lower()):
        if word.isdigit() and len(word) < 4:
            words.extend(number_words(int(word)).split())
        else:
            words.extend(_SAME.get(word, (word,)))
    return words


def holds(words: List[str], key: List[str]) -> bool:
    """Whether ``key`` occurs in ``words`` as words in a row (whole words: "thirteen" is not "three")."""
    n = len(key)
    return n > 0 and any(words[i:i + n] == key for i in range(len(words) - n + 1))


def expected_answer(folder: Path, task: str) -> Optional[dict]:
    """What a right reply holds, where the annotation says: ``{"topic", "key"}`` (``answer_topic`` and
    ``answer_key`` of sets made by ``make-set`` since 2026-12-06; a greeting's key is None) or, from older sets,
    ``{"topic", "words"}`` (``answer_words``, each to be said anywhere, with ``source.json``'s topic; not for an
    interruption, whose barge-in's topic those sets do not keep). None where nothing is known (FDB's own
    annotations)."""
    try:
        entry = json.loads((folder / ANNOTATIONS[task]).read_text(encoding="utf-8"))[0]
    except (KeyError, OSError, ValueError, IndexError, TypeError):
        return None
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("answer_topic"), str):
        key = entry.get("answer_key")
        if isinstance(key, list) and key:
            return {"topic": entry["answer_topic"], "key": [str(w).lower() for w in key]}
        return {"topic": entry["answer_topic"], "key": None}
    words = entry.get("answer_words")
    topic = topic_of(folder)
    if task == INTERRUPTION or not isinstance(words, list) or not words:
        return {"topic": "greeting", "key": None} if topic == "greeting" and task != INTERRUPTION else None
    return {"topic": topic, "words": [str(w).lower() for w in words]}


def topic_of(folder: Path) -> Optional[str]:
    """The topic of a sample's question (``"arithmetic"``, ``"greeting"``...), where its set says (``source.json``
    of sets made by ``make-set``)."""
    try:
        topic = json.loads((folder / "source.json").read_text(encoding="utf-8"))["scenario"].get("topic")
    except (KeyError, OSError, ValueError, TypeError, AttributeError):
        return None
    return topic if isinstance(topic, str) else None


def _truth_beside(folder: Path) -> Optional[dict]:
    path = folder.parent / "icc_gt_distribution.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FDBError(f"{path}: cannot read the backchannel distributions ({e})") from None


def score_sample(folder: Path, task: str, truth: Optional[dict] = None, rule: str = metrics.RULES[0],
                 vad: bool = True) -> dict:
    """The figures of one sample folder (its output.json and/or output.wav)."""
    row: Dict[str, object] = {"task": task}
    words = read_chunks(folder / "output.json") if (folder / "output.json").is_file() else None
    has_audio = (folder / "output.wav").is_file()
    if words is None and not has_audio:
        raise FDBError(f"{folder}: neither output.json nor output.wav to score")
    if task in (PAUSE, TURN, INTERRUPTION) and words is not None:
        reference = annotation_time(folder, task)
        if task == INTERRUPTION:
            words = metrics.words_after(words, reference)
        row["tor"] = metrics.takeover(words)
        if task != PAUSE:
            row["latency"] = metrics.latency(words, reference)
        if task == TURN:
            row["talks_early"] = metrics.talks_early(words, reference)
        expected = expected_answer(folder, task)
        # (an interruption's question is the barge-in's: source.json's topic is the first question's)
        topic = expected["topic"] if expected else None if task == INTERRUPTION else topic_of(folder)
        said = said_words(" ".join(chunk.text for chunk in words))
        if topic is not None:
            row["topic"] = topic
        if topic == "greeting":  # any reply in kind is right (its annotation may hold the corpus's whole reply)
            if row["tor"]:
                row["greeted_back"] = int(bool(set(said[:GREETING_OPENING]) & GREETING_WORDS))
        elif expected is not None and (expected.get("key") or expected.get("words")):
            row["answer_known"] = True
            if row["tor"]:
                right = holds(said, expected["key"]) if expected.get("key") else all(w in said for w in expected["words"])
                row["answer_correct"] = int(right)
    if has_audio and vad:
        output, rate = speech.read_mono(folder / "output.wav")
        if task == BACKCHANNEL:
            segments = speech.speech_segments(output, rate, rounded=True)
            if truth is None:  # a set made by make-set keeps its distributions beside the samples
                truth = _truth_beside(folder)
            sample_truth = truth.get(folder.name) if truth is not None else None
            row.update(metrics.backchannel_sample(segments, words or [], len(output) / rate, sample_truth, rule))
        if (folder / "input.wav").is_file():
            user_audio, user_rate = speech.read_mono(folder / "input.wav")
            user = metrics.merge(speech.speech_segments(user_audio, user_rate), metrics.USER_GAP)
            model = metrics.merge(speech.speech_segments(output, rate), metrics.MODEL_GAP)
            row["stop_latency"] = _mean([e - s for s, e in metrics.stop_intervals(user, model)])
            row["response_latency"] = _mean([e - s for s, e in metrics.response_intervals(user, model)])
    for name in ALWAYS:
        row.setdefault(name, None)
    return row


def aggregate(rows: List[dict]) -> dict:
    """Means (FDB's figures) and medians of the samples' figures; latencies only over the samples that have one
    (takeovers)."""
    out: Dict[str, object] = {"samples": len(rows)}
    for name in FIGURES:
        values = [r[name] for r in rows if r.get(name) is not None]
        if not any(name in r for r in rows) and name not in ALWAYS:
            continue
        stats = metrics.summary(values)
        if name == "answer_correct":  # the share of takeovers that carry the expected answer
            out["answer_accuracy"] = stats["mean"]
            continue
        out[name] = stats["mean"]
        if name not in SHARES:
            out[f"{name}_median"] = stats["median"]
    return out


def score_dir(root: Path, backchannel_truth: Optional[Path] = None, rule: str = metrics.RULES[0], vad: bool = True,
              progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """``{"tasks": {task: figures}, "folders": {relative folder: figures}, "samples": [figures + path]}``."""
    root = Path(root)
    truth = None
    if backchannel_truth is not None:
        try:
            truth = json.loads(Path(backchannel_truth).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise FDBError(f"{backchannel_truth}: cannot read the backchannel distributions ({e})") from None
    folders = [f for f in find_samples(root) if (f / "output.json").is_file() or (f / "output.wav").is_file()]
    samples = []
    for i, folder in enumerate(folders):
        task = task_of(folder, root)
        if task is None:
            continue
        row = score_sample(folder, task, truth, rule, vad)
        samples.append({"path": str(folder.relative_to(root)), **row})
        if progress:
            progress(i + 1, len(folders))
    if not samples:
        raise FDBError(f"{root}: no FDB sample folder with an output.json or output.wav (and an annotation, or "
                       "under a *backchannel* folder)")
    by_folder: Dict[str, List[dict]] = {}
    for s in samples:
        by_folder.setdefault(str(Path(s["path"]).parent), []).append(s)
    report = {"tasks": {t: aggregate([s for s in samples if s["task"] == t]) for t in TASKS
                        if any(s["task"] == t for s in samples)},
              "folders": {name: aggregate(rows) for name, rows in sorted(by_folder.items())},
              "samples": samples}
    answers = answers_by_topic(samples)
    if answers:
        report["answers"] = answers
    return report


def answers_by_topic(samples: List[dict]) -> Dict[str, Dict[str, int]]:
    """Per topic, over the smooth turn-taking and interruption samples: ``questions`` (with a known answer, or
    greetings), ``takeovers`` (of those), ``right`` (the takeovers that carry the answer, or greet back); ``all``
    sums the topics with a known answer (greetings apart). Empty for sets that name no topics or answers."""
    out: Dict[str, Dict[str, int]] = {}
    for s in samples:
        if s["task"] not in ANSWERED_TASKS or not (s.get("answer_known") or s.get("topic") == "greeting"):
            continue
        for key in (s.get("topic") or "unknown", "all") if s.get("answer_known") else (s["topic"],):
            counts = out.setdefault(key, {"questions": 0, "takeovers": 0, "right": 0})
            counts["questions"] += 1
            counts["takeovers"] += int(bool(s.get("tor")))
            counts["right"] += int(s.get("answer_correct", s.get("greeted_back", 0)) or 0)
    return dict(sorted(out.items(), key=lambda kv: (kv[0] == "all", kv[0])))


def console_progress(done: int, total: int) -> None:
    """A ``progress`` callback of ``score_dir`` for a person: ``scored D/T samples`` rewritten in place on a
    terminal's stderr; nothing when stderr is a file or a pipe."""
    if sys.stderr.isatty():
        print(f"\rscored {done}/{total} samples", end="" if done < total else "\n", file=sys.stderr)


LEGEND = """\
TOR         take-over rate: share of samples where the model took the turn (4+ words, or 1 s+ of talk); FDB wants
            it high for smooth turn-taking and user interruption, low for pause handling and backchannels
latency s   seconds from the end of the user's turn (or interruption) to the model's first word, takeovers only
freq        backchannels (short "mhm"s) per second of audio; JSD: Jensen-Shannon distance of their timing from
            the human distribution (0 = same; needs the distributions)
stop s      v1.5, from the VAD: mean length of the model talking over the user (how fast it stops)
response s  v1.5, from the VAD: mean time from the end of a user segment to the model's next start
answers     share of takeovers whose reply holds the expected answer (sets made by make-set); by topic, over
            smooth turn-taking and interruption: the right answers among all the questions (a greeting is
            answered right when the reply greets back)
early       smooth turn-taking: share of samples where the model says 2+ words more than 0.3 s before the end
            of the user's turn (it speaks while the user still asks; FDB's TOR counts that as a turn taken)
means over the samples; '-': no sample has that figure"""


def format_table(report: dict, legend: bool = True) -> str:
    """One row per task: FDB v1's published columns (TOR, latency; backchannel frequency and JSD) and v1.5's, and
    (``legend``) what each column means."""
    def show(value, digits=3):
        return "-" if value is None else f"{value:.{digits}f}"

    rows = [f"{'task':<20} {'samples':>7} {'TOR':>6} {'latency s':>9} {'freq':>6} {'JSD':>6} {'stop s':>7} "
            f"{'response s':>10} {'answers':>7} {'early':>6}"]
    for task, t in report["tasks"].items():
        rows.append(f"{task:<20} {t['samples']:>7} {show(t.get('tor')):>6} {show(t.get('latency')):>9} "
                    f"{show(t.get('freq')):>6} {show(t.get('jsd')):>6} {show(t.get('stop_latency')):>7} "
                    f"{show(t.get('response_latency')):>10} {show(t.get('answer_accuracy'), 2):>7} "
                    f"{show(t.get('talks_early'), 2):>6}")
    if report.get("answers"):
        rows += ["", f"{'answers by topic':<20} {'questions':>9} {'takeovers':>9} {'right':>6} {'share':>6}"]
        for topic, c in report["answers"].items():
            share = c["right"] / c["questions"] if c["questions"] else None
            rows.append(f"{topic:<20} {c['questions']:>9} {c['takeovers']:>9} {c['right']:>6} {show(share, 2):>6}")
    if legend:
        rows += ["", LEGEND]
    return "\n".join(rows)
