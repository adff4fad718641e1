"""Streaming codec benchmark: time per 80 ms frame of encode + decode, per batch size.

Random weights are fine for timing (the work per frame does not depend on the values); pass a checkpoint to time
real weights. Inputs are low-level noise so no activation saturates or turns denormal.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

import torch

from ..model import ConfigLike, Mimi
from ..utils.stats import describe_device, summary


@torch.no_grad()
def bench_codec(config: ConfigLike = None, checkpoint: Optional[str] = None, device: str = "cpu",
                batch_sizes: Sequence[int] = (1, 8), frames: int = 50, warmup: int = 5,
                num_codebooks: int = 8, progress=None) -> dict:
    """Time ``frames`` streaming frames (after ``warmup``) for each batch size; returns a JSON-ready dict."""
    dev = torch.device(device)
    if checkpoint:
        model = Mimi.from_checkpoint(checkpoint, config=config, num_codebooks=num_codebooks, device=dev)
    else:
        model = Mimi.random(config, num_codebooks=num_codebooks, device=dev)
    frame_ms = 1000.0 / model.frame_rate

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    results = []
    for batch in batch_sizes:
        encoder_state = model.new_encoder_state(batch)
        decoder_state = model.new_decoder_state(batch)
        generator = torch.Generator().manual_seed(batch)
        enc_ms, dec_ms, total_ms = [], [], []
        for i in range(warmup + frames):
            frame = (0.05 * torch.randn(batch, 1, model.frame_size, generator=generator)).to(dev)
            sync()
            t0 = time.perf_counter()
            codes = model.encode_step(frame, encoder_state)
            sync()
            t1 = time.perf_counter()
            model.decode_step(codes, decoder_state)
            sync()
            t2 = time.perf_counter()
            if i >= warmup:
                enc_ms.append((t1 - t0) * 1e3)
                dec_ms.append((t2 - t1) * 1e3)
                total_ms.append((t2 - t0) * 1e3)
            if progress is not None:
                progress(batch, i + 1, warmup + frames)
        total = summary(total_ms)
        results.append({
            "batch_size": batch,
            "encode_ms": summary(enc_ms),
            "decode_ms": summary(dec_ms),
            "total_ms": total,
            "ms_per_stream": total["median"] / batch,
            "real_time_factor": total["median"] / frame_ms,
            "real_time": total["p99"] < frame_ms,
        })
    return {
        "benchmark": "codec streaming encode + decode per frame",
        "model": "checkpoint " + str(checkpoint) if checkpoint else "random weights",
        "config": "official Mimi" if config is None else str(config) if not isinstance(config, dict) else "dict",
        "num_codebooks": num_codebooks,
        "frame_ms": frame_ms,
        "device": str(dev),
        "hardware": describe_device(dev),
        "torch": torch.__version__,
        "frames": frames,
        "warmup": warmup,
        "date": time.strftime("%Y-%m-%d"),
        "results": results,
    }
