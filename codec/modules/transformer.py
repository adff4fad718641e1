"""The Mimi encoder/decoder transformer (docs/kyutai-compat.md §1.6) with an explicit ring-buffer KV cache.

Every query at position p may see keys at positions ``p - context < q <= p``. Streaming, each layer keeps a ring
of ``capacity`` slots per batch row, written *before* attending. With ``capacity == context`` and two latent steps
per Mimi frame this reproduces the official streaming behaviour, which differs from offline from frame 125 on
(the first query of a chunk loses its oldest key to the chunk's second key). With ``capacity >= context + T - 1``
for chunks of T steps nothing visible is overwritten, so chunked stepping equals the offline computation; the
offline encode/decode use that to run long files in bounded memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TransformerConfig
from ..kernels import ring_attention_op
from .cpu_paths import cpu_fast_path
from .linear import fast_linear
from .nest import Nest
from .quantized import FP8, fp8_decode, fp8_encode, fp8_roundtrip, weight_of
from .rope import apply_rope, rope_frequencies, rope_tables
from .state import State, write_state

# Offline attention is computed in query blocks of this many steps so long files need O(T * context) memory.
_OFFLINE_QUERY_BLOCK = 512


@dataclass
class StepTables:
    """What every layer of one streaming step shares (all layers of a row sit at the same position)."""

    rotation: Optional[torch.Tensor]  # complex [B, 1, T, d/2] RoPE rotations of the new positions (None: no RoPE)
    write_index: torch.Tensor  # [B, H, T, d] ring slots receiving the new keys/values
    # [B, 1, T, length] which of the first ``length`` ring slots each new query may attend to: bool on accelerators
    # (for the fused attention kernels), an additive float32 mask (0 / -inf) on CPU (see ``ring_attention_cpu``)
    mask: torch.Tensor


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


def ring_step_tables(offset: torch.Tensor, t: int, capacity: int, context: int, num_heads: int, head_dim: int,
                     freqs: Optional[torch.Tensor], active: Optional[torch.Tensor],
                     length: Optional[int] = None) -> StepTables:
    """The shared tables of one streaming step of ``t`` positions per row, starting at ``offset`` [B] (int64).

    Rows where ``active`` is False write into the ``t`` spare slots after the ring (never attended) instead.
    ``freqs`` None: no rotary embedding (``rotation`` is None).

    ``length`` (default ``capacity``): attend only ring slots ``0 .. length - 1`` (the mask has ``length`` columns,
    and ``Attention.step`` reads that much of the ring). Position p is stored in slot ``p % capacity``, so until a
    row's ring has wrapped, the slots it has written are a prefix: with ``length >= min(capacity, offset + t)`` for
    every active row, every slot left out is one the full mask hides (never written, or written by an earlier
    conversation), and the result is the same softmax over the same keys. The cost of a step then follows the age of
    the oldest active conversation instead of the ring's size. Rows that are not active may see fewer keys than they
    would (even none: a NaN output); their outputs are never kept, as for any inactive row.
    """
    if length is None:
        length = capacity
    elif not 1 <= length <= capacity:
        raise ValueError(f"attended ring length {length} outside [1, {capacity}]")
    steps = torch.arange(t, device=offset.device)
    positions = offset[:, None] + steps  # [B, T]
    rotation = rope_tables(positions, freqs) if freqs is not None else None
    slots = positions % capacity
    if active is not None:
        slots = torch.where(active[:, None], slots, capacity + steps)
    write_index = slots[:, None, :, None].expand(-1, num_heads, t, head_dim)
    # Position held by each ring slot, reconstructed from the newest written position; never-written slots
    # come out negative and are masked.
    last = positions[:, -1:]
    delta = torch.arange(length, device=offset.device)[None, :] - last % capacity
    slot_pos = torch.where(delta <= 0, last + delta, last + delta - capacity)  # [B, length]
    rel = positions[:, :, None] - slot_pos[:, None, :]  # [B, T, length]
    mask = ((slot_pos[:, None, :] >= 0) & (rel >= 0) & (rel < context))[:, None]
    if cpu_fast_path(offset):
        mask = torch.zeros(mask.shape, device=mask.device).masked_fill_(~mask, float("-inf"))
    return StepTables(rotation, write_index, mask)


def _own_kernel_computes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> bool:
    """Whether ``duplex_cpu::ring_attention`` takes this case (else PyTorch's route, which also broadcasts and
    differentiates): CPU float32, no gradient wanted, one query row per head (q [B, H, 1, d]: the LM's step; at 2+
    rows, as in the codec's transformers at 25 Hz or grouped KV heads, PyTorch's batched products are as fast or
    faster, docs/benchmarks.md), k and v [B, H, L, d], mask [B, 1, 1, L], unit strides on the last dimension."""
    tensors = (q, k, v, mask)
    return (all(t.device.type == "cpu" and t.dtype == torch.float32 and t.dim() == 4 and t.stride(-1) == 1
                for t in tensors)
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
            and q.shape[2] == 1 and k.shape == v.shape and k.shape[:2] == q.shape[:2] and k.shape[3] == q.shape[3]
            and mask.shape[0] == q.shape[0] and mask.shape[1] == 1 and mask.shape[2] in (1, q.shape[2])
            and mask.shape[3] == k.shape[2])


def ring_attention_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + mask) v``: our own kernel where it is loaded and takes the case (one query row
    per head, ``_own_kernel_computes``), else two batched products. For a few queries against a long ring the
    products are 7-25% faster on CPU than PyTorch's fused attention, which converts a boolean mask on every call
    and walks the keys in small blocks; the kernel reads the ring faster still (docs/benchmarks.md)."""
    if _own_kernel_computes(q, k, v, additive_mask):
        kernel = ring_attention_op()
        if kernel is not None:  # one pass over the keys and one over the values (codec/kernels)
            return kernel(q, k, v, additive_mask)
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5).add_(additive_mask)
    return torch.matmul(torch.softmax(scores, dim=-1), v)


class Attention(nn.Module):
    """Multi-head self-attention with a fused, bias-free ``[q | k | v]`` input projection (head-major features),
    interleaved RoPE and a windowed causal mask. Shared by Mimi and the Moshi temporal transformer.

    ``num_kv_heads`` < ``num_heads``: grouped KV heads (Kyutai's ``kv_repeat``), the projection is
    ``[q (num_heads) | k (num_kv_heads) | v (num_kv_heads)]`` and query head h reads KV head h // kv_repeat. The
    ring then stores only the KV heads, and a step attends with the queries of a group stacked as rows of one
    head (no copy of the keys)."""

    def __init__(self, dim: int, num_heads: int, context: int, num_kv_heads: Optional[int] = None):
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads or num_heads
        self.kv_repeat = num_heads // self.num_kv_heads
        self.head_dim = dim // num_heads
        self.context = context
        self.in_proj_weight = nn.Parameter(torch.empty(dim + 2 * self.num_kv_heads * self.head_dim, dim))
        self.out_proj = nn.Linear(dim, dim, bias=False)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def _qkv(self, x: torch.Tensor, rotation: torch.Tensor):
        b, t, _ = x.shape
        if self.kv_repeat == 1:
            qkv = fast_linear(x, weight_of(self, "in_proj_weight")).view(b, t, 3, self.num_heads, self.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, T, d]
        else:
            qkv = fast_linear(x, weight_of(self, "in_proj_weight"))
            split = self.num_heads * self.head_dim
            q = qkv[..., :split].view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, T, d]
            kv = qkv[..., split:].view(b, t, 2, self.num_kv_heads, self.head_dim)
            k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H_kv, T, d]
        return apply_rope(q, rotation), apply_rope(k, rotation), v

    def _grouped(self, q: torch.Tensor, mask: torch.Tensor) -> tuple:
        """Queries [B, H, T, d] -> [B, H_kv, kv_repeat * T, d] (the heads sharing a KV head as rows of it), and the
        step mask [B, 1, T, S] repeated to match."""
        b, _, t, d = q.shape
        q = q.reshape(b, self.num_kv_heads, self.kv_repeat * t, d)
        if t > 1:
            mask = mask[:, :, None].expand(-1, -1, self.kv_repeat, -1, -1).reshape(b, 1, self.kv_repeat * t, -1)
        return q, mask

    def _out(self, y: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = y.shape
        return fast_linear(y.transpose(1, 2).reshape(b, t, -1), weight_of(self.out_proj))

    def forward(self, x: torch.Tensor, rotation: torch.Tensor, kv_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Offline: positions 0..T-1, windowed causal mask. ``kv_dtype`` float8_e4m3fn: keys and values rounded as
        the fp8 ring stores them (the teacher-forced view of a streaming run with that ring)."""
        t = x.shape[1]
        q, k, v = self._qkv(x, rotation)
        if kv_dtype == FP8:
            k, v = fp8_roundtrip(k), fp8_roundtrip(v)
        if self.kv_repeat > 1:  # offline (training, tests): plain repeated heads
            k, v = k.repeat_interleave(self.kv_repeat, dim=1), v.repeat_interleave(self.kv_repeat, dim=1)
        outputs = []
        for start in range(0, t, _OFFLINE_QUERY_BLOCK):
            stop = min(t, start + _OFFLINE_QUERY_BLOCK)
            k_start = max(0, start - self.context + 1)
            delta = torch.arange(start, stop, device=x.device)[:, None] - torch.arange(k_start, stop, device=x.device)
            mask = (delta >= 0) & (delta < self.context)
            outputs.append(F.scaled_dot_product_attention(
                q[:, :, start:stop], k[:, :, k_start:stop], v[:, :, k_start:stop], attn_mask=mask))
        return self._out(torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0])

    def new_state(self, batch: int, chunk: int, capacity: int, device=None, dtype=torch.float32,
                  kv_dtype: Optional[torch.dtype] = None) -> State:
        """The KV ring in ``kv_dtype`` (default ``dtype``, the compute dtype). float8_e4m3fn: codes plus one scale
        per stored vector (``k_scale``, ``v_scale``, in ``dtype``; ``quantized.fp8_encode``): half the bytes of a
        bfloat16 ring, 1/64 more for the scales at head_dim 128."""
        # ``chunk`` extra slots past the ring receive the writes of rows that are not executing (never attended).
        shape = (batch, self.num_kv_heads, capacity + chunk, self.head_dim)
        kv_dtype = kv_dtype or dtype
        state = {"k": torch.zeros(shape, device=device, dtype=kv_dtype),
                 "v": torch.zeros(shape, device=device, dtype=kv_dtype)}
        if kv_dtype == FP8:
            state["k_scale"] = torch.zeros(shape[:-1] + (1,), device=device, dtype=dtype)
            state["v_scale"] = torch.zeros(shape[:-1] + (1,), device=device, dtype=dtype)
        elif kv_dtype != dtype and not kv_dtype.is_floating_point:
            raise ValueError(f"KV ring dtype {kv_dtype}: expected a floating-point dtype or float8_e4m3fn")
        return state

    def step(self, x: torch.Tensor, state: State, tables: StepTables) -> torch.Tensor:
        """Streaming: write this chunk's keys/values into the ring, then attend over the whole ring."""
        q, k, v = self._qkv(x, tables.rotation)
        ring_k, ring_v = state["k"], state["v"]
        mask = tables.mask
        cap = mask.shape[-1]
        if "k_scale" in state:  # the fp8 ring: codes and per-vector scales written, the ring read back decoded
            scale_index = tables.write_index[..., :1]
            for ring, scales, new in ((ring_k, state["k_scale"], k), (ring_v, state["v_scale"], v)):
                codes, scale = fp8_encode(new, scales.dtype)
                # As bytes: PyTorch has no scatter kernel for float8 (same bytes, same result).
                ring.view(torch.uint8).scatter_(2, tables.write_index, codes.view(torch.uint8))
                scales.scatter_(2, scale_index, scale)
            ring_k = fp8_decode(ring_k[:, :, :cap], state["k_scale"][:, :, :cap], q.dtype)
            ring_v = fp8_decode(ring_v[:, :, :cap], state["v_scale"][:, :, :cap], q.dtype)
        elif torch.compiler.is_compiling():
            # Traced by torch.compile: the same writes as an index_put_, which Inductor does in place in the ring (a
            # graph input); a scatter_ into it comes back as a copy of the whole ring, twice per layer and step.
            slots = tables.write_index[:, :1, :, 0]  # [B, 1, T]
            rows = torch.arange(slots.shape[0], device=slots.device)[:, None, None]
            heads = torch.arange(ring_k.shape[1], device=slots.device)[None, :, None]
            ring_k.index_put_((rows, heads, slots), k.to(ring_k.dtype))
            ring_v.index_put_((rows, heads, slots), v.to(ring_v.dtype))
        else:
            ring_k.scatter_(2, tables.write_index, k.to(ring_k.dtype))
            ring_v.scatter_(2, tables.write_index, v.to(ring_v.dtype))
            if ring_k.dtype != q.dtype:  # a ring kept in another floating dtype (e.g. bfloat16 under float32)
                ring_k, ring_v = ring_k[:, :, :cap].to(q.dtype), ring_v[:, :, :cap].to(q.dtype)
        shape = q.shape
        if self.kv_repeat > 1:
            q, mask = self._grouped(q, mask)
        if mask.dtype != torch.bool and q.dtype == torch.float32:
            y = ring_attention_cpu(q, ring_k[:, :, :cap], ring_v[:, :, :cap], mask)
        else:  # the fused kernel keeps the scores in float32 for half-precision inputs
            y = F.scaled_dot_product_attention(q, ring_k[:, :, :cap], ring_v[:, :, :cap],
                                               attn_mask=mask if mask.dtype == torch.bool else mask == 0)
        return self._out(y.reshape(shape) if self.kv_repeat > 1 else y)


class TransformerLayer(nn.Module):
    """Pre-norm layer: ``x + ls1 * attn(ln1(x))`` then ``x + ls2 * ffn(ln2(x))``, exact GELU, no biases."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        d = cfg.d_model
        self.self_attn = Attention(d, cfg.num_heads, cfg.context)
        self.norm1 = nn.LayerNorm(d, eps=1e-5)
        self.norm2 = nn.LayerNorm(d, eps=1e-5)
        self.linear1 = nn.Linear(d, cfg.dim_feedforward, bias=False)
        self.linear2 = nn.Linear(cfg.dim_feedforward, d, bias=False)
        self.layer_scale_1 = LayerScale(d, cfg.layer_scale)
        self.layer_scale_2 = LayerScale(d, cfg.layer_scale)

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.gelu(fast_linear(self.norm2(x), self.linear1.weight))
        return x + self.layer_scale_2(fast_linear(hidden, self.linear2.weight))

    def forward(self, x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
        return self._ffn(x + self.layer_scale_1(self.self_attn(self.norm1(x), rotation)))

    def step(self, x: torch.Tensor, state: State, tables: StepTables) -> torch.Tensor:
        return self._ffn(x + self.layer_scale_1(self.self_attn.step(self.norm1(x), state, tables)))


class MimiTransformer(nn.Module):
    """Conv-layout wrapper: [B, C, T] in and out. Parameters live under ``transformer.layers.N``."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.transformer = Nest()
        self.transformer.layers = nn.ModuleList([TransformerLayer(cfg) for _ in range(cfg.num_layers)])
        self.register_buffer("freqs", rope_frequencies(cfg.head_dim, cfg.max_period), persistent=False)

    @property
    def layers(self) -> nn.ModuleList:
        return self.transformer.layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.transpose(1, 2)
        b, t, _ = h.shape
        rotation = rope_tables(torch.arange(t, device=h.device).expand(b, t), self.freqs)
        for layer in self.layers:
            h = layer(h, rotation)
        return h.transpose(1, 2)

    def new_state(self, batch: int, chunk: int, offline_window: bool = False, device=None,
                  dtype=torch.float32) -> State:
        """State for calls of up to ``chunk`` steps. ``offline_window``: a ring large enough that chunked stepping
        equals the offline computation, instead of the official streaming ring of ``context`` slots."""
        capacity = self.cfg.context + (chunk if offline_window else 0)
        return {"offset": torch.zeros(batch, dtype=torch.long, device=device),
                "capacity": capacity,  # a plain int: fixed for the life of the state
                "layers": {str(i): layer.self_attn.new_state(batch, chunk, capacity, device, dtype)
                           for i, layer in enumerate(self.layers)}}

    def step(self, x: torch.Tensor, state: State, active: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = x.transpose(1, 2)
        offset, capacity = state["offset"], state["capacity"]
        spare = state["layers"]["0"]["k"].shape[2] - capacity
        if h.shape[1] > spare:
            raise ValueError(f"{h.shape[1]} steps in one call, this state was built for at most {spare}")
        tables = ring_step_tables(offset, h.shape[1], capacity, self.cfg.context, self.cfg.num_heads,
                                  self.cfg.head_dim, self.freqs, active)
        for i, layer in enumerate(self.layers):
            h = layer.step(h, state["layers"][str(i)], tables)
        write_state(offset, offset + h.shape[1], active)
        return h.transpose(1, 2)
