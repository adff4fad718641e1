"""Audio files at the codec's edges: read any common format, mix to mono, resample to the codec rate, write.

soundfile (libsndfile) reads and writes WAV, FLAC, OGG/Vorbis, MP3 (libsndfile >= 1.1) and more; torchaudio's
band-limited sinc resampler converts the rate.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from typing import Optional, Tuple, Union

import numpy as np
import torch

from .files import write_atomically

PathLike = Union[str, os.PathLike]


class AudioError(ValueError):
    """An audio file that cannot be read or written, or audio that is not usable."""


class DependencyError(ImportError):
    """A library the codec needs is missing or does not load (the message says which and how to fix it)."""


def import_torchaudio():
    """The torchaudio module, or a one-line DependencyError naming torch's and torchaudio's versions and the fix.

    torchaudio's compiled library is built against one torch release: a mismatched pair (pip resolving
    ``torchaudio==2.11.*`` to 2.11.1 beside torch 2.11.0, say) fails at import with an undefined symbol deep in a
    dynamic loader traceback."""
    try:
        return importlib.import_module("torchaudio")
    except (OSError, ImportError) as e:
        try:
            installed = importlib.metadata.version("torchaudio")
        except importlib.metadata.PackageNotFoundError:
            installed = None
        wanted = torch.__version__.split("+")[0]
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        if installed is None:
            problem = "torchaudio is not installed"
        else:
            problem = f"torchaudio {installed} does not load with torch {torch.__version__} ({reason[-160:]})"
        raise DependencyError(f"{problem}; install the pair built together: "
                              f"pip install torch=={wanted} torchaudio=={wanted}") from None


def read_audio(path: PathLike) -> Tuple[torch.Tensor, int]:
    """(float32 [channels, samples] in [-1, 1], sample rate) of any file libsndfile reads."""
    import soundfile as sf

    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioError(f"audio file not found: {path}")
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError depending on the failure
        raise AudioError(f"cannot read audio file {path}: {e}") from None
    if data.shape[0] == 0:
        raise AudioError(f"audio file {path} contains no samples")
    return torch.from_numpy(np.ascontiguousarray(data.T)), int(rate)


def to_mono(pcm: torch.Tensor) -> torch.Tensor:
    """[channels, samples] -> [1, samples], the mean of the channels."""
    if pcm.dim() != 2:
        raise AudioError(f"expected audio of shape [channels, samples], got {list(pcm.shape)}")
    return pcm if pcm.shape[0] == 1 else pcm.mean(dim=0, keepdim=True)


def resample(pcm: torch.Tensor, from_rate: int, to_rate: int) -> torch.Tensor:
    """Resample along the last axis (torchaudio's windowed-sinc resampler)."""
    if from_rate <= 0 or to_rate <= 0:
        raise AudioError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    if from_rate == to_rate:
        return pcm
    return import_torchaudio().functional.resample(pcm, int(from_rate), int(to_rate))


def load_audio(path: PathLike, sample_rate: int = 24000) -> torch.Tensor:
    """Any audio file -> float32 mono [1, samples] at ``sample_rate``, checked to be finite."""
    pcm, rate = read_audio(path)
    pcm = resample(to_mono(pcm), rate, sample_rate)
    if not bool(torch.isfinite(pcm).all()):
        raise AudioError(f"audio file {os.fspath(path)} contains non-finite samples (NaN or inf)")
    return pcm


def save_audio(path: PathLike, pcm: torch.Tensor, sample_rate: int = 24000, subtype: Optional[str] = None) -> None:
    """Write float audio ([samples] or [channels, samples]) clipped to [-1, 1]; the format follows the file
    extension (WAV and FLAC default to 16-bit PCM, OGG to Vorbis). The file is written beside ``path`` and
    renamed into place, so an interrupted write never leaves half a file."""
    import soundfile as sf

    pcm = pcm.detach().float().cpu()
    if pcm.dim() == 1:
        pcm = pcm[None]
    if pcm.dim() != 2:
        raise AudioError(f"expected audio of shape [channels, samples], got {list(pcm.shape)}")
    samples = pcm.clamp(-1.0, 1.0).T.numpy()
    try:
        write_atomically(path, lambda temporary: sf.write(temporary, samples, int(sample_rate), subtype=subtype))
    except Exception as e:
        raise AudioError(f"cannot write audio file {os.fspath(path)}: {e}") from None
