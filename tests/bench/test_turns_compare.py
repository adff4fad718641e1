"""``duplex bench turns compare``: reports of several runs side by side, one row per set and model, the means over
their seeds, the answer counts summed, the targets below; and demos/default-model/evaluate.sh, which makes those
runs, with a stand-in ``duplex`` that records its calls."""

import json
import os
import shlex
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

from duplex.bench.turntaking import compare
from duplex.bench.turntaking.fdb import FDBError
from duplex.cli import main

ROOT = Path(__file__).resolve().parents[2]
EVALUATE = ROOT / "demos" / "default-model" / "evaluate.sh"


def report(path, set_dir, lm, seed, smooth_tor, pause_tor, early=None, right=(0, 4), command=False):
    smooth = {"samples": 20, "tor": smooth_tor, "latency": 0.2 if smooth_tor else None, "stop_latency": 0.5}
    if early is not None:
        smooth["talks_early"] = early
    run = {"seed": seed, "setup": {"lm": lm}}
    doc = {"tasks": {"smooth_turn_taking": smooth, "pause_handling": {"samples": 20, "tor": pause_tor},
                     "user_interruption": {"samples": 20, "tor": 0.5, "latency": None, "stop_latency": 0.75}},
           "answers": {"arithmetic": {"questions": right[1], "takeovers": 2, "right": right[0]},
                       "all": {"questions": right[1], "takeovers": 2, "right": right[0]}},
           "run": run}
    if command:  # a report of before run.set: the set is read from the command line
        doc["command"] = f"duplex bench turns run {set_dir} out --seed {seed}"
    else:
        run["set"] = set_dir
    path.write_text(json.dumps(doc))
    return str(path)


def test_runs_of_one_set_and_model_become_one_row_of_means(tmp_path, capsys):
    first, second = "/runs/first/lm/model.safetensors", "/runs/second/lm2/best/model.safetensors"
    paths = [report(tmp_path / "a0.json", "/sets/set-v1", first, 0, 0.6, 0.5, early=0.1, right=(1, 4)),
             report(tmp_path / "a1.json", "/sets/set-v1", first, 1, 0.8, 0.3, early=0.3, right=(2, 4)),
             report(tmp_path / "b0.json", "/sets/set-v1/", second, 0, 0.0, 0.2, command=True),
             report(tmp_path / "c0.json", "/sets/fdb-synthetic", first, 0, 1.0, 0.0)]
    rows = compare.compare(compare.load(paths))
    assert [(r.set, r.model, r.seeds) for r in rows] == [("set-v1", first, [0, 1]), ("set-v1", second, [0]),
                                                         ("fdb-synthetic", first, [0])]
    v1 = rows[0]
    assert v1.figures["smooth_turn_taking/tor"] == pytest.approx(0.7)
    assert v1.figures["pause_handling/tor"] == pytest.approx(0.4)
    assert v1.figures["smooth_turn_taking/talks_early"] == pytest.approx(0.2)
    assert v1.answers["all"] == (3, 8) and "greeting" not in v1.answers
    # a figure a run lacks (no takeover, no latency; older reports have no talks_early) is left out, not a zero
    assert rows[1].figures["smooth_turn_taking/latency"] is None
    assert rows[1].figures["smooth_turn_taking/talks_early"] is None
    assert main(["bench", "turns", "compare", *paths, "--json", str(tmp_path / "rows.json")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| set | model | runs | smooth TOR")
    assert table[2].startswith("| set-v1 | first/lm | 2 | 0.70 | 0.20 | 0.40 | 0.50 | - | 0.50 | 0.75 | 0.20 | 3 of 8 |")
    assert table[3].startswith("| set-v1 | second/lm2/best | 1 | 0.00 | - | 0.20 |")
    assert table[5].startswith("| target | | | >= 0.95 | <= 0.30 | <= 0.30 | >= 0.95 |")
    written = json.loads((tmp_path / "rows.json").read_text())
    assert [r["seeds"] for r in written["rows"]] == [[0, 1], [0], [0]]


def test_what_is_not_a_run_report_is_one_line(tmp_path):
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(FDBError, match="cannot read the report"):
        compare.load([str(tmp_path / "bad.json")])
    (tmp_path / "score.json").write_text(json.dumps({"tasks": {}}))  # a `score` report: no run
    with pytest.raises(FDBError, match="not a 'duplex bench turns run --json' report"):
        compare.load([str(tmp_path / "score.json")])
    (tmp_path / "where.json").write_text(json.dumps({"tasks": {}, "run": {}}))
    with pytest.raises(FDBError, match="does not say which set"):
        compare.load([str(tmp_path / "where.json")])
    assert main(["bench", "turns", "compare", str(tmp_path / "missing.json")]) != 0


# Writes what each call would (a set folder, a run's report) and records the call.
STAND_IN = textwrap.dedent("""\
    #!/usr/bin/env bash
    echo "$*" >> "$CALLS"
    arg() { local want=$1; shift; while [ $# -gt 0 ]; do [ "$1" = "$want" ] && { echo "$2"; return; }; shift; done; }
    case "$1 $2 ${3:-}" in
      "data synth "*) mkdir -p "$3" && touch "$3/manifest.jsonl" ;;
      "bench turns make-set") mkdir -p "$5" ;;
      "bench turns run")
        if [ "${FAIL_RUN:-}" = "$5" ]; then mkdir -p "$5"; touch "$5/.duplex-turns-run.json"; exit 130; fi
        mkdir -p "$5"; echo '{}' > "$(arg --json "$@")" ;;
    esac
""")


def evaluate(tmp_path, *args, **env):
    stand_in = tmp_path / "duplex"
    stand_in.write_text(STAND_IN)
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR)
    calls = tmp_path / "calls.txt"
    environ = {**os.environ, "DUPLEX": str(stand_in), "CALLS": str(calls), **env}
    result = subprocess.run(["bash", str(EVALUATE), *map(str, args)], env=environ, capture_output=True, text=True,
                            timeout=60)
    lines = calls.read_text().splitlines() if calls.exists() else []
    calls.unlink(missing_ok=True)
    return result, [shlex.split(line) for line in lines]


def test_evaluate_makes_the_sets_once_runs_every_set_and_seed_and_resumes(tmp_path):
    model = tmp_path / "model.safetensors"
    model.touch()
    out, fdb = tmp_path / "eval", tmp_path / "fdb"
    fdb.mkdir()
    result, calls = evaluate(tmp_path, model, out, fdb, FAIL_RUN=str(out / "fdb-synthetic-1"))
    assert result.returncode != 0  # a run stopped: the script stops with it
    synths = [c for c in calls if c[:2] == ["data", "synth"]]
    assert [(c[2], c[c.index("--seed") + 1], "--mix" in c) for c in synths] == [
        (str(out / "sets" / "corpus-set-v1"), "2801", False), (str(out / "sets" / "corpus-set-v2"), "2802", True)]
    assert all(c[c.index("--conversations") + 1] == "80" and c[c.index("--heldout-every") + 1] == "1" for c in synths)
    runs = [c for c in calls if c[:3] == ["bench", "turns", "run"]]
    assert all(c[c.index("--lm") + 1] == str(model) and c[c.index("--threads") + 1] == "2" for c in runs)
    assert [(Path(c[4]).name, c[c.index("--seed") + 1]) for c in runs] == [
        ("set-v1-0", "0"), ("set-v2-0", "0"), ("fdb-synthetic-0", "0"), ("set-v1-1", "1"), ("set-v2-1", "1"),
        ("fdb-synthetic-1", "1")]
    assert runs[2][3] == str(ROOT / "demos" / "fdb-synthetic")
    # again: no set made again, the finished runs skipped, the stopped one resumed (its folder kept), the rest run
    result, calls = evaluate(tmp_path, model, out, fdb)
    assert result.returncode == 0, result.stderr
    assert not [c for c in calls if c[:2] == ["data", "synth"] or c[2:3] == ["make-set"]]
    runs = [c for c in calls if c[:3] == ["bench", "turns", "run"]]
    assert [Path(c[4]).name for c in runs] == ["fdb-synthetic-1", "set-v1-2", "set-v2-2", "fdb-synthetic-2",
                                               "fdb-examples-0"]
    assert runs[-1][3] == str(fdb) and calls[-1][:3] == ["bench", "turns", "compare"]
    assert len(calls[-1]) == 3 + 10  # every report: 3 sets x 3 seeds and the FDB examples


def test_evaluate_refuses_a_missing_model_and_runs_the_default_model_without_lm(tmp_path):
    result, calls = evaluate(tmp_path, tmp_path / "nothing.safetensors", tmp_path / "eval")
    assert result.returncode == 2 and "no such model file" in result.stderr and not calls
    result, calls = evaluate(tmp_path, "default", tmp_path / "eval", SEEDS="0")
    assert result.returncode == 0, result.stderr
    runs = [c for c in calls if c[:3] == ["bench", "turns", "run"]]
    assert len(runs) == 3 and not any("--lm" in c for c in runs)
