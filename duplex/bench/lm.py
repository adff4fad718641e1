"""LM benchmark: time of one generator step per 80 ms frame (temporal + depth transformer, sampling included)."""

from __future__ import annotations

import time
from typing import Optional, Sequence

import torch

from codec.utils.stats import describe_device, summary

from ..model.config import LMConfig
from ..model.lm import MoshiLM


@torch.no_grad()
def bench_lm(config: "LMConfig | str | None" = "small", checkpoint: Optional[str] = None, device: str = "cpu",
             dtype: torch.dtype = torch.float32, batch_sizes: Sequence[int] = (1, 8), frames: int = 50,
             warmup: int = 5, progress=None) -> dict:
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
