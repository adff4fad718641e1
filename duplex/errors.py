"""duplex's own error classes, all under one base, ``DuplexError`` (the codec's are under ``codec.CodecError``):
what the command line reports as one line (exit status 2), because the input, the files or the environment are
wrong, not the code. Anything else is a programming error and shows its traceback.

This module imports nothing: every package raises these without importing upward, and the torch-free client can
import it. The classes keep their ``ValueError`` / ``RuntimeError`` parents so that callers catching those still
work.
"""

from __future__ import annotations


class DuplexError(Exception):
    """Base of every error duplex raises on purpose."""


class UsageError(DuplexError, ValueError):
    """The user asked for something that cannot be done as asked (missing model file, bad option value)."""


class ModelFilesError(UsageError):
    """The files of a model cannot be found or do not go together (a missing LM, config, codec or tokenizer)."""


class LMConfigError(DuplexError, ValueError):
    """A language-model configuration that is malformed or asks for an unsupported feature."""


class TokenizerError(DuplexError, ValueError):
    """A tokenizer file that cannot be loaded."""


class EngineFull(DuplexError, RuntimeError):
    """Every slot of an engine is taken."""


class DatasetError(DuplexError, ValueError):
    """A training dataset that cannot be read as given (the message names the file and the problem)."""


class EncodeError(DuplexError, ValueError):
    """A manifest or an audio file that cannot be encoded (the message names it)."""


class EspeakError(DuplexError, RuntimeError):
    """espeak-ng is missing or refused a request."""


class ClientError(DuplexError, RuntimeError):
    """The server refused or ended the session (its message is included)."""


class FDBError(DuplexError, ValueError):
    """A sample folder or file that does not follow Full-Duplex-Bench's layout (the message names the file)."""


class SoundDeviceError(DuplexError, RuntimeError):
    """A sound device that cannot be opened as asked: sounddevice or PortAudio missing, no such device, or a
    device that refuses 24 kHz mono."""


class PromptError(DuplexError, ValueError):
    """A system prompt that cannot be used as given (a voice file that cannot be read, or was made for another
    model; a model without system prompts; prompt constants outside the model's vocabularies)."""


class FrontError(DuplexError, RuntimeError):
    """The server's front process (serving/front.py) could not start: it ended without listening (a Python that
    cannot import duplex, a certificate it cannot read)."""


class LoRAError(DuplexError, ValueError):
    """A LoRA adapter that cannot be used as given (not Kyutai's layout, another model's, a rank its config does not
    say, fused into quantized weights)."""
