"""Input checks for the language model, with errors that name the problem (outside the per-step hot path)."""

from __future__ import annotations

import numpy as np
import torch

from .config import LMConfig


def _as_int_tensor(x, where: str, what: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{where}: {what} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{where}: {what} must be an integer tensor, got dtype {x.dtype}")
    return x.long()


def _range_error(where: str, what: str, x: torch.Tensor, low: int, high: int) -> None:
    bad = (x < low) | (x >= high)
    if bool(bad.any()):
        raise ValueError(f"{where}: {what} must be in [{low}, {high}); found {int(bad.sum())} out of range "
                         f"(min {int(x.min())}, max {int(x.max())})")


def check_lm_codes(codes, cfg: LMConfig, where: str, allow_zero_token: bool = False) -> torch.Tensor:
    """Training codes [B, 1 + n_q, T]: text ids in [0, text_card), audio in [0, card) (or -1, the zero token)."""
    codes = _as_int_tensor(codes, where, "codes")
    if codes.dim() != 3:
        raise ValueError(f"{where}: codes must have shape [batch, {cfg.num_streams}, time], got rank {codes.dim()} "
                         f"shape {list(codes.shape)}")
    if codes.shape[1] != cfg.num_streams:
        raise ValueError(f"{where}: expected {cfg.num_streams} streams (1 text + {cfg.n_q} audio), "
                         f"got {codes.shape[1]}")
    if codes.shape[0] < 1 or codes.shape[2] < 1:
        raise ValueError(f"{where}: codes are empty (shape {list(codes.shape)})")
    low = -1 if allow_zero_token else 0
    _range_error(where, "text tokens (stream 0)", codes[:, 0], low, cfg.text_card)
    _range_error(where, "audio codes (streams 1..)", codes[:, 1:], low, cfg.card)
    return codes


def check_user_codes(codes, cfg: LMConfig, batch: int, where: str = "generator step") -> torch.Tensor:
    """The user's codes for one frame: [B, user_codebooks] (or [B, user_codebooks, 1]) in [0, card)."""
    codes = _as_int_tensor(codes, where, "user codes")
    if codes.dim() == 3 and codes.shape[-1] == 1:
        codes = codes[..., 0]
    n = cfg.user_codebooks
    if codes.dim() != 2:
        raise ValueError(f"{where}: user codes must have shape [batch, {n}], got {list(codes.shape)}")
    if codes.shape[0] != batch:
        raise ValueError(f"{where}: this generator has {batch} slots but the user codes have batch size "
                         f"{codes.shape[0]}")
    if codes.shape[1] != n:
        raise ValueError(f"{where}: expected the user's {n} codebooks per slot, got {codes.shape[1]}")
    _range_error(where, "user codes", codes, 0, cfg.card)
    return codes
