"""Interleaved rotary position embedding (spec section 2.4.3), shared by Mimi and the Moshi temporal transformer.

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


def rope_tables(positions: torch.Tensor, freqs: torch.Tensor) -> tuple:
    """(cos, sin), each float32 [B, 1, T, d/2], for integer or float ``positions`` [B, T]."""
    angles = (positions.float()[..., None] * freqs)[:, None]
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B, H, T, d] by the angles of ``rope_tables``."""
    pairs = x.float().unflatten(-1, (-1, 2))
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return rotated.flatten(-2).to(x.dtype)
