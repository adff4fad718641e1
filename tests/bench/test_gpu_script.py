"""benchmarks/gpu.sh's one table (benchmarks/summary.py), from reports shaped as a GPU run writes them and as a
CPU run does (the script itself runs end to end on the CPU in about 30 s: ``bash benchmarks/gpu.sh --cpu``)."""

import importlib.util
import json
from pathlib import Path

from duplex.bench import memory
from duplex.bench.lora import lora_memory

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


def _lora_run(weights, dtype, p50=None, peak=None):
    run = {"model": "moshi_7b", "weights": weights, "dtype": dtype, "rank": 64, "batch_size": 1,
           "segment_seconds": 10.0, "frames": 125, "computed": lora_memory("moshi_7b", weights, 64, 1, 125)}
    if p50 is None:
        return {**run, "error": "out of memory", "memory": {"peak_allocated_bytes": peak}}
    return {**run, "step_ms": {"p50": p50, "max": p50 + 20}, "frames_per_s": 125 / p50 * 1000, "loss_finite": True,
            "base_unchanged": True, "memory": {"peak_allocated_bytes": peak, "peak_reserved_bytes": (peak or 0) + 1e9}}


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
    (tmp_path / "lora_7b.json").write_text(json.dumps({"runs": [_lora_run("int8", "bfloat16", 500.0, 12.9e9),
                                                                _lora_run("fp8", "bfloat16", peak=139e9)]}))
    (tmp_path / "lora_status.txt").write_text("int8: ran; fp8: ran; none: timed out after 40 s\n")
    table = summary.table(tmp_path)
    assert "| batch 1 | batch 64 | batch 128 |" in table
    assert "| step, Moshi 7B shapes (random), CUDA graphs | int8 | bfloat16 | 8.5 ms (1.64x) | - | - |" in table
    assert "| none | bfloat16 | 13.9 ms | 42.5 ms | out of memory |" in table
    assert "peak memory, Moshi 7B shapes | none | bfloat16 | 17.0 / " in table
    assert "18 passed in 40.0s" in table and "not in this checkout" in table
    assert "batch 1 <= 9 ms with int8 or fp8 weights | | | met: best int8 8.5 ms" in table
    assert "64 sessions <= 30 ms with an fp8 ring | | | met: best int8+fp8kv 29.0 ms" in table
    assert "128 sessions fit | | | met: int8+fp8kv ran 128" in table
    assert ("| LoRA training step, Moshi 7B (random), rank 64, batch 1 x 10 s | int8 | | p50 500 ms, max 520 ms; "
            "250 frames/s; loss finite, base unchanged; peak 12.9 GB allocated (13.9 reserved) / computed 12.7 GB |"
            in table)
    assert "| fp8 | | out of memory (peak 139.0 GB; computed 12.7 GB) |" in table
    assert "| LoRA training step, Moshi 7B (random) | none | | timed out after 40 s |" in table
    assert "GPU only" not in table and "shipped model's shape (random), CPU" not in table
    assert "| step, Moshi 7B shapes (random), CUDA graphs, stages compiled (x: over uncompiled) | | | not run |" \
        in table


def test_the_compiled_rows_of_a_gpu_run(tmp_path):
    """bench latency --compile's runs beside the uncompiled ones: the speedup, the depth stage before and after, the
    compile time, or the eager fallback."""
    def staged(run, depth, compiled=None):
        run["stages_ms"] = {"depth": {"p50": depth}}
        if compiled is not None:
            run["compiled"] = compiled
        return run

    uncompiled = [staged(_run("none", "none", "bfloat16", 1, 13.9, 17), 4.35),
                  staged(_run("none", "none", "bfloat16", 64, 42.5, 117), 5.28)]
    compiled = [staged(_run("none", "none", "bfloat16", 1, 10.0, 17), 0.5, {"encode": 40.0, "depth": 95.2}),
                staged(_run("none", "none", "bfloat16", 64, 42.0, 117), 5.2,
                       {"encode": 41.0, "depth": "eager: BackendCompilerFailed: x"})]
    (tmp_path / "latency_7b.json").write_text(json.dumps(_latency(uncompiled)))
    (tmp_path / "latency_7b_compiled_1.json").write_text(json.dumps(_latency(compiled[:1])))
    (tmp_path / "latency_7b_compiled_64.json").write_text(json.dumps(_latency(compiled[1:])))
    (tmp_path / "device.txt").write_text("cuda\n")
    table = summary.table(tmp_path)
    assert ("| step, Moshi 7B shapes (random), CUDA graphs, stages compiled (x: over uncompiled) | none | bfloat16 "
            "| 10.0 ms (1.39x; depth 0.50 vs 4.35 ms; encode+depth compiled in 135 s) | 42.0 ms (1.01x; depth 5.20 vs "
            "5.28 ms; encode compiled in 41 s; depth eager: BackendCompilerFailed: x) |") in table


def test_the_rows_and_goals_of_sessions_30_s_in(tmp_path):
    """bench latency --age 30's runs (issue 29): their row, and the issue's two goals checked against the best
    unquantized step at batch 1 (any age, compiled or not) and the 64 sessions 30 s in."""
    (tmp_path / "latency_7b.json").write_text(json.dumps(_latency([_run("none", "none", "bfloat16", 1, 13.9, 17)])))
    (tmp_path / "latency_7b_30s.json").write_text(json.dumps(_latency(
        [_run("none", "none", "bfloat16", 1, 4.8, 17), _run("none", "none", "bfloat16", 64, 23.5, 30)])))
    (tmp_path / "device.txt").write_text("cuda\n")
    table = summary.table(tmp_path)
    assert ("| step, Moshi 7B shapes (random), CUDA graphs, sessions 30 s in (the ring written so far) | none | "
            "bfloat16 | 4.8 ms | 23.5 ms |") in table
    assert "| goal (H200, issue 29): batch 1 <= 5 ms (bfloat16) | | | met: 4.8 ms |" in table
    assert "| goal (H200, issue 29): 64 sessions 30 s in <= 21 ms | | | not met: 23.5 ms |" in table
    (tmp_path / "latency_7b_30s.json").write_text(json.dumps(_latency(  # an H100 holds 32 sessions (gpu.sh)
        [_run("none", "none", "bfloat16", 1, 4.8, 17), _run("none", "none", "bfloat16", 32, 15.5, 30)])))
    assert "64 sessions 30 s in <= 21 ms | | | not measured: this GPU held 32 sessions (15.5 ms at 32) |" in \
        summary.table(tmp_path)


def test_the_rows_of_kyutai_s_frame_step_in_the_same_call(tmp_path):
    """--quick's side-by-side (benchmarks/kyutai_gpu.py's report): Kyutai's frame step per batch, then its time over
    ours, full ring and 30 s in; a batch Kyutai's run lost (out of memory) is a dash, not a ratio."""
    (tmp_path / "latency_7b.json").write_text(json.dumps(_latency(
        [_run("none", "none", "bfloat16", 1, 10.0, 17), _run("none", "none", "bfloat16", 64, 40.0, 117)])))
    (tmp_path / "latency_7b_30s.json").write_text(json.dumps(_latency([_run("none", "none", "bfloat16", 1, 8.0, 17)])))
    (tmp_path / "kyutai_7b.json").write_text(json.dumps(
        {"implementation": "moshi 0.2.13", "runs": [{"batch_size": 1, "total_ms": {"p50": 16.0, "p99": 17.0}},
                                                    {"batch_size": 64, "error": "OutOfMemoryError()"}]}))
    (tmp_path / "device.txt").write_text("cuda\n")
    table = summary.table(tmp_path)
    assert "| Kyutai's frame step (moshi 0.2.13, its CUDA graphs), same call | | | 16.0 ms | - |" in table
    assert "| Kyutai's time / ours (full ring): speedup of ours | | | 1.60x | - |" in table
    assert "| Kyutai's time / ours (30 s in): speedup of ours | | | 2.00x | - |" in table


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
    assert ("| step, Moshi 7B shapes (random), CUDA graphs, stages compiled (x: over uncompiled) | | | GPU only "
            "| GPU only | GPU only | GPU only |") in table
    assert "fidelity (duplex bench fidelity) | | | not run" in table
    assert "| LoRA training step, Moshi 7B (random) | | | GPU only | GPU only | GPU only | GPU only |" in table
    assert "| LoRA training step, shipped model's shape (random), CPU | | | not run |" in table
    cpu_run = {**_lora_run("int8", "float32", 104.0), "model": "default", "segment_seconds": 2.0}
    del cpu_run["memory"]
    (tmp_path / "lora_default.json").write_text(json.dumps({"runs": [cpu_run]}))
    assert ("| LoRA training step, shipped model's shape (random), CPU, rank 64, batch 1 x 2 s | int8 | | p50 104 ms, "
            "max 124 ms; 1202 frames/s; loss finite, base unchanged; memory GPU only (computed 12.7 GB) |"
            in summary.table(tmp_path))


def _fdb_run(samples, hours, wall, load, hardware="NVIDIA H200"):
    audio = hours * 3600
    return {"run": {"samples": samples, "skipped": 0, "audio_seconds": audio, "wall_seconds": wall,
                    "x_real_time": audio / wall, "real_time_factor": wall / audio, "engine_steps": 5700, "slots": 64,
                    "slots_used": {"mean": 63.2, "max": 64}, "load_seconds": load, "hardware": hardware,
                    "torch": "2.11", "date": "2026-12-05"}}


def test_the_rows_of_fdb_at_scale(tmp_path):
    """Issue 29: FDB v1 at scale (bench turns run's JSON), its goal checked; a run the time limit stopped says how
    far it got; a run of the FDB rows alone (--fdb-only) still heads the table with its hardware."""
    (tmp_path / "device.txt").write_text("cuda\n")
    (tmp_path / "fdb_7b.json").write_text(json.dumps(_fdb_run(730, 8.0, 240.0, 25.0)))
    (tmp_path / "fdb_status.txt").write_text("ran\n")
    table = summary.table(tmp_path)
    assert table.startswith("duplex GPU run -- 2026-12-05, NVIDIA H200, torch 2.11;")
    assert ("| FDB v1 at scale (bench turns run), Moshi 7B shapes (random), CUDA graphs | | | 730 samples, 8.00 h of "
            "audio in 240.0 s (+ 25.0 s loading): 120.0x real time, RTF 0.0083; 5700 engine steps, slots used 63.2 "
            "mean / 64 max of 64 |" in table)
    assert "| goal (H200): FDB v1 with 7B shapes end to end in under 5 minutes | | | met: 265 s (run and loading) |" \
        in table
    (tmp_path / "fdb_7b.json").write_text(json.dumps(_fdb_run(100, 1.1, 290.0, 25.0)))
    assert "not met: 315 s (run and loading), but over 100 samples / 1.10 h, not FDB v1's size" \
        in summary.table(tmp_path)
    (tmp_path / "fdb_7b.json").unlink()
    (tmp_path / "fdb_status.txt").write_text("timed out after 330 s (600/730 samples, 95.1x real time, ETA 49 s)\n")
    table = summary.table(tmp_path)
    assert "CUDA graphs | | | timed out after 330 s (600/730 samples, 95.1x real time, ETA 49 s) |" in table
    assert "under 5 minutes | | | not met: timed out after 330 s" in table
    (tmp_path / "fdb_status.txt").write_text("timed out after 240 s (500/730 samples, 95.1x real time, ETA 80 s)\n")
    assert "| not measured: timed out after 240 s (500/730 samples, 95.1x real time, ETA 80 s), a limit under the " \
        "goal's 300 s |" in summary.table(tmp_path)
    (tmp_path / "device.txt").write_text("cpu\n")
    (tmp_path / "fdb_default.json").write_text(json.dumps(_fdb_run(2, 0.003, 5.0, 2.0, "AMD EPYC, 2 threads")))
    table = summary.table(tmp_path)
    assert ("| FDB at scale (bench turns run), CPU dry run, shipped model | | | 2 samples, 10.8 s of audio in 5.0 s "
            "(+ 2.0 s loading): 2.16x real time, RTF 0.4630;" in table)
    assert "under 5 minutes | | | not measured (no GPU) |" in table
