"""Input checks with errors that name the problem. Run once per public call, outside the per-frame hot path."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch


def _as_tensor(x, where: str, what: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{where}: {what} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    return x


def check_pcm(pcm, where: str, device=None, dtype=torch.float32, frame_size: Optional[int] = None,
              batch: Optional[int] = None) -> torch.Tensor:
    """float audio [B, 1, T]: rank, channel count, length, finiteness (and, streaming, whole frames/batch)."""
    pcm = _as_tensor(pcm, where, "audio")
    if not pcm.is_floating_point():
        raise TypeError(f"{where}: audio must be floating point samples in [-1, 1], got dtype {pcm.dtype}")
    if pcm.dim() != 3:
        raise ValueError(f"{where}: audio must have shape [batch, 1, samples], got rank {pcm.dim()} "
                         f"shape {list(pcm.shape)}")
    if pcm.shape[1] != 1:
        raise ValueError(f"{where}: audio must be mono (1 channel), got {pcm.shape[1]} channels "
                         f"(shape {list(pcm.shape)}); mix down to mono first")
    if pcm.shape[0] < 1 or pcm.shape[-1] < 1:
        raise ValueError(f"{where}: audio is empty (shape {list(pcm.shape)})")
    if batch is not None and pcm.shape[0] != batch:
        raise ValueError(f"{where}: this stream has {batch} slots but the audio has batch size {pcm.shape[0]}")
    if frame_size is not None and pcm.shape[-1] % frame_size:
        raise ValueError(f"{where}: streaming audio must be a whole number of {frame_size}-sample frames, got "
                         f"{pcm.shape[-1]} samples ({pcm.shape[-1] / frame_size:.3f} frames)")
    if not bool(torch.isfinite(pcm).all()):
        bad = int((~torch.isfinite(pcm)).sum())
        raise ValueError(f"{where}: audio contains {bad} non-finite sample(s) (NaN or inf)")
    return pcm.to(device=device, dtype=dtype)


def check_codes(codes, where: str, cardinality: int, max_codebooks: int, device=None,
                num_codebooks: Optional[int] = None, batch: Optional[int] = None) -> torch.Tensor:
    """int codes [B, K, S] with 1 <= K <= max_codebooks and every value in [0, cardinality)."""
    codes = _as_tensor(codes, where, "codes")
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise TypeError(f"{where}: codes must be an integer tensor, got dtype {codes.dtype}")
    if codes.dim() != 3:
        raise ValueError(f"{where}: codes must have shape [batch, codebooks, frames], got rank {codes.dim()} "
                         f"shape {list(codes.shape)}")
    b, k, s = codes.shape
    if b < 1 or s < 1:
        raise ValueError(f"{where}: codes are empty (shape {list(codes.shape)})")
    if not 1 <= k <= max_codebooks:
        raise ValueError(f"{where}: got {k} codebooks, this codec has between 1 and {max_codebooks}")
    if num_codebooks is not None and k != num_codebooks:
        raise ValueError(f"{where}: expected {num_codebooks} codebooks, got {k}")
    if batch is not None and b != batch:
        raise ValueError(f"{where}: this stream has {batch} slots but the codes have batch size {b}")
    low, high = int(codes.min()), int(codes.max())
    if low < 0 or high >= cardinality:
        bad = codes[(codes < 0) | (codes >= cardinality)]
        raise ValueError(f"{where}: codes must be in [0, {cardinality}); found {bad.numel()} out of range "
                         f"(min {low}, max {high})")
    return codes.to(device=device, dtype=torch.long)
