"""Audio files at the codec's edges: read any common format, mix to mono, resample to the codec rate, write.

soundfile (libsndfile) reads and writes WAV, FLAC, OGG/Vorbis, MP3 (libsndfile >= 1.1) and more; torchaudio's
band-limited sinc resampler converts the rate.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
import os
from typing import List, Optional, Tuple, Union

import numpy as np
import soundfile as sf
import torch

from ..errors import AudioError, DependencyError
from .files import write_atomically

PathLike = Union[str, os.PathLike]


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


# torchaudio's resampler builds one sinc kernel of (to / g) x (from / g + taps) entries, g = gcd(from, to): small
# for the usual rates (44.1 kHz -> 24 kHz: 80 x 160), gigabytes for rates that share no factor with 24 kHz (16001 Hz:
# 24000 x 16014). Past this size the same filter is evaluated per output sample instead.
_KERNEL_LIMIT = 1 << 20
_FILTER_WIDTH, _ROLLOFF = 6, 0.99  # torchaudio's defaults (Hann-windowed sinc)


def resample(pcm: torch.Tensor, from_rate: int, to_rate: int) -> torch.Tensor:
    """Resample along the last axis with a band-limited (Hann-windowed sinc) filter, torchaudio's by default;
    time and memory grow with the length of the audio, never with how little the two rates have in common."""
    if from_rate <= 0 or to_rate <= 0:
        raise AudioError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    from_rate, to_rate = int(from_rate), int(to_rate)
    if from_rate == to_rate:
        return pcm
    g = math.gcd(from_rate, to_rate)
    if (to_rate // g) * (from_rate // g) <= _KERNEL_LIMIT:
        return import_torchaudio().functional.resample(pcm, from_rate, to_rate, lowpass_filter_width=_FILTER_WIDTH,
                                                       rolloff=_ROLLOFF)
    return resample_any_ratio(pcm, from_rate, to_rate)


def resample_any_ratio(pcm: torch.Tensor, from_rate: int, to_rate: int, chunk: int = 8192) -> torch.Tensor:
    """torchaudio's filter (the same windowed sinc, width and roll-off, the same output length) evaluated at each
    output sample's position in the input: O(taps) per output sample for any pair of rates."""
    x = pcm.reshape(-1, pcm.shape[-1])
    length = x.shape[-1]
    out_length = -(-to_rate * length // from_rate)
    cutoff = min(from_rate, to_rate) * _ROLLOFF
    reach = math.ceil(_FILTER_WIDTH * from_rate / cutoff)  # input samples on each side with a nonzero weight
    padded = torch.nn.functional.pad(x, (reach + 1, reach + 2))
    offsets = torch.arange(-reach, reach + 2, dtype=torch.long)
    out = x.new_empty(x.shape[0], out_length)
    for start in range(0, out_length, chunk):
        n = torch.arange(start, min(start + chunk, out_length), dtype=torch.float64)
        position = n * from_rate / to_rate  # where output sample n falls in the input
        taps = position.floor().long()[:, None] + offsets
        u = ((taps - position[:, None]) * (cutoff / from_rate)).clamp(-_FILTER_WIDTH, _FILTER_WIDTH)
        window = torch.cos(u * (math.pi / (2 * _FILTER_WIDTH))) ** 2
        pu = torch.where(u == 0, torch.ones_like(u), math.pi * u)
        sinc = torch.where(u == 0, torch.ones_like(u), torch.sin(pu) / pu)
        weights = (sinc * window * (cutoff / from_rate)).to(x.dtype)
        out[:, start:start + len(n)] = (padded[:, taps + reach + 1] * weights).sum(-1)
    return out.reshape(*pcm.shape[:-1], out_length)


def load_audio(path: PathLike, sample_rate: int = 24000) -> torch.Tensor:
    """Any audio file -> float32 mono [1, samples] at ``sample_rate``, checked to be finite."""
    pcm, rate = read_audio(path)
    pcm = resample(to_mono(pcm), rate, sample_rate)
    if not bool(torch.isfinite(pcm).all()):
        raise AudioError(f"audio file {os.fspath(path)} contains non-finite samples (NaN or inf)")
    return pcm


def audio_conversions(path: PathLike, sample_rate: int) -> List[str]:
    """What ``load_audio(path, sample_rate)`` does to the file, for people: e.g. ``["resampled from 16000 Hz",
    "2 channels mixed to mono"]``; empty when nothing (or when the file cannot be read: this is only a note)."""
    try:
        info = sf.info(os.fspath(path))
    except Exception:
        return []
    notes = []
    if info.samplerate != sample_rate:
        notes.append(f"resampled from {info.samplerate} Hz")
    if info.channels != 1:
        notes.append(f"{info.channels} channels mixed to mono")
    return notes


def check_writable_format(path: PathLike) -> None:
    """Refuse, before any work, an output file name whose extension names no format soundfile writes."""
    extension = os.path.splitext(os.fspath(path))[1].lstrip(".").upper()
    if extension not in sf.available_formats() or sf.default_subtype(extension) is None:
        raise AudioError(f"output {os.fspath(path)}: unknown audio format {extension or '(no extension)'!r}; use "
                         ".wav, .flac or .ogg")


def save_audio(path: PathLike, pcm: torch.Tensor, sample_rate: int = 24000, subtype: Optional[str] = None) -> None:
    """Write float audio ([samples] or [channels, samples]) clipped to [-1, 1]; the format follows the file
    extension (WAV and FLAC default to 16-bit PCM, OGG to Vorbis). The file is written beside ``path`` and
    renamed into place, so an interrupted write never leaves half a file."""
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


# A codec frame counts as speech when the reference's RMS over it is above this (dBFS). Usage is reported over all
# frames and over speech frames: in conversation channels most frames are silence, which any codec spends on a
# handful of codes, so the all-frames perplexity mostly measures how much silence the clips hold.
SPEECH_DBFS = -50.0


def speech_frames(clip: np.ndarray, frame_size: int, num_frames: int) -> np.ndarray:
    """bool [num_frames]: frames of ``clip`` (zero-padded to whole frames) whose RMS is above SPEECH_DBFS."""
    padded = np.zeros(num_frames * frame_size, dtype=np.float32)
    n = min(len(clip), len(padded))
    padded[:n] = clip[:n]
    rms = np.sqrt((padded.reshape(num_frames, frame_size) ** 2).mean(axis=1))
    return rms > 10 ** (SPEECH_DBFS / 20)
