"""Optional adversarial training of the codec: a multi-period waveform discriminator and its losses.

Why: a decoder trained on spectrogram distances alone does not learn pitch. The shipped codec's harmonics sit on
the 25 Hz grid of its latent frames (a decoder fed the same latent frame after frame can only output a waveform
that repeats every 960 samples), so its pitch is on that grid whatever the speaker's (docs/benchmarks.md, codec
training, measures how often); magnitude losses neither make the codes
carry the voice's phase nor give a harmonic one grid step away any useful gradient. A discriminator that looks
at the waveform folded by several periods (HiFi-GAN's multi-period design, Kong et al. 2020) judges exactly
that periodic structure. It is used only in training; inference and streaming
never see it.

Losses: hinge for the discriminator and the generator, and feature matching (L1 between the discriminator's
internal activations on the real and the decoded audio, each layer normalised by the mean magnitude of its real
activations).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

Outputs = List[Tuple[torch.Tensor, List[torch.Tensor]]]  # per sub-discriminator: (logits, feature maps)


class PeriodDiscriminator(nn.Module):
    """Reads the waveform as an image of ``period`` columns ([B, 1, T / period, period]) and convolves along time
    only, so every column sees one phase of the period."""

    def __init__(self, period: int, channels: Sequence[int] = (16, 32, 64, 64)):
        super().__init__()
        self.period = period
        layers, c_in = [], 1
        for i, c_out in enumerate(channels):
            stride = 1 if i == len(channels) - 1 else 3
            layers.append(nn.Conv2d(c_in, c_out, (5, 1), (stride, 1), padding=(2, 0)))
            c_in = c_out
        self.convs = nn.ModuleList(layers)
        self.post = nn.Conv2d(c_in, 1, (3, 1), padding=(1, 0))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        b, _, t = x.shape
        pad = (-t) % self.period
        if pad:
            x = F.pad(x, (0, pad), mode="reflect")
        h = x.view(b, 1, -1, self.period)
        features = []
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.1)
            features.append(h)
        h = self.post(h)
        features.append(h)
        return h.flatten(1), features


class MultiPeriodDiscriminator(nn.Module):
    def __init__(self, periods: Sequence[int] = (2, 3, 5, 7, 11), channels: Sequence[int] = (16, 32, 64, 64)):
        super().__init__()
        self.discriminators = nn.ModuleList([PeriodDiscriminator(p, channels) for p in periods])

    def forward(self, x: torch.Tensor) -> Outputs:
        """x float [B, 1, T] -> one (logits, feature maps) pair per period."""
        return [d(x) for d in self.discriminators]


def discriminator_loss(real: Outputs, fake: Outputs) -> torch.Tensor:
    """Hinge: push real logits above +1 and decoded ones below -1."""
    loss = sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for (r, _), (f, _) in zip(real, fake))
    return loss / len(real)


def generator_loss(fake: Outputs) -> torch.Tensor:
    """Hinge for the generator: push the logits of decoded audio above +1."""
    return sum(F.relu(1 - f).mean() for f, _ in fake) / len(fake)


def feature_matching_loss(real: Outputs, fake: Outputs) -> torch.Tensor:
    """Mean over layers of L1(real, fake) / mean |real| (real activations are targets: no gradient)."""
    terms = [F.l1_loss(f, r.detach()) / (r.detach().abs().mean() + 1e-5)
             for (_, real_maps), (_, fake_maps) in zip(real, fake) for r, f in zip(real_maps, fake_maps)]
    return sum(terms) / len(terms)
