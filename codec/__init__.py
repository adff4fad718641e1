"""Streaming neural audio codec compatible with Kyutai's Mimi (24 kHz mono <-> RVQ codes at 12.5 Hz).

Standalone: nothing here imports ``duplex``.
"""

from .config import MimiConfig
from .errors import AudioError, CheckpointError, CodecError, CodesFileError, ConfigError, DependencyError
from .model import Mimi
from .shipped import SHIPPED_CODEC, SHIPPED_CONFIG, load_shipped_codec
from .stream import MimiStream

__all__ = ["Mimi", "MimiStream", "MimiConfig", "CodecError", "ConfigError", "CheckpointError", "AudioError",
           "CodesFileError", "DependencyError", "SHIPPED_CODEC", "SHIPPED_CONFIG",
           "load_shipped_codec"]
