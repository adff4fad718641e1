"""Token sampling (spec section 2.8) with per-slot settings and a counter-based random source.

The sampler is Kyutai's: ``p = softmax(logits / T)`` in float32, keep the top k, pick ``argmax(p / q)`` with
``q ~ Exp(1)`` (the "exponential race", an exact draw from the renormalised top-k distribution); temperature <= 0
is greedy ``argmax(logits)``.

The exponential noise does not come from a stateful generator: it is a hash of (slot seed, slot step, draw, rank)
computed with integer tensor ops. So a slot's samples depend only on its own seed and position (never on which
other slots share the batch), seeds reproduce, and the whole step stays a pure function of tensors that can be
captured in a CUDA graph.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (xorshift-multiply rounds) on int64 tensors holding values < 2^32.

    Multipliers are below 2^31 so every product fits in int64 without overflow.
    """
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x297A2D39) & _MASK32
    return x ^ (x >> 15)


def uniform_noise(seed: torch.Tensor, step: torch.Tensor, draw: int, n: int) -> torch.Tensor:
    """float32 [B, n] uniform in (0, 1), a deterministic function of (seed[b], step[b], draw, column)."""
    key = _mix32(seed ^ (seed >> 32))
    key = _mix32(key ^ (step & _MASK32))
    key = _mix32(key ^ ((draw * 0x61C88647 + 0x9E3779B9) & _MASK32))
    column = torch.arange(n, device=seed.device, dtype=torch.int64)
    bits = _mix32(key[:, None] ^ ((column * 0x5BD1E995) & _MASK32)[None, :])
    return ((bits >> 8).float() + 0.5) * (1.0 / (1 << 24))


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, k_max: int,
           seed: torch.Tensor, step: torch.Tensor, draw: int) -> torch.Tensor:
    """One token per row of ``logits`` [B, V].

    temperature float32 [B] (<= 0: greedy), top_k int64 [B] (1..k_max: rows keep their own k), k_max a fixed
    bound (a static shape), seed/step int64 [B], draw a per-call constant that separates the draws of one step.
    """
    logits = logits.float()
    greedy = temperature <= 0
    safe_t = torch.where(greedy, torch.ones_like(temperature), temperature)
    probs = torch.softmax(logits / safe_t[:, None], dim=-1)
    top_p, top_i = probs.topk(k_max, dim=-1)  # sorted, largest first
    keep = torch.arange(k_max, device=logits.device)[None, :] < top_k[:, None]
    top_p = torch.where(keep, top_p, torch.zeros_like(top_p))
    race = top_p / -torch.log(uniform_noise(seed, step, draw, k_max))  # p / q with q ~ Exp(1)
    sampled = top_i.gather(-1, race.argmax(dim=-1, keepdim=True))[:, 0]
    return torch.where(greedy, logits.argmax(dim=-1), sampled)
