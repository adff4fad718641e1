"""Where model files come from: paths the user passes, environment variables, or the models shipped with duplex.

Nothing is ever downloaded.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

from .errors import UsageError

MIMI_ENV = "DUPLEX_MIMI"


def resolve_mimi_checkpoint(path: Optional[str], config: Optional[str] = None) -> Tuple[str, Optional[str]]:
    """(checkpoint, config) of the Mimi to use: ``path``, else ``$DUPLEX_MIMI``, else the codec shipped with duplex
    (with its own config; ``config`` then must not be given)."""
    path = path or os.environ.get(MIMI_ENV)
    if not path:
        from codec import SHIPPED_CODEC, SHIPPED_CONFIG

        if config is not None:
            raise UsageError("--config describes the codec of --checkpoint; the shipped codec brings its own "
                             "config (pass --checkpoint PATH with it)")
        return SHIPPED_CODEC, SHIPPED_CONFIG
    if not os.path.exists(path):
        raise UsageError(f"Mimi checkpoint not found: {path}")
    return path, config
