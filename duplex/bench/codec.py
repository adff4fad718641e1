"""``duplex bench codec``: which codec the streaming codec benchmark (``codec.eval.bench``, which does not know
duplex's files) times when the command names a file, a config or nothing. Nothing names the codec ``duplex serve``
runs by default, so that the figures are those of the codec a user meets first."""

from __future__ import annotations

from typing import Optional, Tuple

from codec import SHIPPED_CODEC, SHIPPED_CONFIG

from ..runtime.checkpoints import PathLike, codec_config_for

OFFICIAL = "official"  # the config value that names Kyutai's Mimi shape (random weights)


def codec_to_time(checkpoint: Optional[PathLike] = None, config: Optional[PathLike] = None
                  ) -> Tuple[Optional[str], Optional[str]]:
    """(checkpoint, config) for ``codec.eval.bench.bench_codec``: a ``checkpoint`` with ``config``, else the config
    that travels with it (``codec_config_for``); no checkpoint and ``config`` 'official', Kyutai's Mimi shape with
    random weights (the timing does not depend on the weights); a config alone, that shape with random weights;
    neither, the shipped codec."""
    if checkpoint is not None:
        return str(checkpoint), codec_config_for(checkpoint, config)
    if config == OFFICIAL:
        return None, None
    if config:
        return None, str(config)
    return SHIPPED_CODEC, SHIPPED_CONFIG
