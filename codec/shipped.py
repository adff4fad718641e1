"""The codec duplex trained itself and ships (``codec/weights/``): loaded by default wherever no Mimi checkpoint is
given, so every command works out of the box. A small configuration of Mimi's modules in the official key layout,
stored in float16; it loads like any Mimi file (``Mimi.from_checkpoint(SHIPPED_CODEC, config=SHIPPED_CONFIG)``).
How it was trained and how good it is: README ("Training your own codec") and docs/benchmarks.md.
"""

from __future__ import annotations

import os
from typing import Union

import torch

from .io.checkpoint import write_safetensors
from .io.files import write_json
from .model import Mimi
from .modules.quantizer import Codebook

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
SHIPPED_CODEC = os.path.join(WEIGHTS_DIR, "duplex-codec-small.safetensors")
SHIPPED_CONFIG = os.path.join(WEIGHTS_DIR, "duplex-codec-small.json")


def load_shipped_codec(num_codebooks: int = 8, device: Union[str, torch.device] = "cpu") -> Mimi:
    """The shipped codec, in float32 on ``device``."""
    if not os.path.exists(SHIPPED_CODEC):
        raise FileNotFoundError(f"the shipped codec is missing from this installation: {SHIPPED_CODEC}")
    return Mimi.from_checkpoint(SHIPPED_CODEC, config=SHIPPED_CONFIG, num_codebooks=num_codebooks, device=device)


@torch.no_grad()
def export_for_inference(mimi: Mimi, path: str, dtype: torch.dtype = torch.float16) -> None:
    """Write ``mimi`` as an inference file in ``dtype`` (official key layout) plus its config next to it
    (``path`` with ``.json``). The codebooks are stored as their centroids with a usage of 1: the EMA sums and
    counts of training can be tiny numbers that half precision would round, their quotient is not."""
    state = {key: value.detach().cpu() for key, value in mimi.state_dict().items()}
    for prefix, codebook in _codebooks(mimi):
        state[f"{prefix}.embedding_sum"] = codebook.centroids.detach().cpu().clone()
        state[f"{prefix}.cluster_usage"] = torch.ones_like(codebook.cluster_usage).cpu()
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_safetensors(state, path)
    write_json(os.path.splitext(path)[0] + ".json", mimi.config.to_official_dict())


def _codebooks(mimi: Mimi):
    return [(name, module) for name, module in mimi.named_modules() if isinstance(module, Codebook)]
