"""The engine's stages compiled with ``torch.compile`` (Inductor): fewer, fused kernels, the same tokens.

``Engine(..., compile=True)`` (``--compile``) replaces, on that engine only, the bound stage methods named in
``COMPILED_STAGES`` by a ``CompiledStage``: ``torch.compile`` of the engine's own bound method, made per engine,
never by changing the LM's or the codec's modules (their parameters are inputs of the compiled graph, read as they
are). What is compiled, and why only that (docs/benchmarks.md, "Compiled stages"):

* the depth stage (text sampling, the depth transformer's positions and the audio sampling, from the temporal
  output to the tokens): hundreds of small kernels per frame, whose state writes are small (the token cache, the
  step counters, the depth transformer's per-step cache);
* not the temporal stage: it writes one column of every layer's KV ring in place, and the ring (1.6 GB per 7B
  slot) is an input of the compiled graph (the lead's per-bucket attention changes it at the same time);
* not the codec stages (see ``COMPILED_STAGES``' comment).

Compilation happens at the stage's first call (the engine's first step, or the CUDA graph capture's warm-up on
CUDA, so the compiled stage is then captured in the engine's own graph: Inductor's mode is ``"default"`` or
``"max-autotune-no-cudagraphs"``, never its own CUDA graphs). The graph must come whole (``fullgraph=True``): a
stage either compiles before any of it runs or raises, and any failure to compile falls back to the eager stage
with one warning, as a failed graph capture does. The mode is given to ``torch.compile`` (scoped to that
compilation); no global setting of torch is changed.

Exactness: the compiled stage computes the same operations in fused kernels, so its floating-point values may
differ in the last bits; the tokens are the same under greedy decoding, and with sampling for the same seeds (the
random numbers are integer hashes of each slot's seed and step, identical in any kernel), as the tests check on
CPU (Inductor's C++ kernels) and on CUDA.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional, Union

import torch

log = logging.getLogger(__name__)

# The stages compiled when an engine is made with compile=True. The codec stages are not (yet): their convolution
# and transformer states are written in place as the stage runs, which a compiled graph returns as copies.
COMPILED_STAGES = ("depth",)
# Inductor's modes that leave CUDA graphs to the engine (its own graph per stage): True means "default".
MODES = ("default", "max-autotune-no-cudagraphs")


def compile_mode(compile: Union[bool, str, None]) -> Optional[str]:
    """The Inductor mode of an engine's ``compile`` argument: None (off) for False/None, "default" for True, or
    one of ``MODES`` by name."""
    if compile is None or compile is False:
        return None
    if compile is True:
        return "default"
    if isinstance(compile, str) and compile in MODES:
        return compile
    raise ValueError(f"compile must be True, False or one of {', '.join(MODES)}, got {compile!r} (Inductor's "
                     "CUDA graph modes are left out: the engine captures its own graphs)")


class CompiledStage:
    """One stage of one engine, compiled at its first call; the eager stage for good if that fails.

    ``compiled``: True once a compiled call has run, False after a failure (or before the first call);
    ``compile_seconds``: how long the first call took (tracing, Inductor and the C++ or Triton compilers)."""

    def __init__(self, name: str, stage: Callable, mode: str = "default"):
        self.name = name
        self.eager = stage
        self.mode = mode
        self.compiled = False
        self.compile_seconds: Optional[float] = None
        self.error: Optional[str] = None
        self._function: Optional[Callable] = torch.compile(stage, fullgraph=True, dynamic=False, mode=mode)

    def __call__(self, *args):
        if self._function is None:
            return self.eager(*args)
        first = not self.compiled
        start = time.perf_counter()
        try:
            out = self._function(*args)
        except Exception as e:  # noqa: BLE001 - any compile problem: keep serving, eagerly (one warning)
            self._function = None
            self.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            log.warning("compiling the %s stage failed (%s); running it eagerly", self.name, self.error)
            return self.eager(*args)
        if first:
            self.compiled = True
            self.compile_seconds = time.perf_counter() - start
            log.info("compiled the %s stage in %.1f s", self.name, self.compile_seconds)
        return out


def compile_stages(engine, mode: str) -> dict:
    """{name: CompiledStage} for ``COMPILED_STAGES`` of ``engine``, each put in place of the engine's own bound
    method (``engine._stage_<name>``, an attribute of that engine only)."""
    stages = {}
    for name in COMPILED_STAGES:
        attribute = f"_stage_{name}"
        stage = CompiledStage(name, getattr(engine, attribute), mode)
        setattr(engine, attribute, stage)
        stages[name] = stage
    return stages
