"""duplex: a full-duplex real-time speech dialogue engine compatible with Kyutai's Moshi and Mimi."""

__version__ = "0.1.0"

from .config import LMConfig, LMConfigError  # noqa: E402
from .engine import Engine, EngineFull, SamplingOptions  # noqa: E402
from .lm import LMOutput, MoshiLM  # noqa: E402

__all__ = ["MoshiLM", "LMOutput", "LMConfig", "LMConfigError", "Engine", "EngineFull", "SamplingOptions",
           "__version__"]
