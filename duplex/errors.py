"""The project's own error classes: what the command line reports as one line (exit status 2). Anything else is a
programming error and shows its traceback."""

from __future__ import annotations


class UsageError(ValueError):
    """The user asked for something that cannot be done as asked (missing model file, bad option value)."""


def project_errors() -> tuple:
    """Every error class that means "the input or the request is wrong", not "the code is wrong"."""
    from codec import CheckpointError, ConfigError
    from codec.io.audio import AudioError, DependencyError
    from codec.io.codes import CodesFileError

    from .bench.turntaking.fdb import FDBError
    from .model.config import LMConfigError
    from .model.tokenizer import TokenizerError

    return (UsageError, CheckpointError, ConfigError, AudioError, DependencyError, CodesFileError, LMConfigError,
            TokenizerError, FDBError)
