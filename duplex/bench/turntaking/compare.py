"""``duplex bench turns compare REPORT...``: several ``bench turns run`` reports side by side, one row per (set,
model), each the mean over that pair's runs (sampling seeds), with the default model's targets (issue 28) below.

This is how a default-model candidate is judged (docs/training.md; ``demos/default-model/evaluate.sh`` makes the
runs): the same sets, never trained on, run with several seeds, because on 20 samples a seed alone moves a TOR by
up to 0.3. Task figures are means over the runs of each run's mean (a figure a run does not have, such as a
latency with no takeover, is left out of that mean), but for the latencies of the model's first words, which are
means over every takeover of the runs (a run's mean weighted by its takeovers, samples x TOR: before 2026-12-06 a
run with one takeover weighed as much as one with eleven); the answer counts are sums over the runs.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import Dict, List, Optional, Sequence, Tuple

from ...runtime.checkpoints import SHIPPED_LM
from .fdb import INTERRUPTION, PAUSE, SHIPPED_SET, TURN, FDBError

log = logging.getLogger(__name__)

# (column, task, figure): the task figures of a row, in the order of docs/training.md's tables
COLUMNS = (("smooth TOR", TURN, "tor"), ("latency s (smooth)", TURN, "latency"), ("pause TOR", PAUSE, "tor"),
           ("interruption TOR", INTERRUPTION, "tor"), ("latency s (interruption)", INTERRUPTION, "latency"),
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


def _set_name(where: str) -> str:
    """A set's name in the table: its folder's name; the shipped set (``demos/fdb-synthetic``) is ``shipped``, as
    the result bundles of benchmarks/results call it."""
    where = os.path.normpath(str(where))
    if os.path.realpath(where) == os.path.realpath(SHIPPED_SET):
        return "shipped"
    return os.path.basename(where)


def _model_name(setup: dict) -> str:
    """The LM file a report ran (``run.setup.lm``; ``default`` for the shipped default model), or the random shape
    it timed (``--model``); then, in brackets, the sampling it changed from the defaults (``--temp-text`` ...), so
    that runs of one model with other sampling are rows of their own."""
    lm = setup.get("lm")
    if lm and os.path.realpath(str(lm)) == os.path.realpath(SHIPPED_LM):
        name = "default"
    else:
        name = str(lm or setup.get("model") or "?")
    sampling = setup.get("sampling") or {}
    if sampling:
        name += " [" + ", ".join(f"{key} {value}" for key, value in sorted(sampling.items())) + "]"
    return name


def _check(report: dict, where: str) -> dict:
    """``report`` when its task figures are numbers (or absent) and its answers counts; else a one-line FDBError."""
    for task, figures in report["tasks"].items():
        if not isinstance(figures, dict):
            raise FDBError(f"{where}: task {task!r} is not a table of figures")
        for _, column_task, figure in COLUMNS:
            value = figures.get(figure) if task == column_task else None
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise FDBError(f"{where}: {task} {figure} is not a number ({value!r})")
    answers = report.get("answers")
    if answers is not None and not isinstance(answers, dict):
        raise FDBError(f"{where}: its answers are not a table by topic")
    for topic, counts in (answers or {}).items():
        if counts and not (isinstance(counts, dict) and all(isinstance(counts.get(k), int)
                                                            for k in ("right", "questions"))):
            raise FDBError(f"{where}: answers {topic!r} has no right and questions counts")
    return report


def load(paths: Sequence[str]) -> List[Tuple[str, str, dict]]:
    """(set, model, report) of each run: a ``bench turns run --json`` report is one run; a result bundle of
    benchmarks/results (``{"runs": [{"model", "set", "seed", "tasks", "answers"}, ...]}``) holds several, named as
    it names them. A file that is neither is a one-line ``FDBError``."""
    loaded = []
    if len(set(map(os.path.realpath, paths))) < len(paths):
        raise FDBError("a report is given twice")
    for name in paths:
        path = Path(name)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise FDBError(f"{path}: cannot read the report ({e})") from None
        if isinstance(doc, dict) and isinstance(doc.get("runs"), list):
            for i, run in enumerate(doc["runs"]):
                if not (isinstance(run, dict) and isinstance(run.get("tasks"), dict) and run.get("set")
                        and run.get("model")):
                    raise FDBError(f"{path}: run {i} of the bundle has no set, model and tasks")
                report = {"tasks": run["tasks"], "answers": run.get("answers"), "run": {"seed": run.get("seed")}}
                loaded.append((str(run["set"]), str(run["model"]), _check(report, f"{path}: run {i}")))
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("tasks"), dict) or not isinstance(doc.get("run"), dict):
            raise FDBError(f"{path}: not a 'duplex bench turns run --json' report (no tasks and run) nor a bundle of "
                           "runs")
        if not doc["run"].get("set"):
            raise FDBError(f"{path}: the report does not say which set it ran (reports of duplex before 2026-12-06 "
                           "do not): run it again")
        loaded.append((_set_name(doc["run"]["set"]), _model_name(doc["run"].get("setup") or {}), _check(doc, str(path))))
    if not loaded:
        raise FDBError("no reports to compare")
    # Runs of one model, set and seed from several files (bundles that both name the shipped model "first", two
    # OUTs run with other thread counts) are averaged as any runs are; said, since one run given twice would count
    # twice.
    seen, repeated = set(), []
    for set_name, model, report in loaded:
        key = (set_name, model, (report.get("run") or {}).get("seed"))
        if key[2] is not None and key in seen:
            repeated.append(f"{model} on {set_name} with seed {key[2]}")
        seen.add(key)
    if repeated:
        log.warning("more than one run of %s%s (each counted in the means)", repeated[0],
                    f" and {len(repeated) - 1} more" if len(repeated) > 1 else "")
    return loaded


def _over_runs(tasks: List[dict], figure: str) -> Optional[float]:
    """A task's ``figure`` over runs: a latency of first words over every takeover (each run's mean weighted by
    its takeovers, samples x TOR), any other figure the mean of the runs' means."""
    have = [t for t in tasks if t.get(figure) is not None]
    if not have:
        return None
    if figure == "latency":
        weights = [t.get("samples", 0) * (t.get("tor") or 0) for t in have]
        if sum(weights) > 0:
            return sum(w * t[figure] for w, t in zip(weights, have)) / sum(weights)
    return mean(t[figure] for t in have)


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
            row.figures[f"{task}/{figure}"] = _over_runs([r["tasks"].get(task, {}) for r in reports], figure)
        for _, topic in ANSWERS:
            counts = [(r.get("answers") or {}).get(topic) for r in reports]
            counts = [c for c in counts if c]
            if counts:
                row.answers[topic] = (sum(c["right"] for c in counts), sum(c["questions"] for c in counts))
        rows.append(row)
    return rows


def model_names(rows: Sequence[Row]) -> Dict[str, str]:
    """A short name per model: a file's folder path from where the models' paths part (e.g. ``lm2/best``); a name
    that is not a path (a bundle's ``first``, ``default``) as it is."""
    models = list(dict.fromkeys(r.model for r in rows))
    names = {m: m for m in models if os.sep not in m.split(" [")[0]}
    files = {m: m.split(" [")[0] for m in models if m not in names}  # the model, its file (without the sampling)
    if not files:
        return names
    folders = [os.path.dirname(f) for f in files.values()]
    common = ""
    if len(set(folders)) > 1 and all(os.path.isabs(f) for f in folders):
        common = os.path.commonpath(folders)
    for model, file in files.items():
        short = os.path.relpath(os.path.dirname(file), common) if common else os.path.basename(os.path.dirname(file))
        names[model] = (file if short in ("", ".") else short) + model[len(file):]
    shown = [names[m] for m in models]
    return {m: m if shown.count(names[m]) > 1 else names[m] for m in models}  # two files of one folder: in full


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
    lines += [f"{name}: {path}" for path, name in names.items() if name != path]
    lines.append("means over each pair's runs (seeds); answers: right of the questions with a known answer, summed "
                 "over the runs; talks early: share of smooth samples with 2+ words 0.3 s before the turn's end")
    return "\n".join(lines)


def as_json(rows: Sequence[Row]) -> dict:
    return {"rows": [{"set": r.set, "model": r.model, "seeds": r.seeds, "figures": r.figures,
                      "answers": {t: {"right": a[0], "questions": a[1]} for t, a in r.answers.items()}}
                     for r in rows]}
