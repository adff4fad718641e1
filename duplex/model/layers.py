"""Building blocks of the Moshi LM (docs/kyutai-compat.md §2.3, §2.4): float32 RMSNorm, embeddings with the zero
token, the SiLU-gated feed-forward, and the temporal transformer layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from codec.modules.linear import fast_linear
from codec.modules.quantized import weight_of
from codec.modules.transformer import Attention, StepTables

ZERO_TOKEN = -1  # embeds to an exact zero vector
UNGENERATED_TOKEN = -2  # placeholder for "nothing produced yet"; never embedded


class RMSNorm(nn.Module):
    """``x * (alpha * rsqrt(eps + mean(x^2)))`` computed in float32, eps added to the mean (1e-8).

    ``in_float32=False`` (Kyutai's ``rms_norm``, as opposed to ``rms_norm_f32``): computed in the input's dtype."""

    def __init__(self, dim: int, eps: float = 1e-8, in_float32: bool = True):
        super().__init__()
        self.eps = eps
        self.in_float32 = in_float32
        self.alpha = nn.Parameter(torch.ones(1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.alpha.dtype == torch.float32:
            # Same arithmetic in fewer dispatches (it runs ~33 times per generated frame).
            return x * (self.alpha * torch.rsqrt(torch.mean(x * x, dim=-1, keepdim=True).add_(self.eps)))
        if not self.in_float32:
            var = self.eps + torch.mean(x * x, dim=-1, keepdim=True)
            return x * (self.alpha.to(var.dtype) * torch.rsqrt(var))
        x32 = x.float()
        var = self.eps + torch.mean(x32.pow(2), dim=-1, keepdim=True)
        return (x32 * (self.alpha.float() * torch.rsqrt(var))).to(x.dtype)


class LayerNorm32(nn.LayerNorm):
    """Kyutai's ``layer_norm_f32``: a LayerNorm computed in float32 (its eps is 1e-8)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(),
                            self.eps).to(x.dtype)


def make_norm(name: str, dim: int) -> nn.Module:
    """The norm Kyutai's ``create_norm_fn`` makes for ``name`` (its parameter names: ``alpha`` for the RMS norms,
    ``weight`` and ``bias`` for the layer norms), for ``depformer_norm``."""
    if name == "rms_norm_f32":
        return RMSNorm(dim, eps=1e-8)
    if name == "rms_norm":
        return RMSNorm(dim, eps=1e-5, in_float32=False)
    if name == "layer_norm":
        return nn.LayerNorm(dim, eps=1e-5)
    if name == "layer_norm_f32":
        return LayerNorm32(dim, eps=1e-8)
    raise ValueError(f"unknown norm {name!r}")


class ScaledEmbedding(nn.Embedding):
    """Embedding whose zero token (-1) maps to an exact zero vector (Kyutai's name, plain lookup otherwise).

    ``low_rank`` (Kyutai's ``depformer_low_rank_embeddings``): the table has ``low_rank`` columns and a bias-free
    linear ``low_rank`` -> ``dim`` follows the lookup (applied after the zero token, which stays exactly zero)."""

    def __init__(self, num_embeddings: int, dim: int, low_rank: "int | None" = None):
        super().__init__(num_embeddings, low_rank or dim)
        self.low_rank = nn.Linear(low_rank, dim, bias=False) if low_rank else None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        y = F.embedding(ids.clamp(min=0), self.weight)
        y = torch.where((ids == ZERO_TOKEN)[..., None], torch.zeros((), dtype=y.dtype, device=y.device), y)
        return y if self.low_rank is None else fast_linear(y, weight_of(self.low_rank))

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Valid ids only (no zero token): the plain lookup, then the low-rank projection if any."""
        y = F.embedding(ids, self.weight)
        return y if self.low_rank is None else fast_linear(y, weight_of(self.low_rank))


class GatedFFN(nn.Module):
    """``linear_out(silu(gate) * value)`` where ``linear_in`` produces ``[gate | value]`` (gate first)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.linear_in = nn.Linear(dim, 2 * hidden, bias=False)
        self.linear_out = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = fast_linear(x, weight_of(self.linear_in)).unflatten(-1, (2, -1))
        return fast_linear(F.silu(h[..., 0, :]) * h[..., 1, :], weight_of(self.linear_out))


class TemporalLayer(nn.Module):
    """Pre-norm layer without LayerScale or biases: ``x + attn(rms1(x))`` then ``x + ffn(rms2(x))``."""

    def __init__(self, dim: int, num_heads: int, context: int, hidden: int, num_kv_heads: "int | None" = None):
        super().__init__()
        self.self_attn = Attention(dim, num_heads, context, num_kv_heads)
        self.norm1 = RMSNorm(dim)
        self.norm2 = RMSNorm(dim)
        self.gating = GatedFFN(dim, hidden)

    def forward(self, x: torch.Tensor, rotation: torch.Tensor, kv_dtype: "torch.dtype | None" = None) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x), rotation, kv_dtype)
        return x + self.gating(self.norm2(x))

    def step(self, x: torch.Tensor, state: dict, tables: StepTables) -> torch.Tensor:
        x = x + self.self_attn.step(self.norm1(x), state, tables)
        return x + self.gating(self.norm2(x))
