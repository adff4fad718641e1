"""Explicit streaming state: nested dicts of preallocated tensors whose first axis is the batch slot.

Every streaming module builds its state with a ``new_state(batch, ...)`` (the transformer's also takes the chunk
length and whether the window is offline) and advances it in a ``step(x, state, ...)`` whose rows where an
``active`` mask is False do not advance (attention takes precomputed ring tables instead). All state tensors start at zero (flags are stored so that "fresh" is False/0), which makes a reset of
some slots one masked write of zeros over every leaf: no reallocation, no branching on tensor values, and the
same memory addresses before and after (so a captured CUDA graph stays valid).
"""

from __future__ import annotations

from typing import Iterator, Optional, Union

import torch

State = dict  # nested: str -> Tensor | State


def leaves(state: State) -> Iterator[torch.Tensor]:
    """Every tensor of a state (plain Python values, such as a ring's capacity, are fixed settings)."""
    for value in state.values():
        if isinstance(value, dict):
            yield from leaves(value)
        elif isinstance(value, torch.Tensor):
            yield value


def zero_rows(state: State, mask: Optional[torch.Tensor] = None) -> None:
    """Reset the slots where ``mask`` is True (all slots when ``mask`` is None) to the fresh state."""
    for t in leaves(state):
        if mask is None:
            t.zero_()
        else:
            t.masked_fill_(mask.view(-1, *([1] * (t.dim() - 1))), 0)


def zero_row(state: State, row: int) -> None:
    """Reset one slot (touches only that slot's memory, unlike a masked write over every slot)."""
    for t in leaves(state):
        t[row].zero_()


def keep_inactive(new: torch.Tensor, old: torch.Tensor, active: Optional[torch.Tensor]) -> torch.Tensor:
    """``new`` on the active rows, ``old`` elsewhere: rows that are not executing keep their state."""
    if active is None:
        return new
    return torch.where(active.view(-1, *([1] * (new.dim() - 1))), new, old)


def write_state(buffer: torch.Tensor, new: torch.Tensor, active: Optional[torch.Tensor]) -> None:
    """In-place update of a state tensor, limited to the active rows."""
    buffer.copy_(keep_inactive(new, buffer, active))


def as_row_mask(mask: Union[None, torch.Tensor, list, tuple], batch: int, device) -> Optional[torch.Tensor]:
    """Validate a user-supplied per-slot mask: bool [batch]."""
    if mask is None:
        return None
    mask = torch.as_tensor(mask, device=device)
    if mask.dtype != torch.bool:
        raise TypeError(f"reset mask must be a bool tensor, got dtype {mask.dtype}")
    if mask.shape != (batch,):
        raise ValueError(f"reset mask must have shape [{batch}] (one entry per slot), got {list(mask.shape)}")
    return mask
