"""Matrix products for the streaming hot path on CPU.

At batch 1 the codec reads far more weight bytes than it does arithmetic (~300 MB of fp32 weights per 80 ms
frame), so what matters is how fast a kernel streams a weight matrix for a handful of input rows. Measured on a
2-core AMD EPYC (Zen 4) with PyTorch 2.11 (docs/benchmarks.md):

* PyTorch's default ``F.linear`` (MKL) streams weights at 1-6 GB/s for 1-32 rows;
* oneDNN's inference linear (the op Inductor emits for CPU linears) at ~16-27 GB/s for 1-8 rows; past 8 rows it
  drops 3-5x for inner dimensions <= 2048, where blocks of 8 rows are 2-4x faster than one call;
* XNNPACK (bundled with PyTorch) reaches ~23-32 GB/s in isolation, but its own thread pool competes with the
  OpenMP threads of every other op: inside the codec the whole frame became 15x slower (5x slower still with
  OMP_WAIT_POLICY=PASSIVE). So it is not used.

The layout of the weight matters too: for matrices at least twice as wide (out) as deep (in), oneDNN streams a
column-major copy (``weight.t()`` of a contiguous [in, out] tensor) up to 1.8x faster for one row (Moshi's text
head: 2.2 ms instead of 4.0 ms), and equally fast or faster past 16 rows; for square or narrow matrices the
row-major layout is faster. ``use_wide_weight_layout`` re-lays such weights in place (same values and shape).

oneDNN's op has no autograd: anything that needs gradients, every non-CPU or non-float32 tensor, and code being
traced by torch.compile (Inductor chooses its own CPU kernels) goes through ``F.linear``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .cpu_paths import cpu_fast_path

_ONEDNN_LINEAR = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
if not torch.backends.mkldnn.is_available():
    _ONEDNN_LINEAR = None

# Between _ONEDNN_ROW_BLOCK and _ONEDNN_BLOCKED_MAX_ROWS rows (the weight-bound regime; above it the product is
# compute-bound and one call is efficient), inner dimensions up to _ONEDNN_BLOCKED_INNER run in blocks of rows.
_ONEDNN_ROW_BLOCK = 8
_ONEDNN_BLOCKED_MAX_ROWS = 64
_ONEDNN_BLOCKED_INNER = 2048


def fast_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x @ weight.T + bias`` for ``weight`` [out, in] (a transposed view is fine)."""
    if (_ONEDNN_LINEAR is not None and not torch.compiler.is_compiling() and cpu_fast_path(x)
            and x.dtype == torch.float32
            and weight.dtype == torch.float32
            and not (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad))):
        rows = x.numel() // x.shape[-1]
        if not (_ONEDNN_ROW_BLOCK < rows <= _ONEDNN_BLOCKED_MAX_ROWS and weight.shape[1] <= _ONEDNN_BLOCKED_INNER):
            return _ONEDNN_LINEAR(x, weight, bias, "none", [], "")
        flat = x.reshape(rows, x.shape[-1])
        blocks = [_ONEDNN_LINEAR(block, weight, bias, "none", [], "") for block in flat.split(_ONEDNN_ROW_BLOCK)]
        return torch.cat(blocks).view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


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
