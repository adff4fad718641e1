"""``MimiStream``: one explicit, preallocated streaming state (one row per slot) of a ``Mimi`` model.

Several streams of one model are independent: all state lives here, including how many codebooks the stream
encodes, none in the model.
"""

from __future__ import annotations

from typing import Optional

import torch

from .checks import check_codes, check_pcm
from .modules.state import State, as_row_mask, zero_rows


class MimiStream:
    def __init__(self, mimi, batch_size: int, num_codebooks: Optional[int] = None):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.mimi = mimi
        self.batch_size = batch_size
        self.num_codebooks = mimi.num_codebooks if num_codebooks is None else num_codebooks
        self.encoder_state: State = mimi.new_encoder_state(batch_size)
        self.decoder_state: State = mimi.new_decoder_state(batch_size)

    def _active(self, active) -> Optional[torch.Tensor]:
        return as_row_mask(active, self.batch_size, self.mimi.device)

    @torch.no_grad()
    def encode(self, pcm: torch.Tensor, active: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Audio [B, 1, n * frame_size] -> codes [B, num_codebooks, n], one frame at a time.

        ``active`` (bool [B], optional): rows that are False are computed but their state does not advance.
        """
        m = self.mimi
        pcm = check_pcm(pcm, "stream encode", device=m.device, dtype=m.dtype, frame_size=m.frame_size,
                        batch=self.batch_size)
        active = self._active(active)
        frames = pcm.split(m.frame_size, dim=-1)
        codes = [m.encode_step(frame, self.encoder_state, active, self.num_codebooks) for frame in frames]
        return codes[0] if len(codes) == 1 else torch.cat(codes, dim=-1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, active: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Codes [B, K, n] -> audio [B, 1, n * frame_size], one code frame at a time."""
        m = self.mimi
        codes = check_codes(codes, "stream decode", m.cardinality, m.total_codebooks, device=m.device,
                            batch=self.batch_size)
        active = self._active(active)
        frames = [m.decode_step(c, self.decoder_state, active) for c in codes.split(1, dim=-1)]
        return frames[0] if len(frames) == 1 else torch.cat(frames, dim=-1)

    def reset(self, mask: Optional[torch.Tensor] = None) -> None:
        """Restart the slots where ``mask`` (bool [B]) is True; all slots when ``mask`` is None."""
        mask = as_row_mask(mask, self.batch_size, self.mimi.device)
        zero_rows(self.encoder_state, mask)
        zero_rows(self.decoder_state, mask)
