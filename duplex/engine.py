"""Moved to ``duplex.runtime.engine`` in the 2026-12 restructure; this alias of the old import path goes in the next
release (see the README, Layout)."""

import warnings

from .runtime.engine import *  # noqa: F401,F403

warnings.warn("duplex.engine moved to duplex.runtime.engine; the old path will be removed", DeprecationWarning, stacklevel=2)
