"""Full-Duplex-Bench (FDB) folders: finding the sample folders, telling their task, reading their annotations and
the word lists (``output.json``, FDB's ASR format) a run or an ASR wrote.

A sample is a folder holding ``input.wav``; its task comes from its annotation: ``pause.json`` -> pause handling,
``turn_taking.json`` -> smooth turn-taking, ``interrupt.json`` -> user interruption, and a folder under a folder
whose name contains ``backchannel`` (FDB's ICC set has no annotation file) -> backchannel. FDB's own scorer takes
the task from the command line instead, one task folder at a time; the formats are FDB's
(github DanielLin94144/Full-Duplex-Bench, ``v1_v1.5``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional

from ...errors import FDBError

PAUSE, TURN, INTERRUPTION, BACKCHANNEL = "pause_handling", "smooth_turn_taking", "user_interruption", "backchannel"
TASKS = (PAUSE, TURN, INTERRUPTION, BACKCHANNEL)
ANNOTATIONS = {PAUSE: "pause.json", TURN: "turn_taking.json", INTERRUPTION: "interrupt.json"}
# The set that ships with duplex (README, "The shipped set"): 48 held-out samples of its synthetic corpus
SHIPPED_SET = Path(__file__).resolve().parents[3] / "demos" / "fdb-synthetic"



@dataclass(frozen=True)
class Chunk:
    """One word of ``output.json``: its text and [start, end] in seconds (end may be missing)."""

    text: str
    start: float
    end: Optional[float]


def task_of(folder: Path, root: Path) -> Optional[str]:
    """The task of the sample in ``folder`` (None: not a sample FDB scores)."""
    for task, name in ANNOTATIONS.items():
        if (folder / name).is_file():
            return task
    if any("backchannel" in part.lower() for part in folder.relative_to(root).parts[:-1]):
        return BACKCHANNEL
    return None


def find_samples(root: Path, require: str = "input.wav") -> Iterator[Path]:
    """Every folder under ``root`` (``root`` itself included) that holds ``require``, in sorted order."""
    root = Path(root)
    if not root.is_dir():
        raise FDBError(f"{root}: not a folder")
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        if require in files:
            yield Path(folder)


def _json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise FDBError(f"{path}: cannot read it ({e.strerror or e})") from None
    except ValueError as e:
        raise FDBError(f"{path}: not JSON ({e})") from None


def _seconds(value, path: Path, what: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise FDBError(f"{path}: {what} is not a number of seconds: {value!r}")
    return float(value)


def read_chunks(path: Path) -> List[Chunk]:
    """The words of an ``output.json`` (``{"text", "chunks": [{"text", "timestamp": [start, end]}]}``), in file
    order. A missing end time is kept as None (an ASR may leave the last one open)."""
    data = _json(path)
    chunks = data.get("chunks") if isinstance(data, dict) else None
    if not isinstance(chunks, list):
        raise FDBError(f"{path}: expected {{\"text\": ..., \"chunks\": [...]}} (FDB's ASR format)")
    words = []
    for i, chunk in enumerate(chunks):
        stamp = chunk.get("timestamp") if isinstance(chunk, dict) else None
        if not isinstance(stamp, (list, tuple)) or len(stamp) != 2:
            raise FDBError(f"{path}: chunk {i} has no [start, end] timestamp")
        start = _seconds(stamp[0], path, f"chunk {i}'s start")
        if start is None:
            raise FDBError(f"{path}: chunk {i} has no start time")
        words.append(Chunk(str(chunk.get("text", "")), start, _seconds(stamp[1], path, f"chunk {i}'s end")))
    return words


def write_chunks(path: Path, words: List[Chunk]) -> None:
    """An ``output.json`` in FDB's ASR format."""
    data = {"text": " ".join(w.text for w in words).strip(),
            "chunks": [{"text": w.text, "timestamp": [w.start, w.end]} for w in words]}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=4)


def annotation_time(folder: Path, task: str) -> float:
    """The time a sample's latency is measured from: the start of ``turn_taking.json``'s event (the end of the
    user's turn), the end of ``interrupt.json``'s (the end of the interruption); 0 for the other tasks."""
    if task not in (TURN, INTERRUPTION):
        return 0.0
    path = folder / ANNOTATIONS[task]
    data = _json(path)
    try:
        stamp = data[0]["timestamp"]
        value = _seconds(stamp[0] if task == TURN else stamp[1], path, "the event's timestamp")
    except (KeyError, IndexError, TypeError):
        raise FDBError(f"{path}: expected [{{\"timestamp\": [start, end], ...}}]") from None
    if value is None:
        raise FDBError(f"{path}: the event has no timestamp")
    return value
