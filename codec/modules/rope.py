"""Interleaved rotary position embedding (docs/kyutai-compat.md §2.4.3), shared by Mimi and the Moshi temporal
transformer.

Pairs ``(x[2i], x[2i+1])`` of each head vector are rotated by ``theta = position * max_period^(-2i/d)``; the angle
and the rotation are computed in float32 and the result is cast back to the input dtype.
"""

from __future__ import annotations

import math

import torch


def rope_frequencies(head_dim: int, max_period: float, device=None) -> torch.Tensor:
    """float32 [head_dim / 2]: ``exp(-ln(max_period) * 2i / head_dim)``."""
    i = torch.arange(head_dim // 2, device=device, dtype=torch.float32)
    return torch.exp(i * (-math.log(max_period) * 2 / head_dim))


def rope_tables(positions: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """complex64 [B, 1, T, d/2]: ``exp(i * theta)`` for integer or float ``positions`` [B, T]."""
    angles = (positions.float()[..., None] * freqs)[:, None]
    return torch.complex(torch.cos(angles), torch.sin(angles))


def apply_rope(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B, H, T, d] by ``rope_tables``: each pair ``(x[2i], x[2i+1])`` read as the complex number
    ``x[2i] + i x[2i+1]`` and multiplied by ``exp(i theta)``, i.e. ``(re cos - im sin, re sin + im cos)``. One
    complex product instead of a dozen real operations per call (it runs twice per layer and step)."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rotation).flatten(-2).to(x.dtype)
