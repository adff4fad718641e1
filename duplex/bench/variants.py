"""Quantization variants of one benchmark run (``--variants none int8 fp8kv int8+fp8kv``): which linear-weight format
and which KV-ring dtype each timed engine or generator uses, so several are timed in the same run (docs/quantization.md,
"Memory and speed": these machines drift by a quarter within an hour, so a comparison is only made in one run).

A variant's name joins up to two parts with ``+``: a weight format (``none``, ``int8``, ``fp8``; ``--quantize``)
and a ring dtype followed by ``kv`` (``fp8kv``, ``bfloat16kv``, ``float32kv``, ``float16kv``; ``--kv-dtype``).
A part left out is the default: unquantized weights, the ring in the LM's own dtype (``autokv``, not written)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from ..runtime.quantization import KV_DTYPES, QUANTIZE_CHOICES, check_quantize, kv_dtype

KV_SUFFIX = "kv"


@dataclass(frozen=True)
class Variant:
    weights: str = "none"  # QUANTIZE_CHOICES
    kv: str = "auto"  # KV_DTYPES

    @property
    def name(self) -> str:
        parts = ([self.weights] if self.weights != "none" or self.kv == "auto" else []) + \
            ([self.kv + KV_SUFFIX] if self.kv != "auto" else [])
        return "+".join(parts)

    @property
    def quantize(self) -> Optional[str]:
        """What ``MoshiLM.quantize_`` / ``ModelFiles.load(quantize=)`` take (None: as loaded)."""
        return check_quantize(self.weights)

    @property
    def kv_dtype(self) -> Optional[torch.dtype]:
        """What ``Engine(kv_dtype=)`` / ``lm.generator(kv_dtype=)`` take (None: the LM's dtype)."""
        return kv_dtype(self.kv)


def parse_variant(name: str) -> Variant:
    """The variant a name gives (module docstring), or ValueError naming what is allowed."""
    weights, kv = None, None
    for part in name.split("+"):
        if part in QUANTIZE_CHOICES and weights is None:
            weights = part
        elif part.endswith(KV_SUFFIX) and part[:-len(KV_SUFFIX)] in KV_DTYPES and kv is None:
            kv = part[:-len(KV_SUFFIX)]
        else:
            raise ValueError(f"variant {name!r}: expected a weight format ({', '.join(QUANTIZE_CHOICES)}) and/or a KV "
                             f"dtype ({', '.join(k + KV_SUFFIX for k in KV_DTYPES)}) joined by '+', e.g. int8+fp8kv")
    return Variant(weights or "none", kv or "auto")


def variants_of(names: Optional[Sequence[str]], quantize: Optional[str] = None,
                kv: Optional[str] = None) -> List[Variant]:
    """The variants to time: ``names`` (``--variants``; duplicates dropped, order kept), else the one variant of
    ``--quantize`` and ``--kv-dtype``."""
    if not names:
        return [Variant(quantize or "none", kv or "auto")]
    out: List[Variant] = []
    for name in names:
        variant = parse_variant(name)
        if variant not in out:
            out.append(variant)
    return out


def baseline_of(variants: Sequence[Variant]) -> Variant:
    """What the others are compared with: the unquantized variant (weights and ring in the LM's dtype) when there
    is one, else the first."""
    plain = Variant()
    return plain if plain in variants else variants[0]
