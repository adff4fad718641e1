"""Moved to ``codec.train.trainer`` in the 2026-12 restructure; this alias of the old import path goes in the next
release (see the README, Layout)."""

import warnings

from .train.trainer import *  # noqa: F401,F403

warnings.warn("codec.training moved to codec.train.trainer; the old path will be removed", DeprecationWarning, stacklevel=2)
