"""The codec's own error classes, all under one base, ``CodecError``: what a caller (and ``duplex``'s command line)
reports as one line because the input is wrong, not the code. Anything else is a programming error.

This module imports nothing, so every layer of the codec can raise these without importing upward.
"""

from __future__ import annotations


class CodecError(Exception):
    """Base of every error the codec raises on purpose (a bad file, config, audio or environment)."""


class ConfigError(CodecError, ValueError):
    """A codec configuration that is malformed or asks for something this implementation does not support."""


class CheckpointError(CodecError, ValueError):
    """A checkpoint file that cannot be read or does not match the model it is loaded into."""


class AudioError(CodecError, ValueError):
    """An audio file that cannot be read or written, or audio that is not usable."""


class DependencyError(CodecError, ImportError):
    """A library the codec needs is missing or does not load (the message says which and how to fix it)."""


class CodesFileError(CodecError, ValueError):
    """A codes file that is missing, unreadable, or does not fit its metadata or the codec that is to decode it."""
