"""Matrix products for the streaming hot path on CPU.

At batch 1 the codec and the LM read far more weight bytes than they do arithmetic, so what matters is how fast a
kernel streams a weight matrix for a handful of input rows. On CPU, oneDNN's inference linear (the op Inductor
emits for CPU linears) streams weights several times faster than PyTorch's default ``F.linear`` for 1-8 rows, and
in blocks of 8 rows past that; XNNPACK is faster still in isolation, but its own thread pool competes with the
OpenMP threads of every other op, so it is not used. For matrices at least twice as wide (out) as deep (in), a
column-major copy streams faster for a few rows; ``use_wide_weight_layout`` re-lays such weights in place (same
values and shape). The measurements: docs/benchmarks.md ("Where the time goes").

oneDNN's op has no autograd: anything that needs gradients, every non-CPU or non-float32 tensor, and code being
traced by torch.compile (Inductor chooses its own CPU kernels) goes through ``F.linear``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..kernels import gemv_op
from .cpu_paths import cpu_fast_path

_ONEDNN_LINEAR = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
if not torch.backends.mkldnn.is_available():
    _ONEDNN_LINEAR = None

# Between _ONEDNN_ROW_BLOCK and _ONEDNN_BLOCKED_MAX_ROWS rows (the weight-bound regime; above it the product is
# compute-bound and one call is efficient), inner dimensions up to _ONEDNN_BLOCKED_INNER run in blocks of rows, for
# a row-major weight only: a column-major one (the wide layout, a transposed convolution's matrix) is faster in one
# call (2026-12-05, the 2-vCPU EPYC, each product alone; 16 rows: 1024 -> 8192 2.18 ms in one call against 3.04 in
# blocks, 512 -> 2048 0.18 against 0.23; 32 rows: 0.34 against 0.46).
_ONEDNN_ROW_BLOCK = 8
_ONEDNN_BLOCKED_MAX_ROWS = 64
_ONEDNN_BLOCKED_INNER = 2048


def _no_gradient(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return not (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad))


def fast_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x @ weight.T + bias`` for ``weight`` [out, in] (a transposed view is fine; a ``QuantizedWeight`` or adapted weight view too)."""
    if not isinstance(weight, torch.Tensor):  # a view: quantized codes, adapters (codec.modules.quantized)
        return weight.linear(x, bias)
    # One row against a row-major weight: our own loop (codec/kernels), eager and in a compiled graph alike (the same
    # condition on both sides, so a compiled stage multiplies as the eager one does; under tracing the thread's
    # generic_kernels() switch is read once, when the graph is made).
    if (bias is None and cpu_fast_path(x) and x.dtype == weight.dtype == torch.float32 and x.numel() == x.shape[-1]
            and x.stride(-1) == 1 and weight.stride(1) == 1 and _no_gradient(x, weight)):
        gemv = gemv_op()
        if gemv is not None:
            return gemv(x, weight)
    if (_ONEDNN_LINEAR is not None and not torch.compiler.is_compiling() and cpu_fast_path(x)
            and x.dtype == torch.float32
            and weight.dtype == torch.float32
            and _no_gradient(x, weight)):
        rows = x.numel() // x.shape[-1]
        if not (_ONEDNN_ROW_BLOCK < rows <= _ONEDNN_BLOCKED_MAX_ROWS and weight.shape[1] <= _ONEDNN_BLOCKED_INNER
                and weight.stride(1) == 1):
            return _ONEDNN_LINEAR(x, weight, bias, "none", [], "")
        flat = x.reshape(rows, x.shape[-1])
        blocks = [_ONEDNN_LINEAR(block, weight, bias, "none", [], "") for block in flat.split(_ONEDNN_ROW_BLOCK)]
        return torch.cat(blocks).view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


def own_kernels_for(weight: torch.Tensor) -> bool:
    """Whether one-row products against ``weight`` (a CPU float32 weight, row-major) take our own kernel
    (``codec.kernels``: built and loaded on this machine). It streams a row-major weight faster than oneDNN streams
    either layout, so an inference layout then keeps the weights row-major, except the largest (the LM's text head,
    which oneDNN reads column-major at the memory's speed)."""
    return (isinstance(weight, torch.Tensor) and weight.device.type == "cpu" and weight.dtype == torch.float32
            and gemv_op() is not None)


def use_wide_weight_layout(weights) -> int:
    """Store each CPU float32 weight [out, in] with ``out >= 2 * in`` column-major, in place (values, shape and
    the Parameter object are unchanged; only the strides). Idempotent; returns how many weights were re-laid.

    Only for weights used through ``fast_linear`` (an embedding table read by row must stay row-major); anything
    that serialises them must call ``.contiguous()`` first (safetensors refuses strided tensors)."""
    changed = 0
    for weight in weights:
        if (weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.dim() == 2
                and weight.shape[0] >= 2 * weight.shape[1] and weight.is_contiguous()):
            weight.data = weight.data.t().contiguous().t()
            changed += 1
    return changed
