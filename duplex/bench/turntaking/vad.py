"""Speech activity with Silero VAD (the ``silero-vad`` package: its model ships inside the wheel, nothing is
downloaded), at 16 kHz as Full-Duplex-Bench runs it. Audio at any other rate is resampled first (FDB's
backchannel scorer assumes 16 kHz without checking).

``silero_vad`` calls ``torch.set_num_threads(1)`` when it is imported; it is imported here with torch's thread
count put back, so that scoring does not slow down, or change the arithmetic of, whatever the process runs next (a
second ``bench turns run`` in the same process sampled differently from the first)."""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import soundfile as sf
import torch

from codec.errors import DependencyError
from codec.io.audio import read_audio, resample, to_mono

RATE = 16000
_MODEL = None


def _silero():
    """The ``silero_vad`` module, imported without its side effect on torch's thread count."""
    threads = torch.get_num_threads()
    try:
        import silero_vad  # noqa: PLC0415  an optional dependency, and its import resets torch's threads
    except ImportError:
        raise DependencyError("the turn-taking scorer needs the 'silero-vad' package: pip install silero-vad") from None
    finally:
        torch.set_num_threads(threads)
    return silero_vad


def _model():
    global _MODEL
    if _MODEL is None:
        _MODEL = _silero().load_silero_vad()
    return _MODEL


def speech_segments(pcm: np.ndarray, sample_rate: int, rounded: bool = False) -> List[Tuple[float, float]]:
    """[(start, end)] in seconds of speech in mono ``pcm``. ``rounded``: times to 0.1 s, as FDB's backchannel scorer
    gets them (``return_seconds=True``); otherwise exact to the sample, as its v1.5 timing."""
    audio = torch.from_numpy(np.ascontiguousarray(pcm, dtype=np.float32))
    if sample_rate != RATE:
        audio = resample(audio[None], sample_rate, RATE)[0]
    stamps = _silero().get_speech_timestamps(audio, _model(), sampling_rate=RATE, return_seconds=rounded)
    if rounded:
        return [(float(s["start"]), float(s["end"])) for s in stamps]
    return [(s["start"] / RATE, s["end"] / RATE) for s in stamps]


def read_mono(path) -> Tuple[np.ndarray, int]:
    """(float32 mono samples, rate) of an audio file (the codec's reader: any format, channels averaged)."""
    pcm, rate = read_audio(path)
    return to_mono(pcm)[0].numpy(), rate


def seconds_of(path) -> Optional[float]:
    """The length of an audio file from its header, or None when it cannot be read."""
    try:
        info = sf.info(str(path))
    except Exception:
        return None
    return info.frames / info.samplerate
