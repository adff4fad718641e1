"""Moved to ``duplex.model.tokenizer`` in the 2026-12 restructure; this alias of the old import path goes in the next
release (see the README, Layout)."""

import warnings

from .model.tokenizer import *  # noqa: F401,F403

warnings.warn("duplex.tokenizer moved to duplex.model.tokenizer; the old path will be removed", DeprecationWarning, stacklevel=2)
