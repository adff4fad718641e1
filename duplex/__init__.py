"""duplex: a full-duplex real-time speech dialogue engine compatible with Kyutai's Moshi and Mimi."""

import importlib

__version__ = "0.2.0"

# The public names are imported on first use, so that light modules (the client, the protocol) load without torch:
# a benchmark runs one client process per simulated user.
_EXPORTS = {"LMConfig": "model.config", "LMConfigError": "model.config", "Engine": "runtime.engine",
            "EngineFull": "runtime.engine", "SamplingOptions": "runtime.engine", "LMOutput": "model.lm",
            "MoshiLM": "model.lm", "ModelFiles": "runtime.checkpoints", "ModelFilesError": "errors",
            "SlotSampling": "model.sampling", "DuplexError": "errors", "default_model_paths": "runtime.checkpoints"}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'duplex' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])
