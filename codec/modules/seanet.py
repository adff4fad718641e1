"""SEANet encoder and decoder (docs/kyutai-compat.md §1.3 and §1.4).

Both are flat layer lists whose indices are the state-dict indices of the published checkpoint
(``encoder.model.3.conv.conv.weight``): convolutions, residual blocks and ELU activations in order.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import SEANetConfig
from .conv import StreamingConv1d, StreamingConvTranspose1d
from .cpu_paths import cpu_fast_path
from .state import State


class ELU(nn.Module):
    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if cpu_fast_path(x) and not (torch.is_grad_enabled() and x.requires_grad):
            # PyTorch's CPU ELU evaluates expm1 element by element (~5x slower than exp here); this form is
            # exact for x > 0 and within 1.2e-7 of expm1 below.
            return torch.exp(x.clamp(max=0)).sub_(1).mul_(self.alpha).add_(F.relu(x))
        return F.elu(x, self.alpha)


class ResidualBlock(nn.Module):
    """``x + conv_k1(elu(conv_k(elu(x))))`` with an identity shortcut; ``block.1`` and ``block.3`` are the convs."""

    def __init__(self, dim: int, kernel_size: int, dilation: int, compress: int, alpha: float):
        super().__init__()
        hidden = dim // compress
        self.block = nn.ModuleList([
            ELU(alpha),
            StreamingConv1d(dim, hidden, kernel_size, dilation=dilation),
            ELU(alpha),
            StreamingConv1d(hidden, dim, 1),
        ])

    def new_state(self, batch: int, device=None, dtype=torch.float32) -> State:
        return {"1": self.block[1].new_state(batch, device, dtype)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act, conv1, _, conv2 = self.block
        return x + conv2(act(conv1(act(x))))

    def step(self, x: torch.Tensor, state: State, active: Optional[torch.Tensor] = None) -> torch.Tensor:
        act, conv1, _, conv2 = self.block
        return x + conv2(act(conv1.step(act(x), state["1"], active)))


class _LayerStack(nn.Module):
    """A sequence of layers, some of them stateful, run offline or one streaming chunk at a time."""

    model: nn.ModuleList

    def new_state(self, batch: int, device=None, dtype=torch.float32) -> State:
        return {str(i): layer.new_state(batch, device, dtype)
                for i, layer in enumerate(self.model) if hasattr(layer, "new_state")}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.model:
            x = layer(x)
        return x

    def step(self, x: torch.Tensor, state: State, active: Optional[torch.Tensor] = None) -> torch.Tensor:
        for i, layer in enumerate(self.model):
            x = layer.step(x, state[str(i)], active) if hasattr(layer, "step") else layer(x)
        return x


def _residual_blocks(cfg: SEANetConfig, dim: int, alpha: float) -> list:
    return [ResidualBlock(dim, cfg.residual_kernel_size, cfg.dilation_base ** j, cfg.compress, alpha)
            for j in range(cfg.n_residual_layers)]


class SEANetEncoder(_LayerStack):
    """Waveform [B, 1, T] -> latent [B, dimension, T / hop]. Downsampling strides are the ratios reversed."""

    def __init__(self, cfg: SEANetConfig):
        super().__init__()
        alpha = float(cfg.activation_params.get("alpha", 1.0))
        mult = 1
        layers: list = [StreamingConv1d(cfg.channels, cfg.n_filters, cfg.kernel_size)]
        for ratio in reversed(cfg.ratios):
            dim = mult * cfg.n_filters
            layers += _residual_blocks(cfg, dim, alpha)
            layers += [ELU(alpha), StreamingConv1d(dim, dim * 2, ratio * 2, stride=ratio)]
            mult *= 2
        layers += [ELU(alpha), StreamingConv1d(mult * cfg.n_filters, cfg.dimension, cfg.last_kernel_size)]
        self.model = nn.ModuleList(layers)


class SEANetDecoder(_LayerStack):
    """Latent [B, dimension, S] -> waveform [B, 1, S * hop]. No final activation."""

    def __init__(self, cfg: SEANetConfig):
        super().__init__()
        alpha = float(cfg.activation_params.get("alpha", 1.0))
        mult = 2 ** len(cfg.ratios)
        layers: list = [StreamingConv1d(cfg.dimension, mult * cfg.n_filters, cfg.kernel_size)]
        for ratio in cfg.ratios:
            dim = mult * cfg.n_filters
            layers += [ELU(alpha), StreamingConvTranspose1d(dim, dim // 2, ratio * 2, stride=ratio)]
            layers += _residual_blocks(cfg, dim // 2, alpha)
            mult //= 2
        layers += [ELU(alpha), StreamingConv1d(cfg.n_filters, cfg.channels, cfg.last_kernel_size)]
        self.model = nn.ModuleList(layers)
