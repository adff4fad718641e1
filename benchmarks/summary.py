"""The one table of ``benchmarks/gpu.sh``: the reports it wrote into one folder (``bench latency`` JSON for the
7B shapes and the shipped model, the 7B shapes again with the stages compiled (``--compile``, one report per
batch size), ``bench memory`` JSON, the GPU tests' pytest output, ``bench fidelity``'s output,
``bench lora`` JSON: LoRA training steps on a random 7B, or on the CPU the shipped model's shape; ``bench turns run``
JSON: FDB v1 at scale, a random 7B over a v1-sized set, or on the CPU the shipped model over a few samples)
as one Markdown table that docs/benchmarks.md can take as it is, with the issue's goals checked. A report that is
missing gives marked cells ("GPU only" on a machine without CUDA, "not run" otherwise).

    python3 benchmarks/summary.py OUT_FOLDER
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional

GIB = 1 << 30


def _load(folder: Path, name: str) -> Optional[dict]:
    path = folder / name
    return json.loads(path.read_text()) if path.exists() else None


def _text(folder: Path, name: str) -> Optional[str]:
    path = folder / name
    return path.read_text().strip() if path.exists() else None


def _key(run: dict) -> tuple:
    q = run.get("quantization", {})
    return q.get("weights", run.get("variant")), q.get("kv", "")


def _cells(report: dict, batches: List[int], render) -> Dict[tuple, List[str]]:
    """(weights, ring) -> one cell per batch: ``render(run)`` for a timed run, its error for one that was not."""
    rows: Dict[tuple, List[str]] = {}
    for run in report["runs"]:
        cells = rows.setdefault(_key(run), ["-"] * len(batches))
        cells[batches.index(run["batch_size"])] = render(run) if "total_ms" in run else run.get("error", "failed")
    return rows


def _step_cells(report: dict, batches: List[int]) -> Dict[tuple, List[str]]:
    """(weights, ring) -> one cell per batch: median ms and the speedup over the baseline variant (unquantized
    weights, the ring in the compute dtype: bfloat16 on a GPU) at that batch."""
    baseline = report.get("baseline", "none")
    base = {r["batch_size"]: r["total_ms"]["p50"] for r in report["runs"]
            if "total_ms" in r and r["variant"] == baseline}

    def render(run):
        ms = run["total_ms"]["p50"]
        compared = run["batch_size"] in base and run["variant"] != baseline
        speedup = f" ({base[run['batch_size']] / ms:.2f}x)" if compared else ""
        return f"{ms:.1f} ms{speedup}" + (" eager" if "note" in run else "")

    return _cells(report, batches, render)


def _compiled_cells(report: dict, uncompiled: Optional[dict], batches: List[int]) -> Dict[tuple, List[str]]:
    """(weights, ring) -> one cell per batch of a ``bench latency --compile`` report: median ms, the speedup over
    the uncompiled run of the same variant and batch (``uncompiled``), the depth stage's median beside the
    uncompiled one, the compile time of the stages, and those that fell back to eager."""
    before = {(_key(r), r["batch_size"]): r for r in (uncompiled or {}).get("runs", []) if "total_ms" in r}

    def render(run):
        ms = run["total_ms"]["p50"]
        other = before.get((_key(run), run["batch_size"]))
        notes = [f"{other['total_ms']['p50'] / ms:.2f}x"] if other else []
        depth = run.get("stages_ms", {}).get("depth", {}).get("p50")
        if depth is not None:
            old = (other or {}).get("stages_ms", {}).get("depth", {}).get("p50")
            notes.append(f"depth {depth:.2f}" + (f" vs {old:.2f}" if old is not None else "") + " ms")
        stages = run.get("compiled", {})
        seconds = [v for v in stages.values() if isinstance(v, (int, float))]
        if seconds:
            notes.append(f"{'+'.join(n for n, v in stages.items() if isinstance(v, (int, float)))} compiled in "
                         f"{sum(seconds):.0f} s")
        notes += [f"{name} {value}" for name, value in stages.items() if not isinstance(value, (int, float))]
        if "note" in run:
            notes.append("eager")
        return f"{ms:.1f} ms" + (f" ({'; '.join(notes)})" if notes else "")

    return _cells(report, batches, render)


def _memory_cells(report: dict, memory: Optional[dict], batches: List[int]) -> Dict[tuple, List[str]]:
    """(weights, ring) -> peak max_memory_allocated / computed GiB per batch (CUDA runs only)."""
    rows: Dict[tuple, List[str]] = {}
    computed = {}
    if memory:
        for m in memory.get("measured", []):
            computed[(m["weights"], m["ring"], m["batch_size"])] = m["computed_bytes"]
    for run in report["runs"]:
        if "memory" not in run:
            continue
        cells = rows.setdefault(_key(run), ["-"] * len(batches))
        c = computed.get((*_key(run), run["batch_size"]))
        cells[batches.index(run["batch_size"])] = (f"{run['memory']['peak_bytes'] / GIB:.1f}"
                                                   + (f" / {c / GIB:.1f} GiB" if c else " GiB"))
    return rows


def _goals(report: Optional[dict], memory: Optional[dict]) -> List[List[str]]:
    """The issue's goals on an H200 (issue 25): met, not met, or not measured."""
    if report is None:
        return [[goal, "not measured (no GPU)"] for goal in (
            "batch 1 <= 9 ms with int8 or fp8 weights", "64 sessions <= 30 ms with an fp8 ring",
            "128 sessions fit")]
    timed = [r for r in report["runs"] if "total_ms" in r]

    def best(batch, keep):
        runs = [r for r in timed if r["batch_size"] == batch and keep(_key(r))]
        return min(runs, key=lambda r: r["total_ms"]["p50"]) if runs else None

    out = []
    for goal, batch, keep, limit in (
            ("batch 1 <= 9 ms with int8 or fp8 weights", 1, lambda k: k[0] in ("int8", "fp8"), 9.0),
            ("64 sessions <= 30 ms with an fp8 ring", 64, lambda k: k[1] == "fp8", 30.0)):
        run = best(batch, keep)
        if run is None:
            out.append([goal, "not measured"])
            continue
        ms = run["total_ms"]["p50"]
        out.append([goal, f"{'met' if ms <= limit else 'not met'}: best {run['variant']} {ms:.1f} ms"])
    fits = [r for r in timed if r["batch_size"] >= 128]
    fit_note = ""
    if memory:
        counts = {"+".join((row["weights"], row["ring"])): row["sessions_fit"].get("141 GB") for row in memory["rows"]}
        fit_note = "; computed for 141 GB: " + ", ".join(f"{k} {v}" for k, v in counts.items())
    out.append(["128 sessions fit",
                (f"met: {', '.join(r['variant'] for r in fits)} ran 128" if fits
                 else "not met: no variant ran 128 sessions" if any(r["batch_size"] >= 128 for r in report["runs"])
                 else "not measured") + fit_note])
    return out


def _goals_29(full: Optional[dict], at_30s: Optional[dict], compiled: Optional[dict]) -> List[List[str]]:
    """Issue 29's goals on an H200: one session <= 5 ms (bfloat16: the unquantized variant, any age, compiled or
    not), 64 sessions 30 s into their conversations <= 21 ms."""
    goals = ("batch 1 <= 5 ms (bfloat16)", "64 sessions 30 s in <= 21 ms")
    if full is None and at_30s is None:
        return [[goal, "not measured (no GPU)"] for goal in goals]

    def runs(*reports):  # the unquantized weights and ring (the variant "none")
        return [r for rep in reports if rep for r in rep["runs"] if "total_ms" in r and r["variant"] == "none"]

    out = []
    for goal, batch, reports, limit in ((goals[0], 1, (full, at_30s, compiled), 5.0), (goals[1], 64, (at_30s,), 21.0)):
        timed = [r for r in runs(*reports) if r["batch_size"] == batch]
        smaller = [r for r in runs(*reports) if 1 < r["batch_size"] < batch]
        if not timed and batch > 1 and smaller:  # a GPU that holds fewer 7B sessions (an H100: 32)
            most = max(r["batch_size"] for r in smaller)
            ms = min(r["total_ms"]["p50"] for r in smaller if r["batch_size"] == most)
            out.append([goal, f"not measured: this GPU held {most} sessions ({ms:.1f} ms at {most})"])
            continue
        if not timed:
            out.append([goal, "not measured"])
            continue
        ms = min(r["total_ms"]["p50"] for r in timed)
        out.append([goal, f"{'met' if ms <= limit else 'not met'}: {ms:.1f} ms"])
    return out


def _lora_cell(run: dict) -> str:
    """One LoRA run: step time, frames per second, peak memory (CUDA) beside the computed figure."""
    computed = run["computed"]["allocated"] / 1e9
    memory = run.get("memory", {})
    if "error" in run:
        peak = memory.get("peak_allocated_bytes")
        return run["error"] + (f" (peak {peak / 1e9:.1f} GB; computed {computed:.1f} GB)" if peak else "")
    cell = (f"p50 {run['step_ms']['p50']:.0f} ms, max {run['step_ms']['max']:.0f} ms; "
            f"{run['frames_per_s']:.0f} frames/s; loss {'finite' if run['loss_finite'] else 'NOT finite'}, base "
            f"{'unchanged' if run['base_unchanged'] else 'CHANGED'}; ")
    if "peak_allocated_bytes" in memory:
        return cell + (f"peak {memory['peak_allocated_bytes'] / 1e9:.1f} GB allocated "
                       f"({memory['peak_reserved_bytes'] / 1e9:.1f} reserved) / computed {computed:.1f} GB")
    return cell + f"memory GPU only (computed {computed:.1f} GB)"


def _lora_rows(folder: Path, gpu: bool) -> List[List[str]]:
    """[what, weights, cell] for each ``bench lora`` run (and each that left no report: timed out, failed); the 7B's
    marked "GPU only" on a machine without CUDA."""
    rows = []
    status = _text(folder, "lora_status.txt") or ""
    verdicts = dict(v.split(": ", 1) for v in status.split("; ") if ": " in v)
    for name, what, shown in (("lora_7b.json", "LoRA training step, Moshi 7B (random)", gpu),
                              ("lora_default.json", "LoRA training step, shipped model's shape (random), CPU",
                               not gpu)):
        if not shown:
            if name == "lora_7b.json":
                rows.append([what, "", "GPU only"])
            continue
        report = _load(folder, name)
        runs = report["runs"] if report else []
        for run in runs:
            weights = run["weights"] if run["weights"] != "none" else run["dtype"]
            rows.append([f"{what}, rank {run['rank']}, batch {run['batch_size']} x {run['segment_seconds']:g} s",
                         weights, _lora_cell(run)])
        ran = {run["weights"] for run in runs}
        missing = {w: v for w, v in verdicts.items() if w not in ran}
        rows += [[what, w, v] for w, v in missing.items()]
        if not runs and not missing:
            rows.append([what, "", "not run"])
    return rows


FDB_GOAL_S = 300.0  # issue 29: FDB v1 with 7B shapes end to end in under 5 minutes on an H200
FDB_SAMPLES, FDB_HOURS = 730, 8.0  # FDB v1's size


def _fdb_cell(run: dict) -> str:
    """One ``bench turns run``: its size, wall time (and the model's loading), speed, steps and slots used."""
    used = run["slots_used"]
    rtf = run.get("real_time_factor")
    audio = run["audio_seconds"]
    audio = f"{audio / 3600:.2f} h" if audio >= 360 else f"{audio:.1f} s"  # the CPU dry run's few seconds
    speed = run["x_real_time"]
    return (f"{run['samples']} samples, {audio} of audio in {run['wall_seconds']:.1f} s "
            f"(+ {run.get('load_seconds', 0):.1f} s loading): {speed:.{1 if speed >= 10 else 2}f}x real time, RTF "
            f"{'-' if rtf is None else f'{rtf:.4f}'}; {run['engine_steps']} engine steps, slots used "
            f"{used['mean']:.1f} mean / {used['max']} max of {run['slots']}")


def _fdb_rows(folder: Path, gpu: bool) -> List[List[str]]:
    """[what, cell] for FDB at scale (``fdb_7b.json`` on CUDA, ``fdb_default.json`` on the CPU, else the status
    ``gpu.sh`` wrote: timed out, with how far it got, or failed), and the issue's goal."""
    what = ("FDB v1 at scale (bench turns run), Moshi 7B shapes (random), CUDA graphs" if gpu else
            "FDB at scale (bench turns run), CPU dry run, shipped model")
    status = _text(folder, "fdb_status.txt")
    report = _load(folder, "fdb_7b.json" if gpu else "fdb_default.json")
    run = report["run"] if report else None
    rows = [[what, _fdb_cell(run) if run else status or "not run"]]
    if not gpu:
        return rows + [["goal (H200): FDB v1 with 7B shapes end to end in under 5 minutes", "not measured (no GPU)"]]
    if run is None:
        verdict = "not measured"
        limit = re.match(r"timed out after (\d+(?:\.\d+)?) s", status or "")
        if limit:  # stopped at a limit past the goal: not met; at one under it, the goal was not tried
            verdict = (f"not met: {status}" if float(limit.group(1)) >= FDB_GOAL_S else
                       f"not measured: {status}, a limit under the goal's {FDB_GOAL_S:.0f} s")
    else:
        total = run["wall_seconds"] + run.get("load_seconds", 0.0)
        full = run["samples"] >= FDB_SAMPLES and run["audio_seconds"] >= 0.99 * FDB_HOURS * 3600
        verdict = (f"{'met' if total < FDB_GOAL_S else 'not met'}: {total:.0f} s (run and loading)"
                   + ("" if full else f", but over {run['samples']} samples / {run['audio_seconds'] / 3600:.2f} h, "
                      "not FDB v1's size"))
    return rows + [["goal (H200): FDB v1 with 7B shapes end to end in under 5 minutes", verdict]]


def _kyutai_rows(kyutai: dict, ours: List[Optional[dict]], batches: List[int]) -> List[List[str]]:
    """Kyutai's frame step (benchmarks/kyutai_gpu.py, same call) per batch, then ours over it (the unquantized
    variant; Kyutai's attends its whole ring at any age, so ours full-ring and 30 s in are both set beside it)."""
    theirs = {r["batch_size"]: r["total_ms"]["p50"] for r in kyutai["runs"] if "total_ms" in r}
    rows = [[f"Kyutai's frame step ({kyutai['implementation']}, its CUDA graphs), same call"]
            + [f"{theirs[b]:.1f} ms" if b in theirs else "-" for b in batches]]
    for label, rep in zip(("full ring", "30 s in"), ours):
        if rep is None:
            continue
        mine = {r["batch_size"]: r["total_ms"]["p50"] for r in rep["runs"]
                if "total_ms" in r and r.get("variant", "none") == "none"}
        rows.append([f"Kyutai's time / ours ({label}): speedup of ours"]
                    + [f"{theirs[b] / mine[b]:.2f}x" if b in theirs and b in mine else "-" for b in batches])
    return rows


def table(folder: Path) -> str:
    device = _text(folder, "device.txt") or "cpu"
    gpu = device == "cuda"
    big, small = _load(folder, "latency_7b.json"), _load(folder, "latency_default.json")
    parts = [rep for rep in (_load(folder, f"latency_7b_compiled_{b}.json") for b in (1, 64)) if rep]
    compiled = {**parts[0], "runs": [r for rep in parts for r in rep["runs"]]} if parts else None
    at_30s = _load(folder, "latency_7b_30s.json")
    memory = _load(folder, "memory_7b.json")
    kyutai = _load(folder, "kyutai_7b.json" if gpu else "kyutai_small.json")
    batches = sorted({r["batch_size"] for rep in (big, small, compiled, at_30s, kyutai) if rep for r in rep["runs"]}
                     | (set() if gpu else {1, 8, 64, 128}))
    fdb = _load(folder, "fdb_7b.json" if gpu else "fdb_default.json")
    head = next((rep for rep in (big, small, fdb and fdb["run"]) if rep and "hardware" in rep), None)
    lines = [f"duplex GPU run -- {head['date'] if head else ''}, {head['hardware'] if head else device}, torch "
             f"{head['torch'] if head else '?'}; ms: median per 80 ms frame (x: speedup over unquantized weights "
             "and ring at that batch); GiB: peak torch.cuda.max_memory_allocated / computed (bench memory)", "",
             "| what | weights | ring | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "|---|---|---|" + "---|" * len(batches)]

    def row(what, key, cells):
        lines.append(f"| {what} | {key[0]} | {key[1]} | " + " | ".join(cells) + " |")

    def marked(what, text):
        lines.append(f"| {what} | | | " + " | ".join([text] * len(batches)) + " |")

    for name, rep, what in (("7b", big, "step, Moshi 7B shapes (random), " + ("CUDA graphs" if gpu else "")),
                            ("default", small, "step, shipped model, " + ("CUDA graphs" if gpu else "eager, CPU"))):
        if rep is None:
            marked(what.rstrip(", "), "GPU only" if not gpu else "not run")
            continue
        for key, cells in _step_cells(rep, batches).items():
            if not gpu:
                cells = [c if c != "-" else "GPU only" for c in cells]
            row(what, key, cells)
        if name == "7b":
            for key, cells in _memory_cells(rep, memory, batches).items():
                row("peak memory, Moshi 7B shapes", key, cells)
    what = "step, Moshi 7B shapes (random), CUDA graphs, stages compiled (x: over uncompiled)"
    if compiled is None:
        marked(what, "not run" if gpu else "GPU only")
    else:
        for key, cells in _compiled_cells(compiled, big, batches).items():
            row(what, key, cells)
    what = "step, Moshi 7B shapes (random), CUDA graphs, sessions 30 s in (the ring written so far)"
    if at_30s is None:
        marked(what, "not run" if gpu else "GPU only")
    else:
        for key, cells in _step_cells(at_30s, batches).items():
            row(what, key, cells)
    if kyutai:
        for cells in _kyutai_rows(kyutai, [big, at_30s], batches):
            lines.append(f"| {cells[0]} | | | " + " | ".join(cells[1:]) + " |")
    if not gpu:
        marked("peak memory (max_memory_allocated)", "GPU only")
    if memory:
        cards = list(memory["rows"][0]["sessions_fit"])
        for r in memory["rows"]:
            fits = "/".join(str(r["sessions_fit"][c]) for c in cards)
            lines.append(f"| sessions that fit ({'/'.join(cards)}), computed, 7B | {r['weights']} | {r['ring']} | "
                         + " | ".join([fits] + [""] * (len(batches) - 1)) + " |")
    tests = _text(folder, "gpu_tests.txt")
    last = tests.splitlines()[-1] if tests else None
    verdict = (last or "not run") if gpu else "GPU only (no CUDA here)"
    lines.append(f"| GPU tests (tests/runtime/test_gpu.py) | | | {verdict} |" + " |" * (len(batches) - 1))
    for what, weights, cell in _lora_rows(folder, gpu):
        if cell == "GPU only":
            marked(what, cell)
        else:
            lines.append(f"| {what} |{f' {weights} ' if weights else ' '}| | {cell} |" + " |" * (len(batches) - 1))
    fidelity = _text(folder, "fidelity_status.txt") or "not run"
    lines.append(f"| fidelity (duplex bench fidelity) | | | {fidelity} |" + " |" * (len(batches) - 1))
    fdb = _fdb_rows(folder, gpu)
    lines.append(f"| {fdb[0][0]} | | | {fdb[0][1]} |" + " |" * (len(batches) - 1))
    for goal, verdict in _goals(big if gpu else None, memory):
        lines.append(f"| goal (H200): {goal} | | | {verdict} |" + " |" * (len(batches) - 1))
    for goal, verdict in _goals_29(big if gpu else None, at_30s if gpu else None, compiled if gpu else None):
        lines.append(f"| goal (H200, issue 29): {goal} | | | {verdict} |" + " |" * (len(batches) - 1))
    for what, verdict in fdb[1:]:
        lines.append(f"| {what} | | | {verdict} |" + " |" * (len(batches) - 1))
    fidelity_text = _text(folder, "fidelity.txt")
    if fidelity_text:
        lines += ["", "fidelity (bench fidelity's own table):", fidelity_text]
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1])))
