"""The engine's stages compiled with ``torch.compile`` (Inductor): fewer, fused kernels, the same tokens.

``Engine(..., compile=True)`` (``--compile``) replaces, on that engine only, the bound methods of the stages it
names (``compile_plan``: the codec's encoder, the depth stage, the codec's decoder; all three for True) by a
``CompiledStage``: ``torch.compile`` of the engine's own bound method, made per engine, never by changing the LM's
or the codec's modules (their parameters are inputs of the compiled graph, read as they are). What is compiled, and
why only that (docs/benchmarks.md, "Compiled stages"):

* the depth stage (text sampling, the depth transformer's positions and the audio sampling, from the temporal
  output to the tokens): a few hundred small operations per frame, whose state writes are small (the token cache,
  the step counters, the depth transformer's per-step cache);
* the codec's encoder and decoder stages (SEANet, the streaming transformer, the quantizer): their KV rings are
  written in place through ``index_put_`` when compiled (``codec.modules.transformer.Attention.step``), which
  Inductor keeps in place; a ``scatter_`` into a graph input would come back as a copy of the whole ring per step;
* not the temporal stage: its rings are the big state (1.6 GB per 7B slot), and its attention is being changed to
  read only what was written (issue 29's second deliverable).

Compilation happens at a stage's first call (the engine's first step, or the CUDA graph capture's warm-up on CUDA,
so the compiled stage is then captured in the engine's own graph: Inductor's mode is ``"default"`` or
``"max-autotune-no-cudagraphs"``, never its own CUDA graphs; half-precision values are rounded between fused
operations as eager rounds them: ``emulate_precision_casts``). The graph must come whole (``fullgraph=True``): a
stage either compiles before any of it runs or raises, and a stage that fails to compile runs eagerly from then on,
after one warning, as a failed graph capture does. The options are given to ``torch.compile`` (scoped to that
compilation); no global setting of torch is changed.

Exactness: a compiled stage computes the same operations in fused kernels, so its floating-point values may differ
in the last bits; the tokens are the same under greedy decoding, and with sampling for the same seeds (the random
numbers are integer hashes of each slot's seed and step, identical in any kernel), as the tests check on CPU
(Inductor's C++ kernels, the depth stage) and on CUDA (every stage, inside the engine's graphs).
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterable, Optional, Tuple, Union

import torch

from codec.kernels import cpu_kernels

log = logging.getLogger(__name__)

CompileOption = Union[bool, str, Iterable[str], None]

# The stages an engine can compile: the codec's encoder, the depth stage, the codec's decoder.
STAGES = ("encode", "depth", "decode")
# Inductor's modes that leave CUDA graphs to the engine (its own graph per stage).
MODES = ("default", "max-autotune-no-cudagraphs")


def compile_plan(compile: CompileOption) -> Tuple[Optional[str], Tuple[str, ...]]:
    """(Inductor mode, stages) of an engine's ``compile`` argument: False or None, nothing; True, every stage of
    ``STAGES`` in the "default" mode; else names, each a stage of ``STAGES`` or one mode of ``MODES`` (no stage
    named: all of them), e.g. ``"depth"``, ``("encode", "decode")``, ``"max-autotune-no-cudagraphs"``."""
    if compile is None or compile is False:
        return None, ()
    if compile is True:
        return "default", STAGES
    names = [compile] if isinstance(compile, str) else list(compile)
    for name in names:
        if name not in STAGES + MODES:
            raise ValueError(f"compile: {name!r} is neither a stage ({', '.join(STAGES)}) nor a mode "
                             f"({', '.join(MODES)}; Inductor's CUDA graph modes are left out: the engine captures "
                             "its own graphs)")
    modes = [n for n in names if n in MODES]
    if len(modes) > 1:
        raise ValueError(f"compile: one mode at most, got {', '.join(modes)}")
    stages = tuple(n for n in STAGES if n in names) or STAGES
    return (modes[0] if modes else "default"), stages


class CompiledStage:
    """One stage of one engine, compiled at its first call; the eager stage for good if that fails.

    ``compiled``: True once a compiled call has run, False after a failure (or before the first call);
    ``compile_seconds``: how long the first call took (tracing, Inductor and the C++ or Triton compilers)."""

    def __init__(self, name: str, stage: Callable, mode: str = "default"):
        cpu_kernels()  # loaded (or found missing) before tracing: the graph then takes the eager step's kernels
        self.name = name
        self.eager = stage
        self.mode = mode
        self.compiled = False
        self.compile_seconds: Optional[float] = None
        self.error: Optional[str] = None
        # The mode's own options, and half-precision values rounded between fused operations as eager rounds them
        # (bfloat16 on GPUs; no effect in float32), so that the logits stay the eager ones as far as can be.
        options = {**torch._inductor.list_mode_options(mode), "emulate_precision_casts": True}
        self._function: Optional[Callable] = torch.compile(stage, fullgraph=True, dynamic=False, options=options)

    def __call__(self, *args):
        if self._function is None:
            return self.eager(*args)
        first = not self.compiled
        start = time.perf_counter()
        try:
            out = self._function(*args)
        except Exception as e:  # any compile problem: keep serving, eagerly (one warning)
            self._function = None
            self.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            log.warning("compiling the %s stage failed (%s); running it eagerly", self.name, self.error)
            return self.eager(*args)
        if first:
            self.compiled = True
            self.compile_seconds = time.perf_counter() - start
            log.info("compiled the %s stage in %.1f s", self.name, self.compile_seconds)
        return out


def compile_stages(engine, compile: CompileOption) -> dict:
    """{name: CompiledStage} for the stages ``compile`` names (``compile_plan``), each put in place of the engine's
    own bound method (``engine._stage_<name>``, an attribute of that engine only)."""
    mode, names = compile_plan(compile)
    stages = {}
    for name in names:
        attribute = f"_stage_{name}"
        stage = CompiledStage(name, getattr(engine, attribute), mode)
        setattr(engine, attribute, stage)
        stages[name] = stage
    return stages


def warm_up(engine) -> float:
    """Compile (and on CUDA capture) now, with one step in which no session takes part: every slot is inactive, so
    no session's state changes (as in the graph capture's warm-up; only the spare ring slots that inactive rows
    write, never read, are written), and the step's timing is dropped. A server calls this
    before it takes sessions, so that no session's first frame waits minutes. Returns the seconds it took."""
    start = time.perf_counter()
    engine.step({})
    for times in engine.timer.history.values():  # this step's timing only
        if times:
            times.pop()
    return time.perf_counter() - start
