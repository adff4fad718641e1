"""``duplex bench turns compare``: reports of several runs side by side, one row per set and model, the means over
their seeds, the answer counts summed, the targets below; and demos/default-model/evaluate.sh, which makes those
runs, with a stand-in ``duplex`` that records its calls."""

import json
import textwrap
from pathlib import Path

import pytest
from helpers import run_with_stand_in

from duplex.bench.turntaking import compare
from duplex.bench.turntaking.fdb import SHIPPED_SET, FDBError
from duplex.cli import main
from duplex.runtime.checkpoints import SHIPPED_LM

ROOT = Path(__file__).resolve().parents[2]
EVALUATE = ROOT / "demos" / "default-model" / "evaluate.sh"


def report(path, set_dir, lm, seed, smooth_tor, pause_tor, early=None, right=(0, 4)):
    smooth = {"samples": 20, "tor": smooth_tor, "latency": 0.2 if smooth_tor else None, "stop_latency": 0.5}
    if early is not None:
        smooth["talks_early"] = early
    run = {"seed": seed, "setup": {"lm": lm}, "set": set_dir}
    doc = {"tasks": {"smooth_turn_taking": smooth, "pause_handling": {"samples": 20, "tor": pause_tor},
                     "user_interruption": {"samples": 20, "tor": 0.5, "latency": None, "stop_latency": 0.75}},
           "answers": {"arithmetic": {"questions": right[1], "takeovers": 2, "right": right[0]},
                       "all": {"questions": right[1], "takeovers": 2, "right": right[0]}},
           "run": run}
    path.write_text(json.dumps(doc))
    return str(path)


def test_runs_of_one_set_and_model_become_one_row_of_means(tmp_path, capsys):
    first, second = "/runs/first/lm/model.safetensors", "/runs/second/lm2/best/model.safetensors"
    paths = [report(tmp_path / "a0.json", "/sets/set-v1", first, 0, 0.6, 0.5, early=0.1, right=(1, 4)),
             report(tmp_path / "a1.json", "/sets/set-v1", first, 1, 0.8, 0.3, early=0.3, right=(2, 4)),
             report(tmp_path / "b0.json", "/sets/set-v1/", second, 0, 0.0, 0.2),
             report(tmp_path / "c0.json", str(SHIPPED_SET), first, 0, 1.0, 0.0)]
    rows = compare.compare(compare.load(paths))
    assert [(r.set, r.model, r.seeds) for r in rows] == [("set-v1", first, [0, 1]), ("set-v1", second, [0]),
                                                         ("shipped", first, [0])]
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
    assert table[5].startswith("| target | | | >= 0.95 | <= 0.30 | <= 0.30 | >= 0.95 |  |  | <= 0.30 |")
    written = json.loads((tmp_path / "rows.json").read_text())
    assert [r["seeds"] for r in written["rows"]] == [[0, 1], [0], [0]]


def test_the_latency_over_runs_is_over_every_takeover_not_a_mean_of_means(tmp_path):
    """One run with 1 takeover at 2.0 s, one with 11 at 0.2 s: the latency over both is 0.35 s (12 takeovers), not
    1.1 s; TOR and the other figures stay means of the runs' means (every run has the same samples)."""
    paths = []
    for seed, (tor, latency) in enumerate([(1 / 12, 2.0), (11 / 12, 0.2)]):
        doc = {"tasks": {"smooth_turn_taking": {"samples": 12, "tor": tor, "latency": latency, "stop_latency": 0.5 * (seed + 1)}},
               "run": {"seed": seed, "setup": {"lm": "/m/lm.safetensors"}, "set": "/sets/v1set"}}
        path = tmp_path / f"r{seed}.json"
        path.write_text(json.dumps(doc))
        paths.append(str(path))
    row = compare.compare(compare.load(paths))[0]
    assert row.figures["smooth_turn_taking/latency"] == pytest.approx((2.0 + 11 * 0.2) / 12)
    assert row.figures["smooth_turn_taking/tor"] == pytest.approx(0.5)
    assert row.figures["smooth_turn_taking/stop_latency"] == pytest.approx(0.75)


def test_result_bundles_and_the_default_model_sit_beside_new_runs(tmp_path):
    """benchmarks/results keeps earlier models' runs as bundles ({"runs": [...]}, sets and models by name): they
    compare with new reports, whose shipped set and shipped model take the bundles' names."""
    bundle = ROOT / "benchmarks" / "results" / "turns-second-model-candidate-2026-12-05.json"
    ours = report(tmp_path / "d0.json", str(SHIPPED_SET), SHIPPED_LM, 0, 0.5, 0.5)
    rows = compare.compare(compare.load([str(bundle), ours]))
    shipped = [r for r in rows if r.set == "shipped"]
    assert [(r.model, len(r.seeds)) for r in shipped] == [("first", 3), ("candidate", 3), ("default", 1)]
    assert shipped[0].figures["smooth_turn_taking/tor"] == pytest.approx(0.69, abs=0.005)  # docs/training.md's
    assert {r.set for r in rows} == {"v1set", "v2set", "shipped", "fdb3"}
    assert compare.model_names(rows) == {"first": "first", "candidate": "candidate", "default": "default"}


def test_runs_with_other_sampling_are_rows_of_their_own_and_names_stay_distinct():
    rows = [compare.Row("s", m) for m in ("/r/a/lm2/best/model.safetensors",
                                          "/r/a/lm2/best/model.safetensors [text_temperature 0.3]",
                                          "/r/b/lm2/best/model.safetensors", "first")]
    assert list(compare.model_names(rows).values()) == ["a/lm2/best", "a/lm2/best [text_temperature 0.3]",
                                                        "b/lm2/best", "first"]
    same_folder = [compare.Row("s", "/r/x/one.safetensors"), compare.Row("s", "/r/x/two.safetensors")]
    assert compare.model_names(same_folder) == {r.model: r.model for r in same_folder}  # "x" twice would hide which
    setup = {"lm": "/r/a/model.safetensors", "sampling": {"text_temperature": 0.3, "top_k": 100}}
    assert compare._model_name(setup) == "/r/a/model.safetensors [text_temperature 0.3, top_k 100]"
    assert compare._model_name({"lm": SHIPPED_LM}) == "default"


def test_what_is_not_a_run_report_is_one_line(tmp_path, caplog):
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(FDBError, match="cannot read the report"):
        compare.load([str(tmp_path / "bad.json")])
    (tmp_path / "score.json").write_text(json.dumps({"tasks": {}}))  # a `score` report: no run
    with pytest.raises(FDBError, match="not a 'duplex bench turns run --json' report"):
        compare.load([str(tmp_path / "score.json")])
    (tmp_path / "where.json").write_text(json.dumps({"tasks": {}, "run": {}}))  # a report of before run.set
    with pytest.raises(FDBError, match="does not say which set"):
        compare.load([str(tmp_path / "where.json")])
    (tmp_path / "bundle.json").write_text(json.dumps({"runs": [{"set": "v1set", "tasks": {}}]}))
    with pytest.raises(FDBError, match="run 0 of the bundle has no set, model and tasks"):
        compare.load([str(tmp_path / "bundle.json")])
    for bad, message in (({"smooth_turn_taking": None}, "is not a table"), ({"pause_handling": {"tor": "x"}}, "not a number")):
        (tmp_path / "odd.json").write_text(json.dumps({"runs": [{"set": "s", "model": "m", "tasks": bad}]}))
        with pytest.raises(FDBError, match=message):
            compare.load([str(tmp_path / "odd.json")])
    (tmp_path / "odd.json").write_text(json.dumps({"runs": [{"set": "s", "model": "m", "tasks": {},
                                                             "answers": {"all": {"right": 1}}}]}))
    with pytest.raises(FDBError, match="no right and questions"):
        compare.load([str(tmp_path / "odd.json")])
    (tmp_path / "twice.json").write_text(json.dumps({"runs": [{"set": "s", "model": "m", "seed": 0, "tasks": {}}] * 2}))
    with pytest.raises(FDBError, match="a report is given twice"):
        compare.load([str(tmp_path / "twice.json"), str(tmp_path / "twice.json")])
    with caplog.at_level("WARNING"):
        assert len(compare.load([str(tmp_path / "twice.json")])) == 2
    assert "more than one run of m on s with seed 0" in caplog.text
    assert main(["bench", "turns", "compare", str(tmp_path / "missing.json")]) != 0


# Writes what each call would (a set folder, a run's report) and records the call.
STAND_IN = textwrap.dedent("""\
    #!/usr/bin/env bash
    echo "$*" >> "$CALLS"
    arg() { local want=$1; shift; while [ $# -gt 0 ]; do [ "$1" = "$want" ] && { echo "$2"; return; }; shift; done; }
    case "$1 $2 ${3:-}" in
      "data synth "*) mkdir -p "$3" && touch "$3/manifest.jsonl" ;;
      "bench turns make-set")
        mkdir -p "$5"; if [ "${FAIL_SET:-}" = "$5" ]; then exit 130; fi ;;
      "bench turns run")
        if [ "${FAIL_RUN:-}" = "$5" ]; then mkdir -p "$5"; touch "$5/.duplex-turns-run.json"; exit 130; fi
        mkdir -p "$5"; echo '{}' > "$(arg --json "$@")" ;;
    esac
""")


def evaluate(tmp_path, *args, **env):
    return run_with_stand_in(EVALUATE, STAND_IN, tmp_path, *args, **env)


def test_evaluate_makes_the_sets_once_runs_every_set_and_seed_and_resumes(tmp_path):
    model = tmp_path / "model.safetensors"
    model.touch()
    out, fdb, sets = tmp_path / "eval", tmp_path / "fdb", tmp_path / "eval" / "sets"
    fdb.mkdir()
    # a stop while the second set is cut: the first set is kept, the half-made one is not taken for done
    result, calls = evaluate(tmp_path, model, out, fdb, FAIL_SET=str(sets / "v2set.part"))
    assert result.returncode != 0 and (sets / "v1set").is_dir() and not (sets / "v2set").exists()
    synths = [c for c in calls if c[:2] == ["data", "synth"]]
    assert [(Path(c[2]).name, c[c.index("--seed") + 1], "--mix" in c) for c in synths] == [
        ("corpus-v1set", "2801", False), ("corpus-v2set", "2802", True)]
    assert all(c[c.index("--conversations") + 1] == "80" and c[c.index("--heldout-every") + 1] == "1" for c in synths)
    # again, and a run stops: the script stops with it and says where to look
    result, calls = evaluate(tmp_path, model, out, fdb, FAIL_RUN=str(out / "shipped-1"))
    assert result.returncode == 1
    assert "the run of shipped with seed 1 stopped" in result.stderr and "shipped-1.log" in result.stderr
    assert not [c for c in calls if c[:2] == ["data", "synth"]]  # both corpora were whole
    assert [c[3:5] for c in calls if c[2:3] == ["make-set"]] == [[str(sets / "corpus-v2set"), str(sets / "v2set.part")]]
    runs = [c for c in calls if c[:3] == ["bench", "turns", "run"]]
    assert all(c[c.index("--lm") + 1] == str(model) and c[c.index("--threads") + 1] == "2" for c in runs)
    assert [(Path(c[4]).name, c[c.index("--seed") + 1]) for c in runs] == [
        ("v1set-0", "0"), ("v2set-0", "0"), ("shipped-0", "0"), ("v1set-1", "1"), ("v2set-1", "1"), ("shipped-1", "1")]
    assert runs[0][3] == str(sets / "v1set") and runs[2][3] == str(ROOT / "demos" / "fdb-synthetic")
    # again: no set made again, the finished runs skipped, the stopped one resumed (its folder kept), the rest run
    result, calls = evaluate(tmp_path, model, out, fdb)
    assert result.returncode == 0, result.stderr
    assert not [c for c in calls if c[:2] == ["data", "synth"] or c[2:3] == ["make-set"]]
    runs = [c for c in calls if c[:3] == ["bench", "turns", "run"]]
    assert [Path(c[4]).name for c in runs] == ["shipped-1", "v1set-2", "v2set-2", "shipped-2", "fdb-examples-0"]
    assert runs[-1][3] == str(fdb) and calls[-1][:3] == ["bench", "turns", "compare"]
    assert len(calls[-1]) == 3 + 10  # every report: 3 sets x 3 seeds and the FDB examples
    (out / "table.json").write_text("{}")  # another JSON in OUT is not one of the reports
    result, calls = evaluate(tmp_path, model, out, fdb)
    assert result.returncode == 0 and calls == [calls[-1]] and len(calls[-1]) == 3 + 10
    # another model's runs do not go into this OUT
    other = tmp_path / "other.safetensors"
    other.touch()
    result, calls = evaluate(tmp_path, other, out)
    assert result.returncode == 2 and f"holds the runs of {model}" in result.stderr and not calls


def test_evaluate_refuses_a_missing_model_and_runs_the_default_model_without_lm(tmp_path):
    result, calls = evaluate(tmp_path, tmp_path / "nothing.safetensors", tmp_path / "eval")
    assert result.returncode == 2 and "no such model file" in result.stderr and not calls
    result, calls = evaluate(tmp_path, "default", tmp_path / "eval", SEEDS="0")
    assert result.returncode == 0, result.stderr
    runs = [c for c in calls if c[:3] == ["bench", "turns", "run"]]
    assert len(runs) == 3 and not any("--lm" in c for c in runs)
    # more options for every run (sampling): an OUT of their own
    result, calls = evaluate(tmp_path, "default", tmp_path / "eval", SEEDS="0", OPTIONS="--temp-text 0.3")
    assert result.returncode == 2 and "not default --temp-text 0.3" in result.stderr
    result, calls = evaluate(tmp_path, "default", tmp_path / "cool", SEEDS="0", OPTIONS="--temp-text 0.3")
    runs = [c for c in calls if c[:3] == ["bench", "turns", "run"]]
    assert result.returncode == 0 and all(c[c.index("--temp-text") + 1] == "0.3" for c in runs) and len(runs) == 3
    # but not the options the script sets itself
    for option in ("--seed 5", "--threads=1", "--thr 1"):
        result, calls = evaluate(tmp_path, "default", tmp_path / "own", OPTIONS=option)
        assert result.returncode == 2 and "which evaluate.sh sets itself" in result.stderr and not calls
