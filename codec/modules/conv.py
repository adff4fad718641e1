"""Causal streaming convolutions (docs/kyutai-compat.md §1.5).

A streaming call on a fresh state and the offline call are the same computation, so ``forward`` (offline) is the
step on a fresh state. Parameter names mirror the published checkpoints (``conv.conv.weight``,
``convtr.convtr.weight``) so a Mimi state dict loads without renaming.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_paths import cpu_fast_path
from .linear import fast_linear
from .nest import Nest
from .state import State, write_state

# Calls with at most this many output steps per batch row read far more weight bytes than they do arithmetic
# (the deep SEANet layers see 2-16 steps per frame); they run as one matrix product over unfolded windows,
# which streams the weights faster than the direct convolution kernels on CPU.
_GEMM_MAX_STEPS = 4


class StreamingConv1d(nn.Module):
    """Causal Conv1d with a left-context buffer of ``(K - 1) * dilation + 1 - stride`` samples.

    ``replicate=True`` (the 25 -> 12.5 Hz downsample) fills the context of a slot's first call with copies of the
    first input sample instead of zeros.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1, groups: int = 1, bias: bool = True, replicate: bool = False):
        super().__init__()
        self.conv = Nest()
        self.conv.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation,
                                   groups=groups, bias=bias)
        self.in_channels = in_channels
        self.stride = stride
        self.replicate = replicate
        self.context = (kernel_size - 1) * dilation + 1 - stride
        if self.context < 0:
            raise ValueError(f"kernel {kernel_size} shorter than stride {stride} is not supported")

    @property
    def weight(self) -> torch.Tensor:
        return self.conv.conv.weight

    def new_state(self, batch: int, device=None, dtype=torch.float32) -> State:
        state = {"previous": torch.zeros(batch, self.in_channels, self.context, device=device, dtype=dtype)}
        if self.replicate:
            state["started"] = torch.zeros(batch, dtype=torch.bool, device=device)
        return state

    def _context(self, x: torch.Tensor, previous: Optional[torch.Tensor],
                 started: Optional[torch.Tensor]) -> torch.Tensor:
        """The left context to prepend: the carried samples, zeros, or (replicate, fresh) the first sample."""
        b, c, _ = x.shape
        if previous is None:
            previous = x.new_zeros(b, c, self.context)
        if self.replicate:
            first = x[..., :1].expand(b, c, self.context)
            previous = first if started is None else torch.where(started.view(-1, 1, 1), previous, first)
        return previous

    def _conv(self, full: torch.Tensor) -> torch.Tensor:
        c = self.conv.conv
        b, c_in, length = full.shape
        kernel = c.kernel_size[0]
        steps = (length - kernel) // self.stride + 1
        if steps <= _GEMM_MAX_STEPS and c.groups == 1 and c.dilation[0] == 1 and cpu_fast_path(full):
            windows = full.unfold(-1, kernel, self.stride).transpose(1, 2).reshape(b * steps, c_in * kernel)
            y = fast_linear(windows, c.weight.view(c.out_channels, c_in * kernel), c.bias)
            return y.view(b, steps, c.out_channels).transpose(1, 2)
        return F.conv1d(full, c.weight, c.bias, c.stride, 0, c.dilation, c.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Offline: the same as the first call of a fresh streaming state."""
        if self.context == 0:
            return self._conv(x)
        return self._conv(torch.cat([self._context(x, None, None), x], dim=-1))

    def step(self, x: torch.Tensor, state: State, active: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.context == 0:
            return self._conv(x)
        full = torch.cat([self._context(x, state["previous"], state.get("started")), x], dim=-1)
        y = self._conv(full)
        write_state(state["previous"], full[..., full.shape[-1] - self.context:], active)
        if self.replicate:
            write_state(state["started"], torch.ones_like(state["started"]), active)
        return y


class StreamingConvTranspose1d(nn.Module):
    """Causal ConvTranspose1d: the last ``K - stride`` samples of each call are carried and overlap-added into the
    next call's first samples (without the bias, which the next call adds itself)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 bias: bool = True):
        super().__init__()
        self.convtr = Nest()
        self.convtr.convtr = nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride=stride,
                                                groups=groups, bias=bias)
        self.out_channels = out_channels
        self.stride = stride
        self.overlap = kernel_size - stride
        if self.overlap < 0:
            raise ValueError(f"kernel {kernel_size} shorter than stride {stride} is not supported")

    @property
    def weight(self) -> torch.Tensor:
        return self.convtr.convtr.weight

    def new_state(self, batch: int, device=None, dtype=torch.float32) -> State:
        return {"partial": torch.zeros(batch, self.out_channels, self.overlap, device=device, dtype=dtype)}

    def _convtr(self, x: torch.Tensor) -> torch.Tensor:
        """Full transposed convolution, length ``(T - 1) * stride + K``."""
        c = self.convtr.convtr
        if c.groups != 1 or not cpu_fast_path(x):
            return F.conv_transpose1d(x, c.weight, c.bias, c.stride, 0, 0, c.groups)
        # One matrix product gives every input step's K-sample contribution; ``fold`` overlap-adds them. (PyTorch's
        # CPU transposed convolution takes a slow reference path: 25 ms for the first decoder layer at batch 1.)
        b, c_in, steps = x.shape
        kernel = c.kernel_size[0]
        w = c.weight.view(c_in, -1).t()  # [C_out * K, C_in], index c_out * K + k
        z = fast_linear(x.transpose(1, 2).reshape(b * steps, c_in), w)
        if kernel == 2 * self.stride:
            # SEANet's kernels are twice their stride, so each output sample sums exactly two contributions: add
            # the two halves of every step's K samples shifted by one step, then lay the result out once. The sum
            # is fold's, bit for bit (0 + a + b, in either order, is a + b), without fold's transposed copy of z
            # and its scatter (at batch 8 the last decoder layer took 11.8 ms that way, 4.2 ms this way).
            halves = z.view(b, steps, c.out_channels, 2, self.stride)
            y = z.new_zeros(b, steps + 1, c.out_channels, self.stride)
            y[:, :steps] += halves[:, :, :, 0]
            y[:, 1:] += halves[:, :, :, 1]
            y = y.permute(0, 2, 1, 3).reshape(b, c.out_channels, (steps + 1) * self.stride)
        else:
            y = F.fold(z.view(b, steps, -1).transpose(1, 2), output_size=(1, (steps - 1) * self.stride + kernel),
                       kernel_size=(1, kernel), stride=(1, self.stride)).squeeze(2)
        return y if c.bias is None else y + c.bias[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Offline: full transposed convolution with the trailing ``K - stride`` samples dropped."""
        return self._convtr(x)[..., : x.shape[-1] * self.stride]

    def step(self, x: torch.Tensor, state: State, active: Optional[torch.Tensor] = None) -> torch.Tensor:
        y = self._convtr(x)
        n_out = x.shape[-1] * self.stride
        if self.overlap == 0:
            return y
        partial = state["partial"]
        y[..., : self.overlap] += partial
        tail = y[..., n_out:]
        bias = self.convtr.convtr.bias
        write_state(partial, tail - bias[:, None] if bias is not None else tail, active)
        return y[..., :n_out]
