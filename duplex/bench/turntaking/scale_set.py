"""``duplex bench turns scale-set SRC OUT``: an FDB-layout set of any size made from a small one, for timing runs
at Full-Duplex-Bench's scale (FDB v1: about 730 samples, 8 hours of audio) where FDB's data and a speech
synthesizer are not at hand (a GPU machine that reaches nothing: the shipped ``demos/fdb-synthetic`` is enough).

Sample i of the new set is a copy of a source sample, the source's tasks taken in turn and each task cycling
through its own samples (first of each task, then second of each ...), so that any number of samples keeps the
tasks balanced. Its
``input.wav`` is the source recording followed by a tail of quiet noise (about -60 dBFS, Gaussian), so every
annotation stays true: the events all lie in the recording, before the tail. The tails share out what the asked
total length leaves after the recordings, in random proportions (Gamma(2) weights), so lengths vary as FDB's do and
the total is the asked hours to a sample. The annotation files and every other file of the sample folder are
copied as they are; ``scaled.json`` says which source sample and how much tail. For backchannel samples the
source's human distribution (``icc_gt_distribution.json`` beside them, FDB's 0.2 s histogram) is extended over the
tail with FDB's 1e-13 floor and renormalised. The same source, size and seed make the same set, byte for byte.

A scaled set is for timing: the model's turn-taking on it is not its turn-taking on the source (what follows the
recording changes what a model does after it).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import soundfile as sf

from ...errors import FDBError, UsageError
from .fdb import BACKCHANNEL, TASKS, find_samples, task_of
from .metrics import BACKCHANNEL_WINDOW

SAMPLES, HOURS, SEED = 730, 8.0, 0  # FDB v1's size: about 730 samples, 8 hours of audio
NOISE_RMS = 1e-3  # the tail: Gaussian noise at -60 dBFS
TRUTH = "icc_gt_distribution.json"
TRUTH_FLOOR = 1e-13  # FDB's smoothing of its human distributions
RECORD = "scaled.json"
SKIPPED = ("input.wav", "output.wav", "output.json")  # made anew, or a run's outputs (never part of a set)


@dataclass(frozen=True)
class _Source:
    folder: Path
    group: Path  # its folder relative to the source root, less the sample's own name: the task folder
    task: str
    frames: int
    rate: int


def _sources(root: Path) -> List[List[_Source]]:
    """The source's samples, a list per task (in ``TASKS``' order), each in its folders' natural order."""
    if not root.is_dir():
        raise FDBError(f"{root}: not a folder (give a set of FDB sample folders, such as demos/fdb-synthetic)")
    by_task: Dict[str, List[_Source]] = {}
    for folder in find_samples(root):
        task = task_of(folder, root)
        if task is None:
            continue
        try:
            info = sf.info(str(folder / "input.wav"))
        except RuntimeError as e:  # soundfile's LibsndfileError is one
            raise FDBError(f"{folder / 'input.wav'}: cannot read it ({e})") from None
        group = folder.relative_to(root).parent
        by_task.setdefault(task, []).append(_Source(folder, group if str(group) != "." else Path(task), task,
                                                    info.frames, info.samplerate))
    if not by_task:
        raise FDBError(f"{root}: no FDB sample folder (input.wav with an annotation, or under a *backchannel* "
                       "folder)")
    def natural(s: _Source) -> tuple:  # 2 before 10
        return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in s.folder.relative_to(root).parts)

    return [sorted(by_task[t], key=natural) for t in TASKS if t in by_task]


def _truth(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FDBError(f"{path}: cannot read the backchannel distributions ({e})") from None
    if not isinstance(data, dict):
        raise FDBError(f"{path}: expected {{sample name: [probabilities]}}")
    return data


def extended_truth(truth: List[float], seconds: float) -> List[float]:
    """A sample's human backchannel distribution (0.2 s bins) over ``seconds``, its recording now followed by a
    tail: the tail's bins at FDB's floor, renormalised."""
    bins = int(seconds / BACKCHANNEL_WINDOW) + 1
    values = np.asarray(truth, dtype=np.float64)
    values = np.concatenate([values, np.full(max(0, bins - len(values)), TRUTH_FLOOR)])
    return (values / values.sum()).tolist()


def tail_lengths(frames: List[int], rates: List[int], seconds: float, seed: int) -> List[int]:
    """Frames of tail per sample: ``seconds`` less the recordings, shared out by Gamma(2) weights (``seed``), each
    rounded so that the running total stays within half a frame of the asked one."""
    spare = seconds - sum(f / r for f, r in zip(frames, rates))
    if spare < 0:
        raise UsageError(f"{len(frames)} samples already hold {-spare + seconds:.0f} s of recordings, more than the "
                         f"{seconds:.0f} s asked: ask for more hours or fewer samples")
    weights = np.random.default_rng(seed).gamma(2.0, size=len(frames))
    shares = spare * weights / weights.sum()
    tails, asked, made = [], 0.0, 0.0
    for share, rate in zip(shares, rates):
        asked += share
        tail = max(0, int(round((asked - made) * rate)))
        tails.append(tail)
        made += tail / rate
    return tails


def scale_set(source: Path, out: Path, samples: int = SAMPLES, hours: float = HOURS, seed: int = SEED) -> dict:
    """Write ``samples`` sample folders of ``hours`` of audio in all into ``out`` (new or empty), made from the
    samples of ``source``; returns {"samples", "seconds", "tasks": {task: samples}, "source_samples"}."""
    source, out = Path(source), Path(out)
    if samples < 1 or not hours > 0:
        raise UsageError("a scaled set needs at least one sample and more than 0 hours")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} is not empty: give a new folder for the set")
    if out.resolve().is_relative_to(source.resolve()):
        raise UsageError(f"{out} is inside {source}: give a folder outside it")
    tasks = _sources(source)
    # Written beside OUT and renamed to it once whole: an error or Ctrl-C midway leaves no half-made set behind
    # (a run on one would time a set of the wrong size without saying so).
    partial = out.parent / f".{out.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)  # what an earlier, killed call left
    try:
        made = _write(tasks, source, partial, samples, hours, seed)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    os.replace(partial, out)  # an empty OUT is replaced
    return made


def _write(tasks: List[List[_Source]], source: Path, out: Path, samples: int, hours: float, seed: int) -> dict:
    # the tasks in turn, each cycling through its own samples: any number of samples keeps the tasks balanced
    chosen = [tasks[i % len(tasks)][(i // len(tasks)) % len(tasks[i % len(tasks)])] for i in range(samples)]
    tails = tail_lengths([s.frames for s in chosen], [s.rate for s in chosen], hours * 3600.0, seed)
    truths: Dict[Path, Optional[dict]] = {}
    new_truths: Dict[Path, dict] = {}
    counts: Dict[str, int] = {}
    names: Dict[Path, int] = {}
    seconds = 0.0
    for i, (src, tail) in enumerate(zip(chosen, tails)):
        name = str(names.setdefault(src.group, 0))
        names[src.group] += 1
        target = out / src.group / name
        target.mkdir(parents=True)
        for item in sorted(src.folder.iterdir()):
            if item.is_file() and item.name not in SKIPPED:
                shutil.copyfile(item, target / item.name)
        audio, rate = sf.read(str(src.folder / "input.wav"), dtype="float32", always_2d=True)
        info = sf.info(str(src.folder / "input.wav"))
        noise = np.random.default_rng([seed, i]).standard_normal((tail, audio.shape[1])) * NOISE_RMS
        sf.write(str(target / "input.wav"), np.concatenate([audio, noise.astype(np.float32)]), rate,
                 subtype=info.subtype, format=info.format)
        length = (len(audio) + tail) / rate
        seconds += length
        (target / RECORD).write_text(json.dumps({
            "source": str(src.folder.relative_to(source)), "source_seconds": round(len(audio) / rate, 6),
            "seconds": round(length, 6), "tail": "Gaussian noise, RMS %g" % NOISE_RMS, "seed": seed}, indent=1)
            + "\n", encoding="utf-8")
        if src.task == BACKCHANNEL:
            where = src.folder.parent
            if where not in truths:
                truths[where] = _truth(where / TRUTH)
            known = truths[where]
            if known is not None and src.folder.name in known:
                new_truths.setdefault(target.parent, {})[name] = extended_truth(known[src.folder.name], length)
        counts[src.task] = counts.get(src.task, 0) + 1
    for folder, truth in new_truths.items():
        (folder / TRUTH).write_text(json.dumps(truth), encoding="utf-8")
    return {"samples": samples, "seconds": seconds, "tasks": {t: counts[t] for t in TASKS if t in counts},
            "source_samples": sum(map(len, tasks))}


def format_scaled(made: dict, out: Path) -> str:
    """One line: what ``scale_set`` wrote, and where."""
    tasks = ", ".join(f"{task}: {n}" for task, n in made["tasks"].items())
    return (f"{made['samples']} samples ({tasks}), {made['seconds'] / 3600:.2f} h of audio "
            f"({made['seconds'] / made['samples']:.1f} s a sample on average), from {made['source_samples']} "
            f"source samples -> {out}")
