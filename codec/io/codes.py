"""Codes files: a codec's codes as safetensors (an int16 ``codes`` tensor ``[1, K, S]``) with metadata (format,
sample and frame rates, the original length, a fingerprint of the codec's configuration), checked when read."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Mapping

import torch
from safetensors import safe_open

from ..config import MimiConfig
from ..errors import CodesFileError
from .checkpoint import write_safetensors

CODES_FORMAT = "duplex-codes/1"


def codec_fingerprint(config: MimiConfig) -> str:
    """Names the codec's configuration (not its weights): codes from a codec of another shape are refused."""
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def weights_fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """Names a codec's weights (its ``state_dict()``): two codecs of one configuration trained apart, or one and its
    fine-tune, make other codes from the same audio, which ``codec_fingerprint`` cannot tell apart."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{value.dtype}:{tuple(tensors[name].shape)};".encode())
        digest.update(value.view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def save_codes(path: str, codes: torch.Tensor, config: MimiConfig, num_samples: int) -> None:
    """Write ``codes`` [1, K, S] made by a codec of ``config`` from ``num_samples`` samples of audio.

    Only the codec's configuration is needed (its rates and fingerprint), not the model: the I/O layer stays below
    the model."""
    # Codes are < 2048 (< 32768 for any codec we load), so int16 storage is exact and 4x smaller than int64.
    write_safetensors({"codes": codes.to(torch.int16).contiguous().cpu()}, path, metadata={
        "format": CODES_FORMAT, "sample_rate": str(config.sample_rate), "frame_rate": str(config.frame_rate),
        "num_samples": str(num_samples), "num_codebooks": str(codes.shape[1]), "codec": codec_fingerprint(config)})


def load_codes(path: str, config: MimiConfig):
    """(codes int64 [1, K, S], number of samples of the original audio or None), checked against ``config``, the
    configuration of the codec that is to decode them: an integer tensor of one item, and metadata (written by
    ``save_codes``) that matches the codes and the codec."""
    if not os.path.exists(path):
        raise CodesFileError(f"codes file not found: {path}")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            if "codes" not in f.keys():
                raise CodesFileError(f"{path} is not a codes file (no 'codes' tensor; has {sorted(f.keys())})")
            codes = f.get_tensor("codes")
    except CodesFileError:
        raise
    except Exception as e:
        raise CodesFileError(f"{path} is not a readable safetensors codes file ({e})") from None
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise CodesFileError(f"{path}: codes must be integers, got {str(codes.dtype).replace('torch.', '')}")
    if codes.dim() == 2:
        codes = codes[None]
    if codes.dim() != 3 or codes.shape[0] != 1:
        raise CodesFileError(f"{path}: codes must be [codebooks, frames] or [1, codebooks, frames], got "
                         f"{list(codes.shape)}" + (" (a batch: one file holds one item)" if codes.dim() == 3 else ""))

    def field(name: str, cast=str):
        if name not in metadata:
            return None
        try:
            return cast(metadata[name])
        except ValueError:
            raise CodesFileError(f"{path}: metadata {name}={metadata[name]!r} is not a valid value") from None

    if field("format") not in (None, CODES_FORMAT):
        raise CodesFileError(f"{path}: metadata format={metadata['format']!r}, expected {CODES_FORMAT!r}")
    for name, expected in (("sample_rate", config.sample_rate), ("frame_rate", config.frame_rate)):
        value = field(name, float)
        if value is not None and value != expected:
            raise CodesFileError(f"{path}: encoded at {name}={metadata[name]}, but this codec has {expected:g}: decode "
                             "it with the codec that encoded it")
    fingerprint = field("codec")
    if fingerprint is not None and fingerprint != codec_fingerprint(config):
        raise CodesFileError(f"{path} was encoded by a codec of another configuration: decode it with the codec "
                         "that encoded it (its checkpoint and config)")
    frames = codes.shape[-1]
    num_samples = field("num_samples", int)
    if num_samples is not None and not (frames - 1) * config.frame_size < num_samples <= frames * config.frame_size:
        raise CodesFileError(f"{path}: metadata num_samples={num_samples} does not fit {frames} frames (audio of "
                         f"{(frames - 1) * config.frame_size + 1} to {frames * config.frame_size} samples)")
    return codes.long(), num_samples
