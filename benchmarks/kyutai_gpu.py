"""Kyutai's implementation (its ``moshi`` package, 0.2.13) timed as its own server runs a frame, for the GPU run's
side-by-side row (benchmarks/gpu.sh): Mimi encode -> ``LMGen.step`` -> Mimi decode -> the PCM on the host, inside
``mimi.streaming(B)`` and ``gen.streaming(B)``, its CUDA graphs on (its default on CUDA), random weights of its own
(the speed depends on the shapes only), ``torch.cuda.synchronize`` and ``time.perf_counter`` around each frame.

Kyutai's step attends its whole KV ring at any age, so one figure per batch size stands for every age.

    python benchmarks/kyutai_gpu.py --shape 7b --batch-sizes 1 64 --json OUT.json
    (--shape small: our `small` preset, float32, the CPU bar's shape; runs on the CPU too, for checking the script)

A batch that fails (out of memory) is a row with its error; a missing ``moshi`` package is a one-line error.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from duplex.bench import kyutai
from duplex.model.config import LMConfig

PRESETS = {"7b": "moshi_7b", "small": "small"}  # --shape -> our LM preset (the same shape on both sides)


def _models(shape: str, device: str):
    """Kyutai's Mimi (official shape, 8 codebooks) and LM (our preset's keyword config, as ``duplex bench kyutai``
    builds it), random weights, built by its own loaders."""
    try:
        loaders, LMGen, _ = kyutai._moshi()
    except kyutai.KyutaiMissing as e:
        sys.exit(f"error: {e}")
    mimi = loaders.get_mimi(None, device=device, num_codebooks=8).eval()
    dtype = torch.bfloat16 if shape == "7b" else torch.float32
    lm = loaders.get_moshi_lm(None, lm_kwargs=LMConfig.load(PRESETS[shape]).to_dict(), device=device,
                              dtype=dtype).eval()
    # Kyutai's server's sampling settings
    return mimi, LMGen(lm, temp=0.8, temp_text=0.7, top_k=250, top_k_text=25), lm


def _time(mimi, gen, batch: int, device: str, frames: int, warmup: int) -> list:
    times = []
    with torch.no_grad(), mimi.streaming(batch), gen.streaming(batch):
        for i in range(warmup + frames):
            pcm = (torch.randn(batch, 1, 1920) * 0.05).to(device)
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            tokens = gen.step(mimi.encode(pcm))
            if tokens is not None:  # None while its acoustic delay fills
                mimi.decode(tokens[:, 1:]).cpu()
            elif device == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=("7b", "small"), default="7b")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--json", help="write the report here")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    start = time.perf_counter()
    mimi, gen, lm = _models(args.shape, device)
    import moshi  # noqa: PLC0415

    report = {"implementation": f"moshi {getattr(moshi, '__version__', '?')}", "shape": args.shape,
              "device": device, "hardware": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
              "lm_parameters": sum(p.numel() for p in lm.parameters()),
              "build_s": round(time.perf_counter() - start, 1), "runs": []}
    for batch in args.batch_sizes:
        run = {"batch_size": batch}
        try:
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            ts = _time(mimi, gen, batch, device, args.frames, args.warmup)
            run["total_ms"] = {"p50": statistics.median(ts), "p99": ts[min(len(ts) - 1, int(0.99 * len(ts)))],
                               "max": ts[-1]}
            if device == "cuda":
                run["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        except Exception as e:  # noqa: BLE001 - e.g. out of memory at a large batch: a row, not the end of the run
            run["error"] = repr(e)[:300]
        if device == "cuda":
            torch.cuda.empty_cache()
        report["runs"].append(run)
        print(json.dumps(run), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
