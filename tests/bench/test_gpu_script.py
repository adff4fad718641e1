"""benchmarks/gpu.sh's one table (benchmarks/summary.py), from reports shaped as a GPU run writes them and as a
CPU run does (the script itself runs end to end on the CPU in about 30 s: ``bash benchmarks/gpu.sh --cpu``)."""

import importlib.util
import json
from pathlib import Path

from duplex.bench import memory

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gpu_summary", ROOT / "benchmarks" / "summary.py")
summary = importlib.util.module_from_spec(spec)
spec.loader.exec_module(summary)


def _run(variant, weights, kv, batch, ms=None, peak=None):
    run = {"variant": variant, "mode": "graphs", "batch_size": batch,
           "quantization": {"weights": weights, "kv": kv, "compute": "bfloat16"}}
    if ms is None:
        run["error"] = "out of memory"
        return run
    run["total_ms"] = {"p50": ms, "p90": ms, "p99": ms}
    run["memory"] = {"allocated_after_build_bytes": peak, "peak_bytes": peak}
    return run


def _latency(runs):
    return {"date": "2026-12-05", "hardware": "NVIDIA H200", "torch": "2.11", "baseline": "none", "runs": runs}


def test_the_table_of_a_gpu_run(tmp_path):
    gib = memory.GIB
    runs = [_run("none", "none", "bfloat16", 1, 13.9, 17 * gib), _run("int8", "int8", "bfloat16", 1, 8.5, 9 * gib),
            _run("int8+fp8kv", "int8", "fp8", 64, 29.0, 60 * gib), _run("none", "none", "bfloat16", 64, 42.5, 117 * gib),
            _run("none", "none", "bfloat16", 128), _run("int8+fp8kv", "int8", "fp8", 128, 50.0, 110 * gib)]
    (tmp_path / "latency_7b.json").write_text(json.dumps(_latency(runs)))
    report = memory.memory_table("shipped", formats=["none", "int8"], rings=["auto", "fp8"])
    memory.from_latency(report, _latency(runs))
    (tmp_path / "memory_7b.json").write_text(json.dumps(report))
    (tmp_path / "device.txt").write_text("cuda\n")
    (tmp_path / "gpu_tests.txt").write_text("....\n18 passed in 40.0s\n")
    (tmp_path / "fidelity_status.txt").write_text("not in this checkout\n")
    table = summary.table(tmp_path)
    assert "| batch 1 | batch 64 | batch 128 |" in table
    assert "| step, Moshi 7B shapes (random), CUDA graphs | int8 | bfloat16 | 8.5 ms (1.64x) | - | - |" in table
    assert "| none | bfloat16 | 13.9 ms | 42.5 ms | out of memory |" in table
    assert "peak memory, Moshi 7B shapes | none | bfloat16 | 17.0 / " in table
    assert "18 passed in 40.0s" in table and "not in this checkout" in table
    assert "batch 1 <= 9 ms with int8 or fp8 weights | | | met: best int8 8.5 ms" in table
    assert "64 sessions <= 30 ms with an fp8 ring | | | met: best int8+fp8kv 29.0 ms" in table
    assert "128 sessions fit | | | met: int8+fp8kv ran 128" in table
    assert "GPU only" not in table


def test_the_table_of_a_cpu_run_marks_the_gpu_cells(tmp_path):
    runs = [_run("none", "none", "float32", 1, 30.0), _run("int8", "int8", "float32", 1, 20.0)]
    for r in runs:
        del r["memory"]
        r["mode"] = "eager"
    (tmp_path / "latency_default.json").write_text(json.dumps(_latency(runs)))
    (tmp_path / "device.txt").write_text("cpu\n")
    table = summary.table(tmp_path)
    assert "| step, Moshi 7B shapes (random) | | | GPU only | GPU only | GPU only | GPU only |" in table
    assert "| step, shipped model, eager, CPU | int8 | float32 | 20.0 ms (1.50x) | GPU only | GPU only | GPU only |" \
        in table
    assert "GPU tests (tests/runtime/test_gpu.py) | | | GPU only (no CUDA here)" in table
    assert "goal (H200): 128 sessions fit | | | not measured (no GPU)" in table
    assert "fidelity (duplex bench fidelity) | | | not run" in table
