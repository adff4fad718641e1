"""Errors the command line reports as a message (exit status 2) instead of a traceback."""

from __future__ import annotations


class UsageError(ValueError):
    """The user asked for something that cannot be done as asked (missing model file, bad option value)."""
