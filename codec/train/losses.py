"""The codec's reconstruction loss: L1 distance of log-mel spectrograms at several resolutions."""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

from ..eval.quality import MEL_FLOOR
from ..io.audio import import_torchaudio


class MultiScaleMelLoss(torch.nn.Module):
    """Mean L1 distance of log-mel spectrograms at several resolutions."""

    def __init__(self, sample_rate: int, scales: List[int], n_mels: int = 64):
        super().__init__()
        torchaudio = import_torchaudio()
        self.transforms = torch.nn.ModuleList([
            torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=n, hop_length=n // 4, n_mels=min(n_mels, n // 8),
                                                 power=1.0, center=True) for n in scales])

    def forward(self, estimate: torch.Tensor, target: torch.Tensor, linear_weight: float = 0.0) -> torch.Tensor:
        """Mean over scales of L1(log mel) + ``linear_weight`` * L1(mel): the linear term weighs the loud bins (the
        formants), where a log distance alone is slow to pull up an output that is still too quiet."""
        loss = estimate.new_zeros(())
        for mel in self.transforms:
            a, b = mel(estimate), mel(target)
            loss = loss + F.l1_loss(torch.log(a + MEL_FLOOR), torch.log(b + MEL_FLOOR))
            if linear_weight:
                loss = loss + linear_weight * F.l1_loss(a, b)
        return loss / len(self.transforms)


# ------------------------------------------------------------------------------------------------- trainer
