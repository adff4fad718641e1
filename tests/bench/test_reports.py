"""The benchmarks' tables: each module formats its own report for a person (no Python dicts), with what its
columns mean."""

import pytest
from helpers import LM_SMALL, LM_SMALL_CONFIG, MIMI_SMALL, MIMI_SMALL_CONFIG

from duplex.bench import latency
from duplex.bench.turntaking.score import format_table
from duplex.cli import main


def _stats(p50):
    return {"p50": p50, "p90": p50, "p99": p50 * 1.2, "mean": p50}


def test_the_latency_table_names_the_largest_real_time_batch_per_mode():
    runs = [{"mode": "eager", "batch_size": b, "stages_ms": {s: _stats(5.0 * b) for s in latency.STAGES},
             "total_ms": _stats(20.0 * b), "real_time_factor": b / 4, "latency_budget_ms": {"total_p50": 160 + 20 * b}}
            for b in (1, 2, 4)]
    report = {"benchmark": "engine frame step", "model": "m", "dtype": "float32", "hardware": "cpu", "torch": "2",
              "frames": 200, "runs": runs, "largest_real_time_batch": {"eager": 2, "graphs": 0}}
    table = latency.format_table(report)
    assert "{" not in table and "largest batch in real time (p99 < 80 ms): eager 2, graphs 0" in table
    assert latency.report_caveats(report) == []


def test_bench_latency_prints_a_table_not_a_dict(capsys):
    assert main(["bench", "latency", "--lm", str(LM_SMALL), "--lm-config", str(LM_SMALL_CONFIG), "--mimi",
                 str(MIMI_SMALL), "--mimi-config", str(MIMI_SMALL_CONFIG), "--device", "cpu", "--dtype", "float32",
                 "--batch-sizes", "1", "--frames", "2", "--warmup", "0", "--modes", "eager"]) == 0
    out = capsys.readouterr().out
    assert "{" not in out and "}" not in out  # the JSON only with --json
    assert "largest batch in real time (p99 < 80 ms): eager" in out


@pytest.mark.parametrize("column", ["TOR", "latency s", "freq", "JSD", "stop s", "response s", "answers", "early"])
def test_the_turn_table_explains_its_columns(column):
    report = {"tasks": {"smooth_turn_taking": {"samples": 2, "tor": 0.5, "latency": 0.4}}}
    table = format_table(report)
    header, legend = table.split("\n")[0], table.split("\n\n", 1)[1]
    assert column in header
    assert any(line.startswith(column) or f"{column}:" in line for line in legend.splitlines())
    assert "\n\n" not in format_table(report, legend=False)
