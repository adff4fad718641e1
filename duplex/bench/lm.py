"""LM benchmark: time of one generator step per 80 ms frame (temporal + depth transformer, sampling included)."""

from __future__ import annotations

import time
from typing import List, Optional, Sequence, Tuple

import torch

from codec.eval.bench import BATCH_SIZES, FRAMES, RTF_NOTE, WARMUP, caveats
from codec.utils.stats import describe_device, summary

from ..model.config import LMConfig
from ..model.lm import MoshiLM
from ..runtime.checkpoints import SHIPPED_LM, SHIPPED_LM_CONFIG, lm_config_for


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


@torch.no_grad()
def bench_lm(config: "LMConfig | str | None" = "small", checkpoint: Optional[str] = None, device: str = "cpu",
             dtype: torch.dtype = torch.float32, batch_sizes: Sequence[int] = BATCH_SIZES, frames: int = FRAMES,
             warmup: int = WARMUP, progress=None) -> dict:
    dev = torch.device(device)
    cfg = LMConfig.load(config)  # a preset name or a JSON file
    if checkpoint:
        lm = MoshiLM.from_checkpoint(checkpoint, cfg, device=dev, dtype=dtype)
    else:
        lm = MoshiLM.random(cfg, device=dev, dtype=dtype)
    params = sum(p.numel() for p in lm.parameters())

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    results = []
    for batch in batch_sizes:
        gen = lm.generator(batch, seed=batch)
        user = torch.randint(0, cfg.card, (warmup + frames, batch, cfg.user_codebooks),
                             generator=torch.Generator().manual_seed(batch)).to(dev)
        step_ms = []
        for i in range(warmup + frames):
            sync()
            t0 = time.perf_counter()
            gen.step(user[i])
            sync()
            if i >= warmup:
                step_ms.append((time.perf_counter() - t0) * 1e3)
            if progress is not None:
                progress(batch, i + 1, warmup + frames)
        step = summary(step_ms)
        results.append({"batch_size": batch, "step_ms": step, "ms_per_stream": step["median"] / batch,
                        "real_time_factor": step["median"] / 80.0, "real_time": step["p99"] < 80.0})
    return {
        "benchmark": "LM generator step per frame (temporal + depth, sampling included)",
        "model": f"checkpoint {checkpoint}" if checkpoint else "random weights",
        "config": config if isinstance(config, str) else "custom",
        "parameters": params,
        "dtype": str(dtype).replace("torch.", ""),
        "device": str(dev),
        "hardware": describe_device(dev),
        "torch": torch.__version__,
        "frames": frames, "warmup": warmup,
        "date": time.strftime("%Y-%m-%d"),
        "results": results,
    }


def format_table(report: dict) -> str:
    """The report of ``bench_lm`` as a person reads it: a header line, one row per batch size, what RTF means."""
    rows = [f"# {report['benchmark']} -- {report['model']}, config {report['config']} "
            f"({report['parameters'] / 1e6:.1f} M parameters), {report['dtype']}, {report['hardware']}, "
            f"torch {report['torch']}",
            f"{'batch':>5} {'step ms':>8} {'p90 ms':>7} {'p99 ms':>7} {'ms/stream':>9} {'RTF':>6}"]
    for r in report["results"]:
        s = r["step_ms"]
        rows.append(f"{r['batch_size']:>5} {s['median']:>8.2f} {s['p90']:>7.2f} {s['p99']:>7.2f} "
                    f"{r['ms_per_stream']:>9.2f} {r['real_time_factor']:>6.3f}")
    rows.append(RTF_NOTE)
    return "\n".join(rows)


def report_caveats(report: dict) -> List[str]:
    """What the figures of a ``bench_lm`` report cannot mean (``codec.eval.bench.caveats``)."""
    return caveats(report["frames"], [(f"batch {r['batch_size']}", r["step_ms"]["median"], r["step_ms"]["p90"])
                                      for r in report["results"]])
