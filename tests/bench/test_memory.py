"""The memory table's arithmetic (``duplex bench memory``): the computed bytes equal what real models and engines
hold, on the small fixture model and the shipped model, for every weight format and both ring dtypes."""

import json

import pytest
import torch
from helpers import LM_SMALL, LM_SMALL_CONFIG, MIMI_SMALL_CONFIG, make_engine

from duplex.bench import memory
from duplex.cli import main
from duplex.model.lm import MoshiLM
from duplex.runtime.checkpoints import ModelFiles

FP8 = torch.float8_e4m3fn


def _nbytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def _ring_tensors(engine):
    return [t for layer in engine.generator_state["layers"].values() for t in layer.values()]


@pytest.mark.parametrize("kv", [None, FP8])
def test_computed_ring_bytes_equal_the_engines_rings_small_model(kv):
    engine = make_engine(3, kv_dtype=kv)
    assert _nbytes(_ring_tensors(engine)) == 3 * memory.ring_bytes(engine.lm, kv)
    if kv == FP8:  # codes of one byte plus one float32 scale per vector (the compute dtype on the CPU)
        assert memory.ring_bytes(engine.lm, kv) < memory.ring_bytes(engine.lm, None) / 2


@pytest.mark.parametrize("kv", [None, FP8])
def test_computed_ring_bytes_equal_the_engines_rings_shipped_model(kv):
    from duplex.runtime.engine import Engine

    lm, mimi, _ = ModelFiles.default().load("cpu", torch.float32)
    engine = Engine(lm, mimi, slots=2, kv_dtype=kv)
    assert _nbytes(_ring_tensors(engine)) == 2 * memory.ring_bytes(lm, kv)


@pytest.mark.parametrize("weights", ["none", "int8", "fp8"])
def test_computed_weight_bytes_equal_a_quantized_models_tensors(weights):
    lm = MoshiLM.from_checkpoint(LM_SMALL, config=LM_SMALL_CONFIG, dtype=torch.float32)
    computed = memory.weight_bytes(lm, weights, "cpu")
    if weights != "none":
        lm.quantize_(weights)
    assert computed["file"] == _nbytes(lm.state_dict().values())  # what a saved file holds
    assert computed["resident"] == _nbytes(lm.parameters()) + _nbytes(lm.buffers())  # kernel scales too


def test_weight_bytes_of_the_shipped_model_in_bfloat16():
    lm = ModelFiles.default().load_lm("cpu", torch.bfloat16)
    computed = memory.weight_bytes(lm, "int8", "cuda")  # scales in bfloat16, as on a GPU
    lm.quantize_("int8")
    assert computed["resident"] == _nbytes(lm.parameters()) + _nbytes(lm.buffers())


@pytest.mark.parametrize("weights, kv", [("none", None), ("int8", FP8)])
def test_meta_engines_count_what_a_real_engine_holds(weights, kv):
    """Fixed + slots x per-session state, computed from meta engines of one and two slots, is what an engine of
    three slots allocates (every state tensor, by category)."""
    lm, mimi, _ = memory.meta_models(str(LM_SMALL_CONFIG), torch.float32, codec_config=str(MIMI_SMALL_CONFIG))
    if weights != "none":
        memory.quantize_meta(lm, weights, "cpu")
    fixed, per = memory.engine_state(lm, mimi, kv)
    real = memory.state_bytes(make_engine(3, quantize=None if weights == "none" else weights, kv_dtype=kv))
    assert real == {k: fixed.get(k, 0) + 3 * per.get(k, 0) for k in real}
    assert per["kv ring"] == memory.ring_bytes(lm, kv)
    assert {"codec encoder", "codec decoder", "token cache"} <= set(per) and "depth input weights" in fixed


def test_the_7b_figures():
    """Moshi 7B: a bfloat16 ring of 2 x 32 layers x 3001 positions x 4096 x 2 bytes (the issue's 1.57 GB); the fp8
    ring keeps a byte per value and a bfloat16 scale per head vector; int8 weights take about half of bfloat16's."""
    bf16 = memory.memory_row("moshi_7b", "none", "auto")
    int8 = memory.memory_row("moshi_7b", "int8", "fp8")
    assert bf16["session_bytes"]["kv ring"] == 2 * 32 * 3001 * 4096 * 2 == 1_573_388_288
    assert int8["session_bytes"]["kv ring"] == 2 * 32 * 3001 * 32 * (128 + 2)
    assert 0.48 < int8["weight_bytes"]["resident"] / bf16["weight_bytes"]["resident"] < 0.53
    assert bf16["ring"] == "bfloat16" and int8["ring"] == "fp8"
    # the goal "128 sessions fit" on the H200 with int8 weights and the fp8 ring; not with bfloat16 everything
    assert int8["sessions_fit"]["141 GB"] >= 128 > bf16["sessions_fit"]["141 GB"]
    assert bf16["sessions_fit"]["16 GB"] == 0 < int8["sessions_fit"]["16 GB"]  # a 7B on a 16 GB card: quantized


def test_sessions_fit():
    assert memory.sessions_fit(100, 30, 7, 10) == 8  # (100 - 10 - 30) // 7
    assert memory.sessions_fit(100, 95, 7, 10) == 0


def _fake_latency(row):
    return {"runs": [
        {"mode": "graphs", "batch_size": 4, "quantization": {"weights": row["weights"], "kv": row["ring"]},
         "memory": {"allocated_after_build_bytes": 1000, "peak_bytes": 3 * memory.GIB}},
        {"mode": "graphs", "batch_size": 128, "quantization": {"weights": row["weights"], "kv": row["ring"]},
         "error": "out of memory"},
        {"mode": "graphs", "batch_size": 4, "quantization": {"weights": "fp8", "kv": "fp8"}}]}


def test_a_latency_reports_memory_is_checked_against_the_computed_bytes():
    report = memory.memory_table("shipped", formats=["none"], rings=["auto"])
    assert "not measured (no GPU)" in memory.format_table(report)
    measured = memory.from_latency(report, _fake_latency(report["rows"][0]))
    assert [(m["batch_size"], m.get("error")) for m in measured] == [(4, None), (128, "out of memory")]
    assert measured[0]["computed_bytes"] == report["rows"][0]["base_bytes"] + 4 * report["rows"][0]["per_session_bytes"]
    table = memory.format_table(report)
    assert "peak 3.00 GiB" in table and "out of memory" in table


def test_bench_memory_command(tmp_path, capsys):
    out = tmp_path / "memory.json"
    assert main(["bench", "memory", "--config", "shipped", "--device", "cpu", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [(r["weights"], r["ring"]) for r in report["rows"]] == [
        ("none", "bfloat16"), ("none", "fp8"), ("int8", "bfloat16"), ("int8", "fp8"), ("fp8", "bfloat16"),
        ("fp8", "fp8")]
    assert set(report["rows"][0]["sessions_fit"]) == {"16 GB", "24 GB", "48 GB", "80 GB", "141 GB"}
    assert "not measured (no GPU)" in capsys.readouterr().out
    assert main(["bench", "memory", "--config", "shipped", "--measured", str(tmp_path / "none.json")]) == 2
    assert "not a bench latency report" in capsys.readouterr().err
