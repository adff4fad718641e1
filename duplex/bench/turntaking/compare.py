"""``duplex bench turns compare REPORT...``: several ``bench turns run`` reports side by side, one row per (set,
model), each the mean over that pair's runs (sampling seeds), with the default model's targets (issue 28) below.

This is how a default-model candidate is judged (docs/training.md; ``demos/default-model/evaluate.sh`` makes the
runs): the same sets, never trained on, run with several seeds, because on 20 samples a seed alone moves a TOR by
up to 0.3. Task figures are means over the runs of each run's mean (a figure a run does not have, such as a
latency with no takeover, is left out of that mean); the answer counts are sums over the runs.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import Dict, List, Optional, Sequence, Tuple

from .fdb import INTERRUPTION, PAUSE, TURN, FDBError

# (column, task, figure): the task figures of a row, in the order of docs/training.md's tables
COLUMNS = (("smooth TOR", TURN, "tor"), ("latency s", TURN, "latency"), ("pause TOR", PAUSE, "tor"),
           ("interruption TOR", INTERRUPTION, "tor"), ("latency s", INTERRUPTION, "latency"),
           ("stop s (smooth)", TURN, "stop_latency"), ("stop s (interruption)", INTERRUPTION, "stop_latency"),
           ("talks early", TURN, "talks_early"))
# (column, topic): answer counts, summed over the runs
ANSWERS = (("right answers", "all"), ("arithmetic", "arithmetic"), ("greets back", "greeting"))
# Issue 28's targets, under the same columns ("" where it sets none): smooth turn-taking TOR and latency, pause TOR,
# interruption TOR with the time the model takes to stop (the VAD's stop latency), the answers, a greeting back
TARGETS = (">= 0.95", "<= 0.30", "<= 0.30", ">= 0.95", "", "", "<= 0.30", "", ">= 60%", ">= 80%", "a greeting")


@dataclass
class Row:
    set: str
    model: str
    seeds: List[Optional[int]] = field(default_factory=list)
    figures: Dict[str, Optional[float]] = field(default_factory=dict)  # "task/figure" -> mean over the runs
    answers: Dict[str, Tuple[int, int]] = field(default_factory=dict)  # topic -> (right, questions), summed


def _set_of(report: dict, path: Path) -> str:
    """The set a report ran: the ``set`` its run records, else the set folder of its command line (reports of
    before that field), as the folder's name."""
    run = report.get("run") or {}
    where = run.get("set")
    if where is None:
        try:
            words = shlex.split(report.get("command") or "")
            where = words[words.index("run") + 1]
        except (ValueError, IndexError):
            raise FDBError(f"{path}: the report does not say which set it ran (no run.set, no command line)") from None
    return os.path.basename(os.path.normpath(str(where)))


def _model_of(report: dict) -> str:
    """The LM file a report ran (``run.setup.lm``), or the random shape it timed (``--model``)."""
    setup = (report.get("run") or {}).get("setup") or {}
    return str(setup.get("lm") or setup.get("model") or "?")


def load(paths: Sequence[str]) -> List[Tuple[str, str, dict]]:
    """(set, model, report) of each ``bench turns run --json`` report; a file that is not one is a one-line
    ``FDBError``."""
    loaded = []
    for name in paths:
        path = Path(name)
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise FDBError(f"{path}: cannot read the report ({e})") from None
        if not isinstance(report, dict) or not isinstance(report.get("tasks"), dict) or "run" not in report:
            raise FDBError(f"{path}: not a 'duplex bench turns run --json' report (no tasks and run)")
        loaded.append((_set_of(report, path), _model_of(report), report))
    if not loaded:
        raise FDBError("no reports to compare")
    return loaded


def compare(loaded: Sequence[Tuple[str, str, dict]]) -> List[Row]:
    """One ``Row`` per (set, model), in the order first seen, the sets together."""
    groups: Dict[Tuple[str, str], List[dict]] = {}
    for set_name, model, report in loaded:
        groups.setdefault((set_name, model), []).append(report)
    order = sorted(groups, key=lambda key: [k[0] for k in groups].index(key[0]))  # sets together, stable
    rows = []
    for key in order:
        reports = groups[key]
        row = Row(key[0], key[1], seeds=[(r.get("run") or {}).get("seed") for r in reports])
        for _, task, figure in COLUMNS:
            values = [r["tasks"].get(task, {}).get(figure) for r in reports]
            values = [v for v in values if v is not None]
            row.figures[f"{task}/{figure}"] = mean(values) if values else None
        for _, topic in ANSWERS:
            counts = [(r.get("answers") or {}).get(topic) for r in reports]
            counts = [c for c in counts if c]
            if counts:
                row.answers[topic] = (sum(c["right"] for c in counts), sum(c["questions"] for c in counts))
        rows.append(row)
    return rows


def model_names(rows: Sequence[Row]) -> Dict[str, str]:
    """A short name per model (its file's folder path from where the models' paths part, e.g. ``lm2/best``)."""
    paths = list(dict.fromkeys(r.model for r in rows))
    if len(paths) == 1:
        return {paths[0]: os.path.basename(os.path.dirname(paths[0])) or paths[0]}
    common = os.path.commonpath([os.path.dirname(p) for p in paths]) if all(os.path.isabs(p) for p in paths) else ""
    names = {}
    for p in paths:
        short = os.path.relpath(os.path.dirname(p), common) if common else os.path.dirname(p)
        names[p] = p if short in ("", ".") else short
    return names


def format_markdown(rows: Sequence[Row]) -> str:
    """docs/training.md's table: one line per (set, model), then the targets; the models' files below it."""
    def show(value, digits=2):
        return "-" if value is None else f"{value:.{digits}f}"

    names = model_names(rows)
    header = ["set", "model", "runs"] + [c for c, _, _ in COLUMNS] + [c for c, _ in ANSWERS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * (len(header) - 2)]
    for row in rows:
        cells = [row.set, names[row.model], str(len(row.seeds))]
        cells += [show(row.figures[f"{task}/{figure}"]) for _, task, figure in COLUMNS]
        cells += [f"{row.answers[t][0]} of {row.answers[t][1]}" if t in row.answers else "-" for _, t in ANSWERS]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| target | | | " + " | ".join(TARGETS) + " |")
    lines.append("")
    lines += [f"{name}: {path}" for path, name in names.items()]
    lines.append("means over each pair's runs (seeds); answers: right of the questions with a known answer, summed "
                 "over the runs; talks early: share of smooth samples with 2+ words 0.3 s before the turn's end")
    return "\n".join(lines)


def as_json(rows: Sequence[Row]) -> dict:
    return {"rows": [{"set": r.set, "model": r.model, "seeds": r.seeds, "figures": r.figures,
                      "answers": {t: {"right": a[0], "questions": a[1]} for t, a in r.answers.items()}}
                     for r in rows]}
