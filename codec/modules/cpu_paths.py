"""Whether a tensor takes the CPU-specific fast paths of the streaming hot path.

On CPU a few operations run through hand-picked kernels that stream weights faster (oneDNN products, convolutions
as matrix products, transposed convolutions through ``fold``, an ``exp``-based ELU, ring attention as two batched
products with an additive mask). On every other device the same computations run through the generic PyTorch
operators. ``generic_kernels()`` makes CPU take the generic operators too, so the arithmetic that GPUs run can be
checked against the reference vectors on a machine without one (tests/codec/test_generic_kernels.py).

The switch is per thread (it must not change what other threads of the process compute): code that steps a model
on another thread, as the voice server does on its engine thread, must enter ``generic_kernels()`` there.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch

_state = threading.local()


def cpu_fast_path(t: torch.Tensor) -> bool:
    """True for a CPU tensor, unless this thread is inside ``generic_kernels()``."""
    return t.device.type == "cpu" and not getattr(_state, "generic", False)


@contextlib.contextmanager
def generic_kernels() -> Iterator[None]:
    """Within this block (in this thread), CPU runs the generic operators that accelerators run."""
    saved = getattr(_state, "generic", False)
    _state.generic = True
    try:
        yield
    finally:
        _state.generic = saved
