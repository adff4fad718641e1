"""Where model files come from: paths the user passes, environment variables, or the models shipped with duplex.

Nothing is ever downloaded.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional, Tuple

from ..errors import UsageError

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
    return path, mimi_config_for(path, config)


def mimi_config_for(checkpoint: Optional[str], config: Optional[str]) -> Optional[str]:
    """The config to load ``checkpoint`` with: ``config`` when given, else the one that travels with the file
    (``config_beside``); None (the official architecture) without either."""
    if config is not None or not checkpoint:
        return config
    return config_beside(checkpoint)


def config_beside(checkpoint: str) -> Optional[str]:
    """The config that travels with a codec file made by duplex: ``NAME.json`` next to ``NAME.safetensors``
    (the exported inference file, as shipped), else the ``config.json`` of a training run folder (one holding
    ``trainer.pt``; other folders' ``config.json``, such as a model repository's LM config, are not codec
    configs). None (the official Mimi architecture) otherwise, as for Kyutai's published file."""
    stem, _ = os.path.splitext(checkpoint)
    if os.path.isfile(stem + ".json"):
        return stem + ".json"
    folder = os.path.dirname(checkpoint) or "."
    run_config = os.path.join(folder, "config.json")
    if os.path.isfile(run_config) and os.path.isfile(os.path.join(folder, "trainer.pt")):
        return run_config
    return None


@contextlib.contextmanager
def config_hint(checkpoint: str, config: Optional[str]) -> Iterator[None]:
    """Loading ``checkpoint`` as the official architecture failed while a ``config.json`` sits beside it that was
    not used (a run folder copied without its ``trainer.pt``): say so in the error."""
    from codec import CheckpointError

    try:
        yield
    except CheckpointError as e:
        beside = os.path.join(os.path.dirname(checkpoint) or ".", "config.json")
        if config is None and os.path.isfile(beside):
            raise CheckpointError(f"{e}\n(there is a {beside}: if it describes this codec, pass --config {beside})") \
                from None
        raise
