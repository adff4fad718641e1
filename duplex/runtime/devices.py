"""Which device to run on, from a name a person gives: ``auto`` (CUDA when there is one, else the CPU), ``cpu``,
``cuda`` or ``cuda:N``, checked against this machine before any model is loaded onto it (torch would otherwise
fail later, deep in a load, or accept devices duplex does not run on)."""

from __future__ import annotations

import torch

from ..errors import UsageError


def pick_device(name: str) -> torch.device:
    """The device ``name`` means on this machine, or a UsageError naming what is wrong with it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"device {name!r}: not a device name (cpu, cuda, cuda:N or auto)") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"device {name!r}: duplex runs on cpu or cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
