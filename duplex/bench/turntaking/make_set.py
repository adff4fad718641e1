"""``duplex bench turns make-set CORPUS OUT``: Full-Duplex-Bench sample folders cut from the synthetic corpus, one
task folder per scenario, so that our model is measured on turn-taking whose truth is known.

Each sample is the user channel of one scenario, 16 kHz mono, its times relative to the scenario's start:

* ``smooth_turn_taking/`` (corpus ``smooth``): the user's question, then silence until the scenario ends (the
  corpus's reply and a short gap) and at least ``MIN_TAIL`` s after the question; ``turn_taking.json`` [user's
  turn end, reply start].
* ``pause_handling/`` (``pause``): the user's hesitant question cut 0.7 s after the pause ends (as FDB's pause
  samples end shortly after the user resumes); ``pause.json`` [pause start, pause end].
* ``user_interruption/`` (``interrupt``): the question, the silence in which a reply would start, the user's
  barge-in and the rest of the scenario, at least ``MIN_TAIL`` s after the barge-in; ``interrupt.json`` with the
  context, the interruption and its times.
* ``backchannel/`` (``backchannel``): the user's statement and the pause after it, up to the next question;
  ``icc_gt_distribution.json`` holds, per sample, the 0.2 s histogram of the corpus's own backchannel.

The annotations add ``"answer"`` (the corpus's reply), ``"answer_topic"`` (the topic of the question that reply
answers: for an interruption, the barge-in's, not the first question's) and ``"answer_key"`` (the words a right
reply says in a row, ``grammar.Exchange.key``: "is thirteen", the new time, the letters in order; null for a
greeting, which is scored by kind). Corpora made before 2026-12-06 keep no key with their turns: their sets get
``"answer_words"`` instead (the reply's words that are not in the question), which the scorer still reads. With ``reference=True`` each sample also gets the corpus's own assistant channel as ``output.wav`` and its
words as ``output.json``: scoring that gives the timings the corpus was made with.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import soundfile as sf
import torch

from codec.io.audio import resample

from ...errors import DatasetError, UsageError
from .fdb import BACKCHANNEL, INTERRUPTION, PAUSE, TURN, Chunk, write_chunks
from .metrics import segment_histogram

RATE = 16000
# Smooth turn-taking and interruption samples last at least this long after the user's turn (or the barge-in) ends,
# silence added where the scenario ends sooner: a reply that starts late still has room to count as a turn (FDB v1's
# own samples give seconds more; before 2026-12-06 ours ended with the scenario, 1.7-4.8 s after the turn).
MIN_TAIL = 4.0
SPLIT, PER_TASK = "heldout", 20  # the conversations a set is cut from, and its samples per task at most
KNOWN_ANSWERS = ("arithmetic", "dates", "time", "spelling", "facts")
FOLDERS = {"smooth": TURN, "pause": PAUSE, "interrupt": INTERRUPTION, "backchannel": BACKCHANNEL}


def _words(text: str) -> List[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def answer_words(question: str, answer: str) -> List[str]:
    asked = set(_words(question))
    return [w for w in _words(answer) if w not in asked]


def _answer(reply: dict, question: str, topic: Optional[str]) -> dict:
    """The annotation's answer fields for the assistant turn ``reply``: its exchange's topic and key where the corpus
    keeps them with the turn, else (older corpora) the scenario's topic and the words not in ``question``."""
    if "topic" in reply:
        if reply["topic"] not in KNOWN_ANSWERS and reply["topic"] != "greeting":
            return {}
        return {"answer": reply["text"], "answer_topic": reply["topic"], "answer_key": reply.get("key")}
    if topic not in KNOWN_ANSWERS:
        return {}
    return {"answer": reply["text"], "answer_words": answer_words(question, reply["text"])}


def _turns_in(meta: dict, start: float, end: float, channel: str) -> List[dict]:
    return [t for t in meta["turns"] if t["channel"] == channel and start <= t["start"] < end]


def _cut(channel: np.ndarray, rate: int, start: float, end: float) -> np.ndarray:
    piece = channel[int(round(start * rate)):int(round(end * rate))]
    return resample(torch.from_numpy(np.ascontiguousarray(piece))[None], rate, RATE)[0].numpy()


def _sample(kind: str, meta: dict, scenario: dict) -> Optional[dict]:
    """What to cut for one scenario: window [start, end] (seconds in the conversation), the annotation (file name,
    content, times relative to the window) and the assistant turns that are the reference reply."""
    start, end = scenario["start"], scenario["end"]
    user, assistant = _turns_in(meta, start, end, "user"), _turns_in(meta, start, end, "assistant")
    if not user or not assistant:
        return None
    topic = scenario.get("topic")
    if kind == "smooth":
        question, reply = user[-1], assistant[0]
        entry = {"text": "[TURN-TAKING]", "timestamp": [question["end"] - start, reply["start"] - start]}
        entry.update(_answer(reply, question["text"], topic))
        return {"window": (start, end), "file": "turn_taking.json", "annotation": [entry], "reference": assistant,
                "tail_from": question["end"]}
    if kind == "pause":
        if len(user) < 2:
            return None
        resumed = user[-1]
        before = [t for t in user if t["end"] <= resumed["start"]]
        pause_start = before[-1]["end"] if before else start
        cut = min(resumed["end"], resumed["start"] + 0.7)
        entry = {"text": "[PAUSE]", "timestamp": [pause_start - start, resumed["start"] - start]}
        entry.update(_answer(assistant[-1], " ".join(t["text"] for t in user), topic))
        return {"window": (start, cut), "file": "pause.json", "annotation": [entry],
                "reference": [t for t in assistant if t["start"] < cut]}
    if kind == "interrupt":
        if len(user) < 2:
            return None
        first, barge = user[0], user[1]
        entry = {"context": first["text"], "interrupt": barge["text"],
                 "timestamp": [barge["start"] - start, barge["end"] - start]}
        later = [t for t in assistant if t["start"] >= barge["start"]]
        if later:  # the barge-in's own question: its topic, not the scenario's (the first question's)
            entry.update(_answer(later[0], barge["text"], topic if "topic" in later[0] else None))
        return {"window": (start, end), "file": "interrupt.json", "annotation": [entry], "reference": assistant,
                "tail_from": barge["end"]}
    if kind == "backchannel":
        if len(user) < 2:
            return None
        question = user[1]  # the statement, the pause with the backchannel, up to the question
        return {"window": (start, question["start"]), "file": None, "annotation": None,
                "reference": [t for t in assistant if t["start"] < question["start"]]}
    return None


def _histogram(turns: List[dict], start: float, seconds: float) -> List[float]:
    """The corpus's backchannels as FDB's ground truth: the normalised 0.2 s histogram, smoothed by 1e-13 as FDB's
    file is."""
    counts = segment_histogram([(t["start"] - start, t["end"] - start) for t in turns], seconds) + 1e-13
    return (counts / counts.sum()).tolist()


def make_set(corpus: Path, out: Path, split: str = SPLIT, per_task: int = PER_TASK, reference: bool = False) -> Dict:
    """Write up to ``per_task`` samples per task; returns {task: samples written}."""
    corpus, out = Path(corpus), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} is not empty: give a new folder for the set")
    manifest = corpus / "manifest.jsonl"
    if not manifest.is_file():
        raise DatasetError(f"{corpus} has no manifest.jsonl (not a corpus made by duplex's synthesizer)")
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if r.get("split") == split]
    if not rows:
        raise DatasetError(f"{corpus} has no '{split}' conversations")
    counts = {task: 0 for task in FOLDERS.values()}
    truth: Dict[str, List[float]] = {}
    for row in rows:
        meta = json.loads((corpus / row["json"]).read_text(encoding="utf-8"))
        stereo, rate = sf.read(corpus / row["wav"], dtype="float32", always_2d=True)
        assistant_channel, user_channel = stereo[:, 0], stereo[:, 1]
        for scenario in meta["scenarios"]:
            task = FOLDERS.get(scenario["type"])
            if task is None or counts[task] >= per_task:
                continue
            cut = _sample(scenario["type"], meta, scenario)
            if cut is None:
                continue
            start, end = cut["window"]
            name = str(counts[task])
            folder = out / task / name
            folder.mkdir(parents=True, exist_ok=True)
            # the silence after the scenario that MIN_TAIL asks for (none for pauses and backchannels)
            pad = max(0, int(round((cut["tail_from"] + MIN_TAIL - end) * RATE))) if "tail_from" in cut else 0
            sf.write(folder / "input.wav", np.pad(_cut(user_channel, rate, start, end), (0, pad)), RATE,
                     subtype="PCM_16")
            if cut["file"]:
                (folder / cut["file"]).write_text(json.dumps(cut["annotation"], indent=1), encoding="utf-8")
            (folder / "source.json").write_text(json.dumps({"conversation": meta["id"], "scenario": scenario},
                                                           indent=1), encoding="utf-8")
            if task == BACKCHANNEL:
                truth[name] = _histogram(cut["reference"], start, end - start)
            if reference:
                sf.write(folder / "output.wav", np.pad(_cut(assistant_channel, rate, start, end), (0, pad)), RATE,
                         subtype="PCM_16")
                words = [Chunk(w["word"], round(w["start"] - start, 3), round(w["end"] - start, 3))
                         for t in cut["reference"] for w in t["words"] if w["start"] < end]
                write_chunks(folder / "output.json", words)
            counts[task] += 1
    if truth:
        (out / BACKCHANNEL / "icc_gt_distribution.json").write_text(json.dumps(truth), encoding="utf-8")
    return counts


def format_counts(counts: Dict[str, int], out: Path) -> str:
    """One line: the samples ``make_set`` wrote per task, and where."""
    return ", ".join(f"{task}: {n}" for task, n in counts.items()) + f" samples -> {out}"
