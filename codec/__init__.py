"""Streaming neural audio codec compatible with Kyutai's Mimi (24 kHz mono <-> RVQ codes at 12.5 Hz).

Standalone: nothing here imports ``duplex``.
"""

from .io.checkpoint import CheckpointError
from .config import ConfigError, MimiConfig
from .model import Mimi
from .shipped import SHIPPED_CODEC, SHIPPED_CONFIG, load_shipped_codec
from .stream import MimiStream

__all__ = ["Mimi", "MimiStream", "MimiConfig", "ConfigError", "CheckpointError", "SHIPPED_CODEC", "SHIPPED_CONFIG",
           "load_shipped_codec"]
