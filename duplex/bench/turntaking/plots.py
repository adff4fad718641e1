"""Figures of a scored run (``duplex bench turns score --plots DIR``): a timeline per sample (the user's speech, the
model's speech, the model's words, the annotated event) and one overview (TOR and latencies per task)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

from . import vad
from .fdb import ANNOTATIONS, INTERRUPTION, PAUSE, TURN, read_chunks

_EVENT = {PAUSE: "pause", TURN: "end of turn", INTERRUPTION: "interruption"}
_SHORT = {PAUSE: "pause", TURN: "turn-taking", INTERRUPTION: "interruption"}


def _segments(path: Path):
    if not path.is_file():
        return []
    pcm, rate = vad.read_mono(path)
    return vad.speech_segments(pcm, rate)


def plot_sample(folder: Path, row: dict, path: Path) -> None:
    """One sample's timeline."""
    from matplotlib.figure import Figure  # noqa: PLC0415  optional, slow to import; no pyplot: the backend is left alone

    fig = Figure(figsize=(10, 2.6))
    ax = fig.subplots()
    for lane, (name, segments, color) in enumerate((("user", _segments(folder / "input.wav"), "tab:blue"),
                                                    ("model", _segments(folder / "output.wav"), "tab:orange"))):
        ax.broken_barh([(s, e - s) for s, e in segments], (1 - lane - 0.35, 0.7), color=color, label=f"{name} speech")
    words = read_chunks(folder / "output.json") if (folder / "output.json").is_file() else []
    for w in words:
        ax.text(w.start, -0.75, w.text, fontsize=7, rotation=45, ha="left", va="top")
    task = row["task"]
    if task in ANNOTATIONS and (folder / ANNOTATIONS[task]).is_file():
        start, end = json.loads((folder / ANNOTATIONS[task]).read_text(encoding="utf-8"))[0]["timestamp"]
        ax.axvspan(start, end, color="tab:green", alpha=0.2, label=_EVENT[task])
    figures = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                        if k not in ("path", "task") and v is not None)
    ax.set_title(f"{row['path']} ({task}): {figures}", fontsize=9)
    ax.set_yticks([1, 0, -0.75], ["user", "model", "words"])
    ax.set_ylim(-1.6, 1.6)
    ax.set_xlim(left=0)
    ax.set_xlabel("seconds")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_overview(report: dict, path: Path) -> None:
    """TOR per task, and the latency distributions of the tasks that have one."""
    import matplotlib  # noqa: PLC0415  optional, slow to import
    from matplotlib.figure import Figure  # noqa: PLC0415  optional, slow to import

    version = tuple(int(part) for part in matplotlib.__version__.split(".")[:2])
    tasks = list(report["tasks"])
    fig = Figure(figsize=(11, 3.8))
    left, right = fig.subplots(1, 2)
    tor = [report["tasks"][t].get("tor") or 0.0 for t in tasks]
    left.bar(range(len(tasks)), tor, color="tab:purple")
    left.set_xticks(range(len(tasks)), [t.replace("_", "\n") for t in tasks], fontsize=8)
    left.set_ylim(0, 1)
    left.set_ylabel("take-over rate (TOR)")
    left.set_title("TOR per task (pause: lower is better; turn-taking: higher)", fontsize=9)
    series: List[tuple] = []
    for name in ("latency", "stop_latency", "response_latency"):
        for t in tasks:
            values = [s[name] for s in report["samples"] if s["task"] == t and s.get(name) is not None]
            if values:
                series.append((f"{_SHORT.get(t, t)}: {name.replace('_', ' ')}", values))
    if series:
        # matplotlib 3.10 names the direction `orientation` (3.11 deprecates `vert`); older releases know only `vert`.
        horizontal = {"orientation": "horizontal"} if version >= (3, 10) else {"vert": False}
        right.boxplot([v for _, v in series], **horizontal)
        right.set_yticks(range(1, len(series) + 1), [n for n, _ in series], fontsize=7)
        right.set_xlabel("seconds")
        right.set_xlim(left=0)
    right.set_title("latencies per sample", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_report(root: Path, report: dict, out: Path) -> List[Path]:
    """Every figure into ``out`` (flat: the sample's path with '/' as '_'); returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for row in report["samples"]:
        path = out / (row["path"].replace("/", "_") + ".png")
        plot_sample(Path(root) / row["path"], row, path)
        written.append(path)
    overview = out / "overview.png"
    plot_overview(report, overview)
    return written + [overview]
