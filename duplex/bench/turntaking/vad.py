"""Speech activity with Silero VAD (the ``silero-vad`` package: its model ships inside the wheel, nothing is
downloaded), at 16 kHz as Full-Duplex-Bench runs it. Audio at any other rate is resampled first (FDB's
backchannel scorer assumes 16 kHz without checking)."""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

RATE = 16000
_MODEL = None


def _model():
    global _MODEL
    if _MODEL is None:
        try:
            from silero_vad import load_silero_vad
        except ImportError:
            raise RuntimeError("the turn-taking scorer needs the 'silero-vad' package: pip install silero-vad") from None
        _MODEL = load_silero_vad()
    return _MODEL


def speech_segments(pcm: np.ndarray, sample_rate: int, rounded: bool = False) -> List[Tuple[float, float]]:
    """[(start, end)] in seconds of speech in mono ``pcm``. ``rounded``: times to 0.1 s, as FDB's backchannel scorer
    gets them (``return_seconds=True``); otherwise exact to the sample, as its v1.5 timing."""
    import torch
    from silero_vad import get_speech_timestamps

    audio = torch.from_numpy(np.ascontiguousarray(pcm, dtype=np.float32))
    if sample_rate != RATE:
        from codec.io.audio import resample

        audio = resample(audio[None], sample_rate, RATE)[0]
    stamps = get_speech_timestamps(audio, _model(), sampling_rate=RATE, return_seconds=rounded)
    if rounded:
        return [(float(s["start"]), float(s["end"])) for s in stamps]
    return [(s["start"] / RATE, s["end"] / RATE) for s in stamps]


def read_mono(path) -> Tuple[np.ndarray, int]:
    """(float32 mono samples, rate) of an audio file (the codec's reader: any format, channels averaged)."""
    from codec.io.audio import read_audio, to_mono

    pcm, rate = read_audio(path)
    return to_mono(pcm)[0].numpy(), rate


def seconds_of(path) -> Optional[float]:
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception:
        return None
    return info.frames / info.samplerate
