"""``duplex bench kyutai``: our step and Kyutai's (its ``moshi`` package), side by side in one run.

Speeds on a shared machine drift by 25% within an hour, so a ratio is only meaningful between figures taken in the
same minutes. Here both implementations are built once, with the same shapes and random weights of their own
(the speed depends on the shapes only), and they take turns frame by frame: one step of ours, one of Kyutai's,
and so on, after a few untimed steps of each. Two parts, timed separately:

* ``lm``: one generator step per frame (temporal transformer, text and audio sampling, the depth transformer),
  ours ``LMGenerator.step`` against Kyutai's ``LMGen.step`` inside ``LMGen.streaming``, the same keyword config
  (``LMConfig.to_dict``), float32, Kyutai's defaults for sampling on both sides, its ``torch.compile`` off (as its
  own deployment runs it on a CPU). Kyutai's step attends its whole KV ring at any age; ours attends what the
  sessions have written, so the ratio depends on the sessions' ``age`` (None: a full ring, the steady state of a
  long conversation, where both read everything).
* ``codec``: one streaming encode + decode of an 80 ms frame, ours ``Mimi.encode_step``/``decode_step`` against
  Kyutai's ``MimiModel.encode``/``decode`` inside ``MimiModel.streaming``, the official Mimi shape, 8 codebooks.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, List, Optional, Sequence

import torch

from codec import Mimi
from codec.kernels import cpu_kernels
from codec.utils.stats import describe_device, summary

from ..errors import DuplexError
from ..model.config import LMConfig
from ..model.generator import depth_step
from ..model.lm import MoshiLM
from ..runtime.compiled import CompiledStage
from ..serving.protocol import FRAME_SIZE
from .lm import age_frames

PARTS = ("lm", "codec")
LM_CONFIG = "small"  # the shape docs/benchmarks.md has compared since the first CPU figures
BATCH_SIZES = (1,)
FRAMES = 40
WARMUP = 5
SEED = 20261205
CODEBOOKS = 8


class KyutaiMissing(DuplexError):
    """Kyutai's ``moshi`` package is not installed."""


def _moshi():
    try:
        from moshi.models import loaders  # noqa: PLC0415 - Kyutai's package is optional (a benchmark's reference)
        from moshi.models.lm import LMGen  # noqa: PLC0415
        from moshi.utils.compile import no_compile  # noqa: PLC0415
    except ImportError as e:
        raise KyutaiMissing(f"duplex bench kyutai needs Kyutai's moshi package (pip install moshi==0.2.13): {e}") \
            from None
    return loaders, LMGen, no_compile


def _lm_pair(config: str, batch: int, age: Optional[float], compile: bool = False) -> tuple:
    """(our step, Kyutai's step, what closes Kyutai's streaming context, [our compiled depth stage] or None) for the
    LM; ``compile``: our depth stage compiled, as ``--compile depth`` runs it in the engine (compiled in the untimed
    steps)."""
    loaders, LMGen, _ = _moshi()
    cfg = LMConfig.load(config)
    ours = MoshiLM.random(cfg, seed=SEED).generator(batch, seed=SEED)
    ours.advance_to(age_frames(age, cfg.context))
    stages = [CompiledStage("depth", depth_step)] if compile else None
    if stages:
        ours.depth_step = stages[0]
    with torch.random.fork_rng(devices=[]):  # Kyutai's modules draw their weights from the global generator
        torch.manual_seed(SEED)
        theirs = LMGen(loaders.get_moshi_lm(None, lm_kwargs=cfg.to_dict(), device="cpu", dtype=torch.float32))
    stack = contextlib.ExitStack()
    stack.enter_context(theirs.streaming(batch))
    codes = torch.randint(0, cfg.card, (batch, cfg.user_codebooks, 1), generator=torch.Generator().manual_seed(SEED))
    return (lambda: ours.step(codes[:, :, 0])), (lambda: theirs.step(codes)), stack, stages


def _codec_pair(batch: int, compile: bool = False) -> tuple:
    """(our step, Kyutai's step, what closes Kyutai's streaming context, our compiled stages or None) for the codec;
    ``compile``: our encoder and decoder steps compiled, as ``--compile encode decode`` runs them in the engine."""
    loaders, _, _ = _moshi()
    ours = Mimi.random(None, num_codebooks=CODEBOOKS, seed=SEED)
    encoder, decoder = ours.new_encoder_state(batch), ours.new_decoder_state(batch)
    encode, decode = ours.encode_step, ours.decode_step
    stages = None
    if compile:
        encode, decode = CompiledStage("encode", encode), CompiledStage("decode", decode)
        stages = [encode, decode]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        theirs = loaders.get_mimi(None, device="cpu", num_codebooks=CODEBOOKS)
    stack = contextlib.ExitStack()
    stack.enter_context(theirs.streaming(batch))
    pcm = 0.05 * torch.randn(batch, 1, FRAME_SIZE, generator=torch.Generator().manual_seed(SEED))

    def our_step():
        decode(encode(pcm, encoder), decoder)

    def their_step():
        theirs.decode(theirs.encode(pcm))

    return our_step, their_step, stack, stages


def _in_turns(ours: Callable, theirs: Callable, frames: int, warmup: int, progress=None, label="") -> tuple:
    """Milliseconds of each step, the two taking turns (ours first in even rounds, Kyutai's first in odd ones, so
    neither always runs right after the other's cache traffic)."""
    times: List[List[float]] = [[], []]
    for i in range(warmup + frames):
        order = ((0, ours), (1, theirs)) if i % 2 == 0 else ((1, theirs), (0, ours))
        for index, step in order:
            t0 = time.perf_counter()
            step()
            if i >= warmup:
                times[index].append((time.perf_counter() - t0) * 1e3)
        if progress is not None:
            progress(label, i + 1, warmup + frames)
    return times[0], times[1]


@torch.no_grad()
def bench_kyutai(parts: Sequence[str] = PARTS, lm_config: str = LM_CONFIG, batch_sizes: Sequence[int] = BATCH_SIZES,
                 frames: int = FRAMES, warmup: int = WARMUP, age: Optional[float] = None, progress=None,
                 compile: bool = False) -> dict:
    """Time our step and Kyutai's in turns (module docstring) for each part and batch size, on the CPU.
    ``compile``: our LM's depth stage and our codec's encoder and decoder steps compiled (``torch.compile``, as the
    engine's ``--compile`` runs them; Kyutai's run as its CPU deployment runs them, uncompiled), compiled during the
    untimed steps (give at least one)."""
    _, _, no_compile = _moshi()
    import moshi  # noqa: PLC0415 - its version, for the report (imported by _moshi already)

    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown part {unknown[0]!r}: {', '.join(PARTS)}")
    rows = []
    # Kyutai's sampling draws from torch's global generator: the caller's random state is given back unchanged.
    with no_compile(), torch.random.fork_rng(devices=[]):
        for part in parts:
            for batch in batch_sizes:
                ours, theirs, stack, stages = (_lm_pair(lm_config, batch, age, compile) if part == "lm"
                                               else _codec_pair(batch, compile))
                with stack:
                    ours_ms, theirs_ms = _in_turns(ours, theirs, frames, warmup, progress, f"{part} batch {batch}")
                a, b = summary(ours_ms), summary(theirs_ms)
                rows.append({"part": part, "batch_size": batch, "ours_ms": a, "kyutai_ms": b,
                             "ratio": b["median"] / a["median"]})
                if stages:  # whether each compile worked, and what it cost (not in the timed steps)
                    rows[-1]["compiled"] = {stage.name: {"compiled": stage.compiled, "seconds": stage.compile_seconds,
                                                         "error": stage.error} for stage in stages}
    return {
        "benchmark": "ours and Kyutai's implementation, side by side (steps in turns)",
        "lm_config": lm_config, "lm_age_s": age,  # None: a full KV ring
        "lm_compiled": compile,  # our depth stage compiled
        "codec_compiled": compile,  # our encoder and decoder steps compiled
        "codec": "official Mimi shape, 8 codebooks",
        "cpu_kernels": cpu_kernels() is not None,  # our own CPU kernels (codec/kernels) built and used
        "dtype": "float32", "device": "cpu", "hardware": describe_device(torch.device("cpu")),
        "torch": torch.__version__, "moshi": moshi.__version__,
        "frames": frames, "warmup": warmup, "date": time.strftime("%Y-%m-%d %H:%M"),
        "results": rows,
    }


def format_table(report: dict) -> str:
    age = report["lm_age_s"]
    lines = [f"# {report['benchmark']} -- {report['hardware']}, torch {report['torch']}, moshi {report['moshi']}, "
             f"{report['date']}",
             f"# lm: config {report['lm_config']}, sessions "
             + ("with a full KV ring" if age is None else f"{age:g} s in")
             + (", our depth stage compiled" if report.get("lm_compiled") else "") + f"; codec: {report['codec']}"
             + (", our encoder and decoder compiled" if report.get("codec_compiled") else "")
             + {True: "; our own CPU kernels", False: "; PyTorch's kernels only"}.get(report.get("cpu_kernels"), ""),
             f"{'part':>5} {'batch':>5} {'ours ms':>8} {'p99':>7} {'Kyutai ms':>9} {'p99':>7} {'ratio':>6}"]
    for r in report["results"]:
        a, b = r["ours_ms"], r["kyutai_ms"]
        note = "".join(f"  {name} compiled in {c['seconds']:.0f} s" if c["compiled"]
                       else f"  {name} NOT compiled ({c['error']}): eager"
                       for name, c in r.get("compiled", {}).items())
        lines.append(f"{r['part']:>5} {r['batch_size']:>5} {a['median']:>8.2f} {a['p99']:>7.2f} "
                     f"{b['median']:>9.2f} {b['p99']:>7.2f} {r['ratio']:>5.2f}x{note}")
    lines.append("ms: medians per 80 ms frame; ratio: Kyutai's median over ours (above 1: ours is faster)")
    return "\n".join(lines)


def plot(report: dict, path: str) -> None:
    """Bars: ours and Kyutai's median per part and batch size, the ratio written above each pair."""
    import matplotlib  # noqa: PLC0415 - plotting only when asked

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows = report["results"]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(rows), 3.6))
    x = range(len(rows))
    ours = [r["ours_ms"]["median"] for r in rows]
    theirs = [r["kyutai_ms"]["median"] for r in rows]
    ax.bar([i - 0.2 for i in x], ours, 0.4, label="duplex")
    ax.bar([i + 0.2 for i in x], theirs, 0.4, label="Kyutai (moshi)")
    for i, r in enumerate(rows):
        ax.text(i, max(ours[i], theirs[i]) * 1.02, f"{r['ratio']:.2f}x", ha="center", va="bottom")
    ax.set_xticks(list(x), [f"{r['part']}\nbatch {r['batch_size']}" for r in rows])
    ax.set_ylabel("ms per 80 ms frame (median)")
    age = report["lm_age_s"]
    ax.set_title(report.get("title") or f"side by side, {report['date']}; LM "
                 + ("full ring" if age is None else f"{age:g} s in"), fontsize=9)
    ax.legend(fontsize=8)
    ax.set_ylim(0, max(theirs + ours) * 1.2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
