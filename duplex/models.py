"""Where model files come from: paths the user passes, environment variables, or the models shipped with duplex.

Nothing is ever downloaded.
"""

from __future__ import annotations

import os
from typing import Optional

from .errors import UsageError

MIMI_ENV = "DUPLEX_MIMI"


def resolve_mimi_checkpoint(path: Optional[str]) -> str:
    """The Mimi checkpoint to use: ``path``, else ``$DUPLEX_MIMI``; a clear error when there is none."""
    path = path or os.environ.get(MIMI_ENV)
    if not path:
        raise UsageError(
            "no trained codec is installed yet: duplex does not ship its own codec weights until its training "
            "pipeline lands, and it never downloads any.\n"
            "  Pass a Kyutai Mimi checkpoint with --checkpoint PATH (for example "
            "tokenizer-e351c8d8-checkpoint125.safetensors from the kyutai/moshiko-pytorch-bf16 repository), "
            f"or set {MIMI_ENV}=PATH.\n"
            "  A codec with another configuration also needs --config CONFIG.json (official layout).")
    if not os.path.exists(path):
        raise UsageError(f"Mimi checkpoint not found: {path}")
    return path
