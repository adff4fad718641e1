"""``duplex bench lora`` (issue 26, deliverable 5): LoRA training steps on a random model, the report's fields, the
random quantized models it builds directly, and the memory it computes for a 7B (docs/training.md's figures). On
the CPU with the shipped model's shape: behaviour, never speed."""

import json
import math

import torch

from duplex.bench.lora import adapter_parameters, lora_memory, random_lm
from duplex.cli import main
from duplex.model.config import LMConfig

STEPS = ["--model", "default", "--device", "cpu", "--steps", "2", "--warmup", "1", "--segment-seconds", "1",
         "--threads", "1"]


def test_bench_lora_runs_steps_and_reports_them(tmp_path, capsys):
    out = tmp_path / "lora.json"
    assert main(["bench", "lora", *STEPS, "--json", str(out)]) == 0
    assert main(["bench", "lora", *STEPS, "--quantize", "fp8", "--lora-rank", "4", "--batch-size", "2", "--json",
                 str(out), "--append"]) == 0
    printed = capsys.readouterr().out
    assert "step: p50" in printed and "memory: not measured (no CUDA); computed" in printed
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and len(report["command"]) == 2
    first, second = report["runs"]
    assert (first["weights"], first["rank"], first["batch_size"], first["frames"]) == ("int8", 64, 1, 12)
    assert (second["weights"], second["rank"], second["batch_size"]) == ("fp8", 4, 2)
    cfg = LMConfig.default()
    for run, rank in ((first, 64), (second, 4)):
        assert run["model"] == "default" and run["gradient_checkpointing"] and "error" not in run
        assert len(run["step_ms"]["all"]) == 2 and run["step_ms"]["max"] >= run["step_ms"]["p50"] > 0
        assert run["frames_per_s"] > 0 and run["audio_seconds_per_s"] > 0
        assert len(run["losses"]) == 3 and run["loss_finite"] and all(math.isfinite(v) for v in run["losses"])
        assert run["base_unchanged"] and run["adapter_trained"]
        assert run["trainable_parameters"] == adapter_parameters(cfg, rank)
        assert "memory" not in run  # CUDA only
        c = run["computed"]
        assert c["allocated"] == c["base"] + c["adapter_state"] + c["transient"] + c["activations"]
        assert c["adapter_state"] == 16 * adapter_parameters(cfg, rank)


def test_append_needs_a_report(tmp_path, capsys):
    assert main(["bench", "lora", *STEPS, "--append"]) == 2
    assert "--append adds this run" in capsys.readouterr().err
    bad = tmp_path / "other.json"
    bad.write_text("{}")
    assert main(["bench", "lora", *STEPS, "--json", str(bad), "--append"]) == 2
    assert "not a bench lora report" in capsys.readouterr().err


def test_random_quantized_models_are_built_in_their_form():
    cfg = LMConfig.default()
    codes = torch.randint(0, cfg.card, (1, 17, 6), generator=torch.Generator().manual_seed(0))
    codes[:, 0] %= cfg.text_card
    for weights in ("int8", "fp8", "none"):
        lm = random_lm(cfg, weights, "cpu", torch.float32, seed=1)
        assert lm.quantization == weights and lm.dtype == torch.float32
        with torch.no_grad():
            out = lm.forward_train(codes)
        logits = out.logits[out.mask]
        assert torch.isfinite(logits).all() and 0.1 < logits.std() < 10  # activations O(1)
    again = random_lm(cfg, "int8", "cpu", torch.float32, seed=1)
    assert torch.equal(again.text_linear.weight, random_lm(cfg, "int8", "cpu", torch.float32, seed=1).text_linear
                       .weight)


def test_the_computed_7b_memory_is_docs_training_md():
    """docs/training.md, "Memory (Moshi 7B), computed from the shapes": the figures this benchmark sets beside its
    measurements."""
    gb = 1e9
    int8 = lora_memory("moshi_7b", "int8", 64, batch_size=1, frames=125)
    bf16 = lora_memory("moshi_7b", "none", 64, batch_size=1, frames=125)
    assert round(int8["base"] / gb, 1) == 8.0 and round(bf16["base"] / gb, 1) == 15.4
    assert round(int8["adapter_state"] / gb, 1) == 3.1 and adapter_parameters(LMConfig.moshi_7b(), 1) == 3_030_272
    assert round(int8["transient"] / gb, 1) == 1.4 and bf16["transient"] == 0
    assert round(int8["activation_bytes_per_frame"] / 1e6, 1) == 1.0  # 12.5 MB per second of audio
    assert round(int8["card"] / gb, 1) == 14.2 and int8["context"] == 1.5 * gb
