"""Quantization variants timed side by side in one run (``bench lm`` / ``bench latency`` ``--variants``, and
``--quantize`` / ``--kv-dtype`` for one): what runs is what the report says. Timings are never asserted."""

import json

import pytest
import torch
from helpers import LM_SMALL, LM_SMALL_CONFIG, MIMI_SMALL, MIMI_SMALL_CONFIG

from duplex.bench import latency, lm
from duplex.bench.variants import Variant, baseline_of, parse_variant, variants_of
from duplex.cli import main
from duplex.runtime.checkpoints import ModelFiles

SMALL = ["--lm", str(LM_SMALL), "--lm-config", str(LM_SMALL_CONFIG), "--mimi", str(MIMI_SMALL), "--mimi-config",
         str(MIMI_SMALL_CONFIG), "--device", "cpu"]


@pytest.mark.parametrize("name, weights, kv", [("none", "none", "auto"), ("int8", "int8", "auto"),
                                               ("fp8kv", "none", "fp8"), ("int8+fp8kv", "int8", "fp8"),
                                               ("fp8kv+fp8", "fp8", "fp8"), ("bfloat16kv", "none", "bfloat16")])
def test_variant_names(name, weights, kv):
    variant = parse_variant(name)
    assert (variant.weights, variant.kv) == (weights, kv)
    assert parse_variant(variant.name) == variant  # the canonical name reads back
    assert variant.kv_dtype == {"auto": None, "fp8": torch.float8_e4m3fn, "bfloat16": torch.bfloat16}[kv]


@pytest.mark.parametrize("name", ["int9", "int8+fp8", "fp8kv+fp8kv", "", "int8+"])
def test_bad_variant_names(name):
    with pytest.raises(ValueError, match="expected a weight format"):
        parse_variant(name)


def test_the_variants_to_time_and_their_baseline():
    assert variants_of(None, "int8", "fp8") == [Variant("int8", "fp8")]
    assert variants_of(["int8", "none", "int8"]) == [Variant("int8"), Variant()]
    assert baseline_of([Variant("int8"), Variant()]) == Variant()  # the unquantized one wherever it is
    assert baseline_of([Variant("int8"), Variant("fp8")]) == Variant("int8")


def test_bench_lm_times_the_variants_in_one_run():
    report = lm.bench_lm(config=str(LM_SMALL_CONFIG), batch_sizes=[2], frames=2, warmup=1,
                         variants=[Variant(), Variant("int8", "fp8"), Variant("fp8")])
    assert report["baseline"] == "none"
    runs = {r["variant"]: r for r in report["results"]}
    assert runs["none"]["quantization"] == {"weights": "none", "kv": "float32", "compute": "float32"}
    assert runs["int8+fp8kv"]["quantization"] == {"weights": "int8", "kv": "fp8", "compute": "float32"}
    assert runs["fp8"]["quantization"]["weights"] == "fp8"
    assert runs["none"]["speedup"] == 1.0
    for r in report["results"]:
        assert r["speedup"] == pytest.approx(runs["none"]["step_ms"]["median"] / r["step_ms"]["median"])
    assert "vs none" in lm.format_table(report) and "int8+fp8kv" in lm.format_table(report)


def test_bench_latency_times_the_variants_frame_by_frame():
    files = ModelFiles.for_lm(LM_SMALL, mimi=MIMI_SMALL, lm_config=LM_SMALL_CONFIG, mimi_config=MIMI_SMALL_CONFIG)
    report = latency.bench_latency(files=files, batch_sizes=[1, 2], modes=["eager"], frames=2, warmup=1,
                                   variants=[Variant(), Variant("int8"), Variant("none", "fp8")])
    assert report["interleaved"] and report["baseline"] == "none"
    assert [(r["batch_size"], r["variant"]) for r in report["runs"]] == [
        (1, "none"), (1, "int8"), (1, "fp8kv"), (2, "none"), (2, "int8"), (2, "fp8kv")]
    assert [r["quantization"]["weights"] for r in report["runs"][:3]] == ["none", "int8", "none"]
    assert [r["quantization"]["kv"] for r in report["runs"][:3]] == ["float32", "float32", "fp8"]
    assert all("memory" not in r for r in report["runs"])  # measured on CUDA only
    assert set(report["largest_real_time_batch"]) == {"none eager", "int8 eager", "fp8kv eager"}
    table = latency.format_table(report)
    assert "vs none" in table and "timed in turns" in table


def test_bench_latency_one_after_another_gives_the_same_report():
    files = ModelFiles.for_lm(LM_SMALL, mimi=MIMI_SMALL, lm_config=LM_SMALL_CONFIG, mimi_config=MIMI_SMALL_CONFIG)
    report = latency.bench_latency(files=files, batch_sizes=[1], modes=["eager"], frames=1, warmup=0,
                                   variants=[Variant("fp8"), Variant()], interleave=False)
    assert not report["interleaved"] and report["baseline"] == "none"
    assert [r["variant"] for r in report["runs"]] == ["fp8", "none"]  # in the order asked
    assert report["runs"][0]["quantization"]["weights"] == "fp8"


def test_the_commands_take_the_options(tmp_path, capsys):
    out = tmp_path / "latency.json"
    assert main(["bench", "latency", *SMALL, "--batch-sizes", "1", "--frames", "1", "--warmup", "0",
                 "--quantize", "int8", "--kv-dtype", "fp8", "--json", str(out)]) == 0
    (run,) = json.loads(out.read_text())["runs"]
    assert run["quantization"] == {"weights": "int8", "kv": "fp8", "compute": "float32"}
    assert main(["bench", "lm", "--config", str(LM_SMALL_CONFIG), "--batch-sizes", "1", "--frames", "1",
                 "--warmup", "0", "--variants", "none", "fp8kv", "--json", str(out)]) == 0
    assert [r["variant"] for r in json.loads(out.read_text())["results"]] == ["none", "fp8kv"]
    capsys.readouterr()
    assert main(["bench", "lm", "--variants", "int8", "--quantize", "int8"]) == 2
    assert "leave out --quantize and --kv-dtype" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "latency", "--variants", "int9"])
    assert "variant 'int9'" in capsys.readouterr().err
