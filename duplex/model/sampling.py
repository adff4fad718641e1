"""Token sampling (docs/kyutai-compat.md §2.8) with per-slot settings and a counter-based random source.

A slot's settings are one frozen ``SlotSampling`` value, validated when it is made: the server's query, the
engine's defaults and the generator all produce one, and ``Sampling.set`` stores it into the per-slot tensors.

The sampler is Kyutai's: ``p = softmax(logits / T)`` in float32, keep the top k, pick ``argmax(p / q)`` with
``q ~ Exp(1)`` (the "exponential race", an exact draw from the renormalised top-k distribution); temperature <= 0
is greedy ``argmax(logits)``.

The exponential noise does not come from a stateful generator: it is a hash of (slot seed, slot step, draw, rank)
computed with integer tensor ops. So a slot's samples depend only on its own seed and position (never on which
other slots share the batch), seeds reproduce, and the whole step stays a pure function of tensors that can be
captured in a CUDA graph.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields, replace
from typing import Optional

import torch

from ..errors import UsageError

_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (two xorshift-multiply rounds) on int64 tensors holding values < 2^32.

    Multipliers are below 2^31 so every product fits in int64 without overflow.
    """
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & _MASK32
    x = ((x ^ (x >> 15)) * 0x2C1B3C6D) & _MASK32
    return x ^ (x >> 16)


def step_key(seed: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """int64 [B] < 2^32: the random key of each slot at its current step (computed once per step)."""
    key = _mix32((seed ^ (seed >> 32)) & _MASK32)
    return _mix32(key ^ (step & _MASK32))


def _draw_keys(key: torch.Tensor, first_draw: int, count: int) -> torch.Tensor:
    """int64 [B, count]: the keys of draws first_draw .. first_draw + count - 1 of each slot's step."""
    draws = torch.arange(first_draw, first_draw + count, device=key.device, dtype=torch.int64)
    return _mix32(key[:, None] ^ ((draws * 0x61C88647 + 0x9E3779B9) & _MASK32))


def _uniform_draws(key: torch.Tensor, draw: int, n: int, count: int) -> torch.Tensor:
    column = (torch.arange(n, device=key.device, dtype=torch.int64) * 0x5BD1E995) & _MASK32
    bits = _mix32(_draw_keys(key, draw, count)[:, :, None] ^ column)
    # 23 random bits: (k + 0.5) / 2^23 is exact in float32 and strictly inside (0, 1), so -log(u) > 0 always
    # (24 bits could round to exactly 1.0, giving 0 / 0 = NaN scores that argmax would pick).
    return ((bits >> 9).float() + 0.5) * (1.0 / (1 << 23))


def uniform_noise(key: torch.Tensor, draw: int, n: int, count: int = 1) -> torch.Tensor:
    """float32 uniform in (0, 1), a deterministic function of (key[b], draw, column): [B, n] for one draw, or
    [B, count, n] for the ``count`` draws starting at ``draw`` (the same numbers, computed at once)."""
    u = _uniform_draws(key, draw, n, count)
    return u if count > 1 else u[:, 0]


def exponential_noise(key: torch.Tensor, draw: int, n: int, count: int) -> torch.Tensor:
    """float32 [B, count, n] of Exp(1) variables for ``count`` draws: ``-log(uniform_noise)``. A step computes
    the noise of all its draws in one go (a dozen small integer ops instead of a dozen per draw)."""
    return _uniform_draws(key, draw, n, count).log_().neg_()


class SamplingSettings:
    """Per-slot temperature and top-k, kept as preallocated tensors; ``k_max`` bounds every slot's k and fixes
    the shape of the top-k step. A temperature of 0 makes a slot greedy."""

    def __init__(self, batch: int, temperature: float, top_k: int, k_max: int, device=None,
                 branch_free: bool = False):
        self.k_max = k_max
        # branch_free: always run the general path, so a captured CUDA graph stays valid whatever the settings.
        self.branch_free = branch_free
        self.temperature = torch.zeros(batch, device=device)
        self.top_k = torch.zeros(batch, dtype=torch.long, device=device)
        self.greedy = torch.zeros(batch, dtype=torch.bool, device=device)
        self.divisor = torch.ones(batch, 1, device=device)
        self.keep = torch.zeros(batch, k_max, device=device)
        self.set(None, temperature, top_k)

    def set(self, slot: Optional[int], temperature: float, top_k: int) -> None:
        """Change the settings of one slot (all slots when ``slot`` is None), in place."""
        rows = slice(None) if slot is None else slice(slot, slot + 1)
        top_k = min(max(int(top_k), 1), self.k_max)
        self.temperature[rows] = float(temperature)
        self.top_k[rows] = top_k
        self.greedy[rows] = temperature <= 0
        self.divisor[rows] = float(temperature) if temperature > 0 else 1.0
        self.keep[rows] = (torch.arange(self.k_max, device=self.keep.device) < top_k).float()
        self.any_sampling = self.branch_free or bool((~self.greedy).any())
        self.all_sampling = not self.branch_free and bool((~self.greedy).all())


@dataclass(frozen=True)
class SlotSampling:
    """How one slot samples: one value, checked once when made, passed whole from the query or the caller to
    ``Sampling.set`` (as whisper's ``DecodingOptions``). The defaults are Kyutai's (text 0.7 / 25, audio 0.8 / 250).

    Temperatures are finite numbers >= 0 (0: greedy); top-k integers >= 0 (0: no truncation, the whole
    vocabulary; larger values are capped by the engine's ``*_top_k_max``); ``seed`` an integer, or None for a
    random one chosen when the slot opens. A new setting (CFG, a repetition penalty) is one more field here."""

    temperature: float = 0.8
    top_k: int = 250
    text_temperature: float = 0.7
    text_top_k: int = 25
    seed: Optional[int] = None

    def __post_init__(self):
        for name in ("temperature", "text_temperature"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                    and value >= 0):
                raise UsageError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("top_k", "text_top_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise UsageError(f"{name} must be an integer >= 0 (0: no truncation), got {value!r}")
        if self.seed is not None:
            if not isinstance(self.seed, numbers.Integral) or isinstance(self.seed, bool):
                raise UsageError(f"seed must be an integer or None (random), got {self.seed!r}")
            object.__setattr__(self, "seed", int(self.seed))  # a NumPy integer seeds as the same int

    def replace(self, **changes) -> "SlotSampling":
        """A copy with some fields changed (checked again); unknown names are refused."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise UsageError(f"unknown sampling setting{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(sorted(unknown))}; the settings are "
                             f"{', '.join(f.name for f in fields(self))}")
        return replace(self, **changes)


class Sampling:
    """How every slot samples: text and audio ``SamplingSettings`` and a random seed per slot. ``k_max`` of each
    bounds what a slot may ask for (it fixes the shape of the top-k step); ``greedy`` overrides every slot."""

    def __init__(self, batch: int, text_k_max: int, audio_k_max: int, device=None, greedy: bool = False,
                 branch_free: bool = False):
        self.batch, self.greedy = batch, greedy
        self.text = SamplingSettings(batch, 0.0, text_k_max, text_k_max, device, branch_free=branch_free)
        self.audio = SamplingSettings(batch, 0.0, audio_k_max, audio_k_max, device, branch_free=branch_free)
        self.seed = torch.zeros(batch, dtype=torch.long, device=device)

    def set(self, slot: Optional[int], sampling: SlotSampling) -> None:
        """One slot's settings (every slot's when ``slot`` is None, each then seeded ``sampling.seed`` + its
        index). The seed must be chosen by now (the engine picks a random one for None)."""
        if sampling.seed is None:
            raise ValueError("Sampling.set needs a seed (SlotSampling.seed is None)")
        self.audio.set(slot, 0.0 if self.greedy else sampling.temperature, sampling.top_k or self.audio.k_max)
        self.text.set(slot, 0.0 if self.greedy else sampling.text_temperature,
                      sampling.text_top_k or self.text.k_max)
        seed = sampling.seed % (1 << 62)
        if slot is None:
            self.seed.copy_(seed + torch.arange(self.batch, dtype=torch.long))
        else:
            self.seed[slot] = seed


def sample(logits: torch.Tensor, settings: SamplingSettings, noise: Optional[torch.Tensor]) -> torch.Tensor:
    """One token per row of ``logits`` [B, V]; ``noise`` [B, k_max]: Exp(1) variables from ``exponential_noise``
    (one draw of this step; unused, and may be None, when every slot is greedy)."""
    logits = logits.float()
    if not settings.any_sampling:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / settings.divisor, dim=-1)
    top_p, top_i = probs.topk(settings.k_max, dim=-1)  # sorted, largest first
    race = (top_p * settings.keep) / noise  # p / q, q ~ Exp(1)
    sampled = top_i.gather(-1, race.argmax(dim=-1, keepdim=True))[:, 0]
    if settings.all_sampling:
        return sampled
    return torch.where(settings.greedy, logits.argmax(dim=-1), sampled)
