"""duplex's own default model, shipped with the package, so every command works out of the box and offline.

The LM (``duplex/weights/duplex-lm.safetensors``, bfloat16, Kyutai's key layout, with its ``config.json``-style
keyword file ``duplex-lm.json``) was trained by duplex on its synthetic corpus on a 2-core CPU, with the recipe in
docs/training.md; its tokenizer is ``duplex-tokenizer.model``. The codec is the one duplex trained and ships
(``codec.SHIPPED_CODEC``). What the model can and cannot do: README ("The default model").
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import torch

from codec import SHIPPED_CODEC, SHIPPED_CONFIG, Mimi, load_shipped_codec

from ..model.lm import MoshiLM, default_dtype
from ..model.tokenizer import TextTokenizer

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")
SHIPPED_LM = os.path.join(WEIGHTS_DIR, "duplex-lm.safetensors")
SHIPPED_LM_CONFIG = os.path.join(WEIGHTS_DIR, "duplex-lm.json")
SHIPPED_TOKENIZER = os.path.join(WEIGHTS_DIR, "duplex-tokenizer.model")
DEFAULT_SEED = 20261124  # the random-weight shapes some benchmarks time (``bench latency --model moshi_7b``)


def default_model_paths() -> Dict[str, str]:
    """Absolute paths of the shipped files: ``lm``, ``lm_config``, ``mimi``, ``mimi_config``, ``tokenizer``."""
    paths = {"lm": SHIPPED_LM, "lm_config": SHIPPED_LM_CONFIG, "mimi": SHIPPED_CODEC, "mimi_config": SHIPPED_CONFIG,
             "tokenizer": SHIPPED_TOKENIZER}
    missing = [path for path in paths.values() if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"the default model is missing from this installation: {', '.join(missing)}")
    return paths


def default_models(device: torch.device, dtype: Optional[torch.dtype] = None
                   ) -> Tuple[MoshiLM, Mimi, TextTokenizer]:
    """(LM, codec, tokenizer) of the default model on ``device``; dtype None: bfloat16 on CUDA, float32 on CPU."""
    device = torch.device(device)
    if dtype is None:
        dtype = default_dtype(device)
    paths = default_model_paths()
    lm = MoshiLM.from_checkpoint(paths["lm"], config=paths["lm_config"], device=device, dtype=dtype)
    mimi = load_shipped_codec(num_codebooks=lm.config.dep_q, device=device)
    return lm, mimi, TextTokenizer(paths["tokenizer"])
