"""LM benchmark: time of one generator step per 80 ms frame (temporal + depth transformer, sampling included)."""

from __future__ import annotations

import time
from typing import List, Optional, Sequence, Tuple

import torch

from codec.eval.bench import BATCH_SIZES, FRAMES, RTF_NOTE, WARMUP, caveats
from codec.modules.quantized import SCB
from codec.utils.stats import describe_device, summary

from ..model.config import LMConfig
from ..model.generator import ring_capacity
from ..model.lm import MoshiLM
from ..runtime.checkpoints import SHIPPED_LM, SHIPPED_LM_CONFIG, lm_config_for
from ..runtime.quantization import check_quantize, describe
from ..serving.protocol import FRAME_RATE
from .variants import Variant, baseline_of


def lm_to_time(checkpoint: Optional[str] = None, config: "LMConfig | str | None" = None
               ) -> Tuple[Optional[str], "LMConfig | str"]:
    """(checkpoint, config) for ``bench_lm``: neither given, the shipped LM (what ``duplex serve`` runs); a
    checkpoint alone, with its config (beside it, or Moshi 7B's shapes for a file with its tensors:
    ``runtime.checkpoints.lm_config_for``, which raises ``ModelFilesError`` otherwise); a config (a preset or a
    JSON file), as given: random weights of that shape without a checkpoint."""
    if checkpoint is None and config is None:
        return SHIPPED_LM, SHIPPED_LM_CONFIG
    if config is None:
        return checkpoint, lm_config_for(checkpoint)
    return checkpoint, config


def _load(config: LMConfig, checkpoint: Optional[str], device: torch.device, dtype: torch.dtype,
          weights: str) -> MoshiLM:
    """The LM to time with ``weights`` ("none": as the file holds them; "int8", "fp8": quantized at load, or, for
    random weights, made in ``dtype`` and quantized: the same seed gives every variant the same weights)."""
    quantize = check_quantize(weights)
    if checkpoint:
        return MoshiLM.from_checkpoint(checkpoint, config, device=device, dtype=dtype, quantize=quantize)
    lm = MoshiLM.random(config, device=device, dtype=dtype)
    return lm.quantize_(quantize) if quantize else lm


def age_frames(age: Optional[float], capacity: int) -> int:
    """The LM step timed sessions start at: ``age`` seconds into a conversation, or (None) a full KV ring of
    ``capacity`` frames, the steady state of a long conversation, where every step attends the whole ring."""
    return capacity if age is None else int(round(age * FRAME_RATE))


@torch.no_grad()
def bench_lm(config: "LMConfig | str | None" = "small", checkpoint: Optional[str] = None, device: str = "cpu",
             dtype: torch.dtype = torch.float32, batch_sizes: Sequence[int] = BATCH_SIZES, frames: int = FRAMES,
             warmup: int = WARMUP, progress=None, variants: Optional[Sequence[Variant]] = None,
             age: Optional[float] = None) -> dict:
    """Time ``frames`` generator steps (after ``warmup``) per batch size and variant (``bench.variants``; default:
    the model as loaded). Every variant's model is loaded at once and their generators take turns step by step, so
    the comparison is made in the same seconds; each result has its ``speedup`` over the baseline variant.
    ``age``: the slots start that many seconds into their conversations (a step attends the KV ring written so
    far); None: at a full ring, the steady state."""
    dev = torch.device(device)
    cfg = LMConfig.load(config)  # a preset name or a JSON file
    variants = list(variants or [Variant()])
    formats = dict.fromkeys(v.weights for v in variants)
    lms = {weights: _load(cfg, checkpoint, dev, dtype, weights) for weights in formats}
    first = lms[variants[0].weights]
    params = sum(t.numel() for name, t in first.state_dict().items() if not name.endswith(SCB))

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    results = []
    for batch in batch_sizes:
        gens = [lms[v.weights].generator(batch, seed=batch, kv_dtype=v.kv_dtype) for v in variants]
        for gen in gens:
            gen.advance_to(age_frames(age, ring_capacity(gen.state)))
        user = torch.randint(0, cfg.card, (warmup + frames, batch, cfg.user_codebooks),
                             generator=torch.Generator().manual_seed(batch)).to(dev)
        step_ms: List[List[float]] = [[] for _ in variants]
        for i in range(warmup + frames):
            for gen, times in zip(gens, step_ms):
                sync()
                t0 = time.perf_counter()
                gen.step(user[i])
                sync()
                if i >= warmup:
                    times.append((time.perf_counter() - t0) * 1e3)
            if progress is not None:
                progress(batch, i + 1, warmup + frames)
        for variant, times in zip(variants, step_ms):
            lm = lms[variant.weights]
            step = summary(times)
            results.append({"variant": variant.name,
                            "quantization": describe(lm.quantization, variant.kv_dtype or lm.dtype, lm.dtype),
                            "batch_size": batch, "step_ms": step, "ms_per_stream": step["median"] / batch,
                            "real_time_factor": step["median"] / 80.0, "real_time": step["p99"] < 80.0})
        del gens
    baseline = baseline_of(variants).name
    base = {r["batch_size"]: r["step_ms"]["median"] for r in results if r["variant"] == baseline}
    for r in results:
        r["speedup"] = base[r["batch_size"]] / r["step_ms"]["median"]
    return {
        "benchmark": "LM generator step per frame (temporal + depth, sampling included)",
        "model": f"checkpoint {checkpoint}" if checkpoint else "random weights",
        "config": config if isinstance(config, str) else "custom",
        "parameters": params,
        "dtype": str(dtype).replace("torch.", ""),
        "variants": [{"name": v.name, "weights": v.weights, "kv": v.kv} for v in variants],
        "baseline": baseline,
        "device": str(dev),
        "hardware": describe_device(dev),
        "torch": torch.__version__,
        "frames": frames, "warmup": warmup, "age_s": age,  # None: a full KV ring
        "date": time.strftime("%Y-%m-%d"),
        "results": results,
    }


def format_table(report: dict) -> str:
    """The report of ``bench_lm`` as a person reads it: a header line, one row per batch size (and variant, with
    its speedup over the baseline when there are several), what RTF means."""
    several = len(report.get("variants", ())) > 1
    rows = [f"# {report['benchmark']} -- {report['model']}, config {report['config']} "
            f"({report['parameters'] / 1e6:.1f} M parameters), {report['dtype']}, {report['hardware']}, "
            f"torch {report['torch']}, slots " + ("with a full KV ring" if report.get("age_s") is None
                                                  else f"{report['age_s']:g} s in"),
            (f"{'variant':>12} " if several else "")
            + f"{'batch':>5} {'step ms':>8} {'p90 ms':>7} {'p99 ms':>7} {'ms/stream':>9}"
            + (f" {'vs ' + report['baseline']:>9}" if several else "") + f" {'RTF':>6}"]
    for r in report["results"]:
        s = r["step_ms"]
        rows.append((f"{r['variant']:>12} " if several else "")
                    + f"{r['batch_size']:>5} {s['median']:>8.2f} {s['p90']:>7.2f} {s['p99']:>7.2f} "
                    f"{r['ms_per_stream']:>9.2f}" + (f" {r['speedup']:>8.2f}x" if several else "")
                    + f" {r['real_time_factor']:>6.3f}")
    rows.append(RTF_NOTE)
    if several:
        rows.append(f"vs {report['baseline']}: its median over the variant's (above 1: faster); the variants took "
                    "turns step by step")
    return "\n".join(rows)


def report_caveats(report: dict) -> List[str]:
    """What the figures of a ``bench_lm`` report cannot mean (``codec.eval.bench.caveats``)."""
    return caveats(report["frames"], [(f"{r.get('variant', '')} batch {r['batch_size']}".strip(),
                                       r["step_ms"]["median"], r["step_ms"]["p90"]) for r in report["results"]])
