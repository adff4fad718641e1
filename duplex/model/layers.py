"""Building blocks of the Moshi LM (docs/kyutai-compat.md §2.3, §2.4): float32 RMSNorm, embeddings with the zero
token, the SiLU-gated feed-forward, and the temporal transformer layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from codec.modules.linear import fast_linear
from codec.modules.transformer import Attention, StepTables

ZERO_TOKEN = -1  # embeds to an exact zero vector
UNGENERATED_TOKEN = -2  # placeholder for "nothing produced yet"; never embedded


class RMSNorm(nn.Module):
    """``x * (alpha * rsqrt(eps + mean(x^2)))`` computed in float32, eps added to the mean (1e-8)."""

    def __init__(self, dim: int, eps: float = 1e-8):
        super().__init__()
        self.eps = eps
        self.alpha = nn.Parameter(torch.ones(1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.alpha.dtype == torch.float32:
            # Same arithmetic in fewer dispatches (it runs ~33 times per generated frame).
            return x * (self.alpha * torch.rsqrt(torch.mean(x * x, dim=-1, keepdim=True).add_(self.eps)))
        x32 = x.float()
        var = self.eps + torch.mean(x32.pow(2), dim=-1, keepdim=True)
        return (x32 * (self.alpha.float() * torch.rsqrt(var))).to(x.dtype)


class ScaledEmbedding(nn.Embedding):
    """Embedding whose zero token (-1) maps to an exact zero vector (Kyutai's name, plain lookup otherwise)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        y = F.embedding(ids.clamp(min=0), self.weight)
        return torch.where((ids == ZERO_TOKEN)[..., None], torch.zeros((), dtype=y.dtype, device=y.device), y)


class GatedFFN(nn.Module):
    """``linear_out(silu(gate) * value)`` where ``linear_in`` produces ``[gate | value]`` (gate first)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.linear_in = nn.Linear(dim, 2 * hidden, bias=False)
        self.linear_out = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = fast_linear(x, self.linear_in.weight).unflatten(-1, (2, -1))
        return fast_linear(F.silu(h[..., 0, :]) * h[..., 1, :], self.linear_out.weight)


class TemporalLayer(nn.Module):
    """Pre-norm layer without LayerScale or biases: ``x + attn(rms1(x))`` then ``x + ffn(rms2(x))``."""

    def __init__(self, dim: int, num_heads: int, context: int, hidden: int):
        super().__init__()
        self.self_attn = Attention(dim, num_heads, context)
        self.norm1 = RMSNorm(dim)
        self.norm2 = RMSNorm(dim)
        self.gating = GatedFFN(dim, hidden)

    def forward(self, x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x), rotation)
        return x + self.gating(self.norm2(x))

    def step(self, x: torch.Tensor, state: dict, tables: StepTables) -> torch.Tensor:
        x = x + self.self_attn.step(self.norm1(x), state, tables)
        return x + self.gating(self.norm2(x))
