"""The Mimi encoder/decoder transformer (spec section 1.6) with an explicit ring-buffer KV cache.

Offline, every query at position p sees keys at positions ``p - context < q <= p``. Streaming, each layer keeps a
ring of exactly ``context`` slots per batch row, written *before* attending; with two latent steps per Mimi frame
this reproduces the official streaming behaviour, which differs from offline from frame 125 on (the first query of
a chunk loses its oldest key to the chunk's second key).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import TransformerConfig
from .conv import _Wrapper
from .rope import apply_rope, rope_frequencies
from .state import State, write_state

# Offline attention is computed in query blocks of this many steps so long files need O(T * context) memory.
_OFFLINE_QUERY_BLOCK = 512


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


class Attention(nn.Module):
    """Multi-head self-attention with a fused, bias-free ``[q | k | v]`` input projection (head-major features)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        d = cfg.d_model
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.context = cfg.context
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d, d))
        self.out_proj = nn.Linear(d, d, bias=False)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def _qkv(self, x: torch.Tensor):
        b, t, _ = x.shape
        qkv = F.linear(x, self.in_proj_weight).view(b, t, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, T, d]
        return q, k, v

    def _out(self, y: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(b, t, -1))

    def forward(self, x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        """Offline: positions 0..T-1, windowed causal mask."""
        b, t, _ = x.shape
        positions = torch.arange(t, device=x.device, dtype=torch.float32).expand(b, t)
        q, k, v = self._qkv(x)
        q, k = apply_rope(q, positions, freqs), apply_rope(k, positions, freqs)
        outputs = []
        for start in range(0, t, _OFFLINE_QUERY_BLOCK):
            stop = min(t, start + _OFFLINE_QUERY_BLOCK)
            k_start = max(0, start - self.context + 1)
            pq = torch.arange(start, stop, device=x.device)[:, None]
            pk = torch.arange(k_start, stop, device=x.device)[None, :]
            delta = pq - pk
            mask = (delta >= 0) & (delta < self.context)
            outputs.append(F.scaled_dot_product_attention(
                q[:, :, start:stop], k[:, :, k_start:stop], v[:, :, k_start:stop], attn_mask=mask))
        return self._out(torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0])

    def new_state(self, batch: int, chunk: int, device=None, dtype=torch.float32) -> State:
        # ``chunk`` extra slots past the ring receive the writes of rows that are not executing (never attended).
        shape = (batch, self.num_heads, self.context + chunk, self.head_dim)
        return {"k": torch.zeros(shape, device=device, dtype=dtype),
                "v": torch.zeros(shape, device=device, dtype=dtype)}

    def step(self, x: torch.Tensor, state: State, offset: torch.Tensor, freqs: torch.Tensor,
             active: Optional[torch.Tensor]) -> torch.Tensor:
        """Streaming: ``x`` [B, T, D] continues each row from its own ``offset`` [B] (int64)."""
        b, t, _ = x.shape
        cap = self.context
        steps = torch.arange(t, device=x.device)
        positions = offset[:, None] + steps  # [B, T] int64
        q, k, v = self._qkv(x)
        q, k = apply_rope(q, positions.float(), freqs), apply_rope(k, positions.float(), freqs)

        slots = positions % cap
        if active is not None:
            slots = torch.where(active[:, None], slots, cap + steps)
        index = slots[:, None, :, None].expand(b, self.num_heads, t, self.head_dim)
        ring_k, ring_v = state["k"], state["v"]
        ring_k.scatter_(2, index, k)
        ring_v.scatter_(2, index, v)

        # Position held by each ring slot, reconstructed from the newest written position; never-written slots
        # come out negative and are masked.
        last = positions[:, -1:]  # [B, 1]
        delta = torch.arange(cap, device=x.device)[None, :] - last % cap
        slot_pos = torch.where(delta <= 0, last + delta, last + delta - cap)  # [B, cap]
        rel = positions[:, :, None] - slot_pos[:, None, :]  # [B, T, cap]
        mask = (slot_pos[:, None, :] >= 0) & (rel >= 0) & (rel < cap)
        y = F.scaled_dot_product_attention(q, ring_k[:, :, :cap], ring_v[:, :, :cap], attn_mask=mask[:, None])
        return self._out(y)


class TransformerLayer(nn.Module):
    """Pre-norm layer: ``x + ls1 * attn(ln1(x))`` then ``x + ls2 * ffn(ln2(x))``, exact GELU, no biases."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        d = cfg.d_model
        self.self_attn = Attention(cfg)
        self.norm1 = nn.LayerNorm(d, eps=1e-5)
        self.norm2 = nn.LayerNorm(d, eps=1e-5)
        self.linear1 = nn.Linear(d, cfg.dim_feedforward, bias=False)
        self.linear2 = nn.Linear(cfg.dim_feedforward, d, bias=False)
        self.layer_scale_1 = LayerScale(d, cfg.layer_scale)
        self.layer_scale_2 = LayerScale(d, cfg.layer_scale)

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer_scale_2(self.linear2(F.gelu(self.linear1(self.norm2(x)))))

    def forward(self, x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        return self._ffn(x + self.layer_scale_1(self.self_attn(self.norm1(x), freqs)))

    def step(self, x, state, offset, freqs, active):
        return self._ffn(x + self.layer_scale_1(self.self_attn.step(self.norm1(x), state, offset, freqs, active)))


class MimiTransformer(nn.Module):
    """Conv-layout wrapper: [B, C, T] in and out. Parameters live under ``transformer.layers.N``."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.transformer = _Wrapper()
        self.transformer.layers = nn.ModuleList([TransformerLayer(cfg) for _ in range(cfg.num_layers)])
        self.register_buffer("freqs", rope_frequencies(cfg.head_dim, cfg.max_period), persistent=False)

    @property
    def layers(self) -> nn.ModuleList:
        return self.transformer.layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.transpose(1, 2)
        for layer in self.layers:
            h = layer(h, self.freqs)
        return h.transpose(1, 2)

    def new_state(self, batch: int, chunk: int, device=None, dtype=torch.float32) -> State:
        return {"offset": torch.zeros(batch, dtype=torch.long, device=device),
                "layers": {str(i): layer.self_attn.new_state(batch, chunk, device, dtype)
                           for i, layer in enumerate(self.layers)}}

    def step(self, x: torch.Tensor, state: State, active: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = x.transpose(1, 2)
        offset = state["offset"]
        for i, layer in enumerate(self.layers):
            h = layer.step(h, state["layers"][str(i)], offset, self.freqs, active)
        write_state(offset, offset + h.shape[1], active)
        return h.transpose(1, 2)
