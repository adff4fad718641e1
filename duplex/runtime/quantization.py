"""The quantization options as users name them (``--quantize``, ``--kv-dtype``), and what runs, as
``/api/stats`` and the page say it (docs/quantization.md)."""

from __future__ import annotations

from typing import Optional, Union

import torch

from codec.modules.quantized import FP8, MODES

QUANTIZE_CHOICES = ("none", *MODES)  # --quantize
# --kv-dtype: "auto" is the LM's own dtype (float32 on CPU, bfloat16 on CUDA)
KV_DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "fp8": FP8}


def check_quantize(quantize: Optional[str]) -> Optional[str]:
    """``quantize`` as ``MoshiLM.from_checkpoint`` takes it (None: the file as it is), or ValueError."""
    if quantize in (None, "none"):
        return None
    if quantize not in MODES:
        raise ValueError(f"quantize={quantize!r}: expected one of {', '.join(QUANTIZE_CHOICES)}")
    return quantize


def kv_dtype(name: Union[None, str, torch.dtype]) -> Optional[torch.dtype]:
    """The KV rings' dtype for a ``--kv-dtype`` name (None and "auto": the LM's dtype), or ValueError."""
    if name is None or isinstance(name, torch.dtype):
        return name
    if name not in KV_DTYPES:
        raise ValueError(f"KV dtype {name!r}: expected one of {', '.join(KV_DTYPES)}")
    return KV_DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return "fp8" if dtype == FP8 else str(dtype).replace("torch.", "")


def describe(weights: str, kv: torch.dtype, compute: torch.dtype) -> dict:
    """What an engine runs: ``{"weights": "none" | "int8" | "fp8", "kv": <the rings' dtype>, "compute": <dtype>}``."""
    return {"weights": weights, "kv": dtype_name(kv), "compute": dtype_name(compute)}
