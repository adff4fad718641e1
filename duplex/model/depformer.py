"""The depth transformer ("depformer", docs/kyutai-compat.md §2.6).

Within one time step it runs over depth positions k = 0..dep_q-1 (one per generated codebook). Every position has
its own attention and feed-forward weights (norms are shared), there is no positional encoding and no window, and
nothing is carried from one time step to the next. The packed attention weights of the published files are kept
packed: rows ``[k * 3D, (k + 1) * 3D)`` of ``in_proj_weight`` and ``[k * D, (k + 1) * D)`` of ``out_proj.weight``
belong to position k.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from codec.modules.linear import fast_linear
from codec.modules.quantized import dense, weight_of

from .layers import GatedFFN, RMSNorm


class DepthAttention(nn.Module):
    """``num_kv_heads`` < ``num_heads``: grouped KV heads (Kyutai's ``kv_repeat``, which the depth transformer
    inherits unless ``depformer_kv_repeat`` is given): each step's projection is ``[q | k (num_kv_heads) | v
    (num_kv_heads)]`` and query head h reads KV head h // kv_repeat."""

    def __init__(self, dim: int, num_heads: int, steps: int, num_kv_heads: "int | None" = None):
        super().__init__()
        self.dim, self.num_heads, self.steps = dim, num_heads, steps
        self.num_kv_heads = num_kv_heads or num_heads
        self.kv_repeat = num_heads // self.num_kv_heads
        self.head_dim = dim // num_heads
        self.qkv_dim = dim + 2 * self.num_kv_heads * self.head_dim  # rows of one step's input projection
        self.in_proj_weight = nn.Parameter(torch.empty(steps * self.qkv_dim, dim))
        self.out_proj = nn.Linear(dim, steps * dim, bias=False)  # [steps * D, D]: per-step [D, D] blocks
        nn.init.xavier_uniform_(self.in_proj_weight)

    def in_proj(self, k: int) -> torch.Tensor:
        return weight_of(self, "in_proj_weight")[k * self.qkv_dim:(k + 1) * self.qkv_dim]

    def out_proj_weight(self, k: int) -> torch.Tensor:
        return weight_of(self.out_proj)[k * self.dim:(k + 1) * self.dim]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher-forced: x [N, steps, D], position k uses weight set k; causal attention over the positions."""
        n, s, d = x.shape
        w_in = dense(weight_of(self, "in_proj_weight"), x.dtype).view(self.steps, self.qkv_dim, d)[:s]
        qkv = torch.bmm(x.transpose(0, 1), w_in.transpose(1, 2))  # [s, N, qkv_dim]
        if self.kv_repeat == 1:
            q, k, v = qkv.view(s, n, 3, self.num_heads, self.head_dim).permute(2, 1, 3, 0, 4).unbind(0)  # [N,H,s,d]
        else:
            q = qkv[..., :d].reshape(s, n, self.num_heads, self.head_dim).permute(1, 2, 0, 3)
            kv = qkv[..., d:].reshape(s, n, 2, self.num_kv_heads, self.head_dim).permute(2, 1, 3, 0, 4)
            k, v = (t.repeat_interleave(self.kv_repeat, dim=1) for t in kv.unbind(0))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [N, H, s, d]
        y = y.permute(2, 0, 1, 3).reshape(s, n, d)
        w_out = dense(weight_of(self.out_proj), x.dtype).view(self.steps, d, d)[:s]
        return torch.bmm(y, w_out.transpose(1, 2)).transpose(0, 1)  # [N, s, D]

    def step(self, x: torch.Tensor, k: int, cache: dict) -> torch.Tensor:
        """Position ``k`` of the current time step: x [B, 1, D]; ``cache`` holds positions 0..k-1 of this step."""
        b = x.shape[0]
        if self.kv_repeat == 1:
            qkv = fast_linear(x, self.in_proj(k)).view(b, 1, 3, self.num_heads, self.head_dim)
            q, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, 1, d]
        else:
            qkv = fast_linear(x, self.in_proj(k))
            # The query heads sharing a KV head as rows of it: [B, H_kv, kv_repeat, d] (no copy of the cache).
            q = qkv[..., :self.dim].reshape(b, self.num_kv_heads, self.kv_repeat, self.head_dim)
            key, value = qkv[..., self.dim:].reshape(b, 2, self.num_kv_heads, 1, self.head_dim).unbind(1)
        cache["k"][:, :, k:k + 1] = key
        cache["v"][:, :, k:k + 1] = value
        # Position k sees positions 0..k of this time step; the slots past k hold stale values from the previous
        # step. The reference masks them out of the whole cache; attending over the visible slots only is the
        # same softmax without a mask (half the per-call cost of the masked kernel on CPU).
        y = F.scaled_dot_product_attention(q, cache["k"][:, :, :k + 1], cache["v"][:, :, :k + 1])
        if self.kv_repeat > 1:  # [B, H_kv, kv_repeat, d] is already head-major
            return fast_linear(y.reshape(b, 1, self.dim), self.out_proj_weight(k))
        return fast_linear(y.transpose(1, 2).reshape(b, 1, self.dim), self.out_proj_weight(k))


class DepthLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, steps: int, hidden: int, num_kv_heads: "int | None" = None):
        super().__init__()
        self.self_attn = DepthAttention(dim, num_heads, steps, num_kv_heads)
        self.norm1 = RMSNorm(dim)
        self.norm2 = RMSNorm(dim)
        self.gating = nn.ModuleList([GatedFFN(dim, hidden) for _ in range(steps)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x))
        h = self.norm2(x)
        return x + torch.stack([self.gating[k](h[:, k]) for k in range(x.shape[1])], dim=1)

    def step(self, x: torch.Tensor, k: int, cache: dict) -> torch.Tensor:
        x = x + self.self_attn.step(self.norm1(x), k, cache)
        return x + self.gating[k](self.norm2(x))


class DepthTransformer(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_layers: int, steps: int, hidden: int,
                 num_kv_heads: "int | None" = None):
        super().__init__()
        self.dim, self.num_heads, self.steps = dim, num_heads, steps
        self.num_kv_heads = num_kv_heads or num_heads
        self.layers = nn.ModuleList([DepthLayer(dim, num_heads, steps, hidden, num_kv_heads)
                                     for _ in range(num_layers)])

    def forward(self, x: torch.Tensor, checkpoint: bool = False) -> torch.Tensor:
        """x [N, steps, D]; ``checkpoint``: gradient checkpointing per layer (``MoshiLM.forward_train``)."""
        for layer in self.layers:
            x = torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False) if checkpoint and \
                torch.is_grad_enabled() else layer(x)
        return x

    def new_cache(self, batch: int, device=None, dtype=torch.float32) -> dict:
        """Per-time-step attention cache (overwritten position by position; never needs a reset)."""
        shape = (batch, self.num_kv_heads, self.steps, self.dim // self.num_heads)
        return {"layers": {str(i): {"k": torch.zeros(shape, device=device, dtype=dtype),
                                    "v": torch.zeros(shape, device=device, dtype=dtype)}
                           for i in range(len(self.layers))}}

    def step(self, x: torch.Tensor, k: int, cache: dict) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer.step(x, k, cache["layers"][str(i)])
        return x
