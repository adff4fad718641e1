"""Preparing a process for real-time work: what to do once, after start-up and before the first frame.

Kept apart from the frame clock (runtime/clock.py): the clock is a pure schedule, this changes process-wide state
(the garbage collector) that every real-time command (``duplex serve``, ``mic``, ``bench serve``) sets up once.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> int:
    """Move every object alive now (PyTorch, the models, the server) out of the cyclic garbage collector's reach.

    A full collection walks all of them, which can take longer than a frame (docs/benchmarks.md, "Garbage
    collection"), at a moment nobody chooses. Frozen, a later full collection only walks what was created since.
    Call it once the engine is built, before real-time work starts. Returns the number of frozen objects."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
