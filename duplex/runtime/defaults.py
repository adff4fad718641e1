"""duplex's own small default model, so every command works out of the box without downloading anything.

The codec is the one duplex trained itself and ships (``codec.SHIPPED_CODEC``, a small configuration of Mimi's
modules). Until the LM training pipeline delivers trained weights, the LM is a deterministic random-weight model
with the shipped architecture: the preset ``small`` (temporal 512 x 8 layers, depth 256 x 2, context 3000, Moshi's
vocabularies and delays). It exercises every code path at the real cost, but it does not talk sense: its audio is
babble and there is no tokenizer, so no text is shown.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from codec import Mimi, load_shipped_codec

from ..model.config import LMConfig
from ..model.lm import MoshiLM, default_dtype

DEFAULT_SEED = 20261124


def default_models(device: torch.device, dtype: Optional[torch.dtype] = None) -> Tuple[MoshiLM, Mimi, None]:
    """(LM, codec, tokenizer) of the default model on ``device``; dtype None: bfloat16 on CUDA, float32 on CPU."""
    device = torch.device(device)
    if dtype is None:
        dtype = default_dtype(device)
    lm = MoshiLM.random(LMConfig.small(), seed=DEFAULT_SEED, device=device, dtype=dtype)
    mimi = load_shipped_codec(num_codebooks=8, device=device)
    return lm, mimi, None
