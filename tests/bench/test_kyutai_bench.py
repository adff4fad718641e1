"""``duplex bench kyutai``: ours and Kyutai's step in turns, one report (the figures themselves are not tested)."""

import builtins
import json

import pytest
import torch
from helpers import LM_SMALL_CONFIG

from duplex.bench import kyutai


def test_side_by_side_report(tmp_path, capsys):
    pytest.importorskip("moshi")
    from duplex.cli import main

    out, png = tmp_path / "k.json", tmp_path / "k.png"
    state = torch.random.get_rng_state()
    assert main(["bench", "kyutai", "--parts", "lm", "--lm-config", str(LM_SMALL_CONFIG), "--frames", "2",
                 "--warmup", "1", "--batch-sizes", "1", "2", "--age", "3", "--json", str(out), "--plot", str(png)]) == 0
    assert torch.equal(torch.random.get_rng_state(), state)  # Kyutai's weights drawn without touching the caller's RNG
    report = json.loads(out.read_text())
    assert [(r["part"], r["batch_size"]) for r in report["results"]] == [("lm", 1), ("lm", 2)]
    assert all(r["ratio"] > 0 and len(r["ours_ms"]) and len(r["kyutai_ms"]) for r in report["results"])
    assert report["lm_age_s"] == 3 and report["moshi"]
    assert png.stat().st_size > 1000
    table = capsys.readouterr().out
    assert "Kyutai ms" in table and "3 s in" in table
    # Which of our kernels ran: our own CPU kernels where this machine built them (codec/kernels), else PyTorch's.
    from codec.kernels import cpu_kernels

    assert report["cpu_kernels"] == (cpu_kernels() is not None)
    assert ("our own CPU kernels" if report["cpu_kernels"] else "PyTorch's kernels only") in table


def test_without_kyutai_one_line(monkeypatch):
    real_import = builtins.__import__

    def no_moshi(name, *args, **kwargs):
        if name.startswith("moshi"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_moshi)
    with pytest.raises(kyutai.KyutaiMissing, match="pip install moshi"):
        kyutai.bench_kyutai(parts=["lm"], lm_config=str(LM_SMALL_CONFIG), frames=1, warmup=0)


def test_compiled_stages_in_the_table():
    """Each compiled stage of a row is named with its compile time, or as eager with the reason it failed."""
    ms = {"median": 10.0, "p99": 12.0}
    report = {"benchmark": "b", "hardware": "cpu", "torch": "t", "moshi": "m", "date": "d", "lm_config": "small",
              "lm_age_s": None, "lm_compiled": True, "codec_compiled": True, "codec": "official Mimi shape",
              "results": [
                  {"part": "lm", "batch_size": 1, "ours_ms": ms, "kyutai_ms": ms, "ratio": 1.0,
                   "compiled": {"depth": {"compiled": True, "seconds": 61.2, "error": None}}},
                  {"part": "codec", "batch_size": 8, "ours_ms": ms, "kyutai_ms": ms, "ratio": 1.0,
                   "compiled": {"encode": {"compiled": True, "seconds": 120.4, "error": None},
                                "decode": {"compiled": False, "seconds": None, "error": "Unsupported: x"}}}]}
    table = kyutai.format_table(report)
    assert "depth compiled in 61 s" in table
    assert "encode compiled in 120 s  decode NOT compiled (Unsupported: x): eager" in table
    assert "our depth stage compiled" in table and "our encoder and decoder compiled" in table
