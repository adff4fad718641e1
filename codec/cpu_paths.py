"""Moved to ``codec.modules.cpu_paths`` in the 2026-12 restructure; this alias of the old import path goes in the next
release (see the README, Layout)."""

import warnings

from .modules.cpu_paths import *  # noqa: F401,F403

warnings.warn("codec.cpu_paths moved to codec.modules.cpu_paths; the old path will be removed", DeprecationWarning, stacklevel=2)
