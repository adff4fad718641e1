"""Moved to ``duplex.runtime.clock`` in the 2026-12 restructure; this alias of the old import path goes in the next
release (see the README, Layout)."""

import warnings

from .runtime.clock import *  # noqa: F401,F403

warnings.warn("duplex.clock moved to duplex.runtime.clock; the old path will be removed", DeprecationWarning, stacklevel=2)
