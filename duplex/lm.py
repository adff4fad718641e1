"""Moved to ``duplex.model.lm`` in the 2026-12 restructure; this alias of the old import path goes in the next
release (see the README, Layout)."""

import warnings

from .model.lm import *  # noqa: F401,F403

warnings.warn("duplex.lm moved to duplex.model.lm; the old path will be removed", DeprecationWarning, stacklevel=2)
