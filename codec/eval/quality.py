"""Reconstruction quality of a codec: mel distance, SI-SNR, STOI (pystoi), pitch error and codebook usage
(perplexity)."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..io.audio import import_torchaudio, speech_frames

# Floor of the log-mel magnitudes (~80 dB below speech at 0.1-0.3 peak): without it, digital silence (log 1e-5)
# makes any faint output in silent stretches dominate a mel distance (this measure and the training loss).
MEL_FLOOR = 1e-2


def si_snr(estimate: np.ndarray, reference: np.ndarray, eps: float = 1e-8) -> float:
    """Scale-invariant signal-to-noise ratio in dB."""
    reference = reference - reference.mean()
    estimate = estimate - estimate.mean()
    target = (np.dot(estimate, reference) / (np.dot(reference, reference) + eps)) * reference
    noise = estimate - target
    return float(10 * np.log10((np.dot(target, target) + eps) / (np.dot(noise, noise) + eps)))


def mel_distance(estimate: np.ndarray, reference: np.ndarray, sample_rate: int = 24000) -> float:
    """Mean absolute difference of log-mel magnitudes (80 mels, 1024-point FFT, hop 256; floor 1e-2, ~80 dB below
    speech, so digital silence does not dominate)."""
    torchaudio = import_torchaudio()
    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=1024, hop_length=256, n_mels=80, power=1.0)
    a = torch.log(mel(torch.from_numpy(estimate).float()) + MEL_FLOOR)
    b = torch.log(mel(torch.from_numpy(reference).float()) + MEL_FLOOR)
    return float((a - b).abs().mean())


def stoi(estimate: np.ndarray, reference: np.ndarray, sample_rate: int = 24000) -> float:
    import pystoi  # noqa: PLC0415  (it loads scipy.signal, over a second: only this measure needs it)

    return float(pystoi.stoi(reference, estimate, sample_rate, extended=False))


def perplexity(codes: torch.Tensor, bins: int) -> List[float]:
    """exp(entropy) of each codebook's code distribution; codes [K, N]."""
    out = []
    for row in codes:
        p = torch.bincount(row, minlength=bins).double()
        p = p / p.sum()
        nz = p[p > 0]
        out.append(float(torch.exp(-(nz * nz.log()).sum())))
    return out


# Pitch tracking. torchaudio's ``detect_pitch_frequency`` makes no voicing decision, which a pitch error between two
# signals needs (only frames voiced in both compare), so this is the textbook normalised-autocorrelation tracker.
PITCH_RANGE_HZ = (60.0, 400.0)
PITCH_WINDOW = 2048  # samples at 24 kHz: ~85 ms, several periods of the lowest pitch
PITCH_HOP = 480  # 20 ms
PITCH_MIN_DBFS = -40.0  # quieter windows are unvoiced
PITCH_VOICING = 0.5  # normalised autocorrelation needed at the period to call a window voiced
# Multiples of the period correlate as well as the period itself: the shortest-lag peak within this fraction of
# the best one is the period (longer lags would halve the pitch, shorter ones double it).
PITCH_OCTAVE_TOLERANCE = 0.9
GROSS_PITCH_ERROR = 0.2  # the usual "gross pitch error" threshold: more than 20% off


def pitch_track(clip: np.ndarray, sample_rate: int = 24000) -> np.ndarray:
    """float64 [frames]: the fundamental frequency (Hz) of each 20 ms hop of a mono ``clip`` ([samples] or
    [1, samples]), 0 where unvoiced."""
    clip = np.asarray(clip, dtype=np.float64)
    if clip.ndim == 2 and clip.shape[0] == 1:
        clip = clip[0]
    if clip.ndim != 1:
        raise ValueError(f"pitch_track expects mono audio [samples], got shape {list(clip.shape)}")
    window = int(round(PITCH_WINDOW * sample_rate / 24000))
    hop = int(round(PITCH_HOP * sample_rate / 24000))
    if len(clip) < window:
        return np.zeros(0)
    frames = np.lib.stride_tricks.sliding_window_view(clip, window)[::hop]
    loud = frames.std(axis=1) > 10 ** (PITCH_MIN_DBFS / 20)
    taper = np.hanning(window)
    frames = (frames - frames.mean(axis=1, keepdims=True)) * taper  # a DC offset or hum is no pitch

    def autocorrelation(x: np.ndarray) -> np.ndarray:
        return np.fft.irfft(np.abs(np.fft.rfft(x, n=2 * window, axis=-1)) ** 2, axis=-1)[..., :window]

    # Dividing by the taper's own autocorrelation removes its bias towards short lags (octave-up errors).
    ac = autocorrelation(frames) / np.maximum(autocorrelation(taper), 1e-12)
    r = ac / np.maximum(ac[:, :1], 1e-12)
    low = int(np.ceil(sample_rate / PITCH_RANGE_HZ[1]))
    high = int(sample_rate / PITCH_RANGE_HZ[0])
    lags = np.arange(low, high)
    inner = r[:, low:high]
    peak = (inner > r[:, low - 1:high - 1]) & (inner >= r[:, low + 1:high + 1])  # local maxima only
    scores = np.where(peak, inner, -np.inf)
    best = scores.max(axis=1)
    first = np.argmax(scores >= PITCH_OCTAVE_TOLERANCE * best[:, None], axis=1)
    value = scores[np.arange(len(scores)), first]
    voiced = loud & np.isfinite(best) & (value > PITCH_VOICING)
    return np.where(voiced, sample_rate / lags[first], 0.0)


def pitch_ratios(estimate: np.ndarray, reference: np.ndarray, sample_rate: int = 24000) -> np.ndarray:
    """estimated F0 / reference F0 over the frames voiced in both."""
    a, b = pitch_track(reference, sample_rate), pitch_track(estimate, sample_rate)
    n = min(len(a), len(b))
    both = (a[:n] > 0) & (b[:n] > 0)
    return b[:n][both] / a[:n][both]


def pitch_errors(ratios: np.ndarray) -> Dict[str, float]:
    """Median relative F0 error and the gross pitch error (share of frames more than 20% off); None without
    frames voiced in both."""
    if len(ratios) == 0:
        return {"pitch_error": None, "gross_pitch_error": None, "voiced_frames": 0}
    err = np.abs(ratios - 1)
    return {"pitch_error": float(np.median(err)), "gross_pitch_error": float(np.mean(err > GROSS_PITCH_ERROR)),
            "voiced_frames": int(len(err))}


@torch.no_grad()
def evaluate(mimi, clips: Sequence[np.ndarray], num_codebooks: int = 8,
             speech_masks: Optional[Sequence[np.ndarray]] = None) -> Dict:
    """Encode and decode each mono clip (float32, 24 kHz) offline and measure it. ``speech_masks``: bool per
    frame of each clip, which frames hold speech (for the speech-frame perplexity); default: frames louder than
    SPEECH_DBFS."""
    rows, all_codes, speech, ratios = [], [], [], []
    for index, clip in enumerate(clips):
        pcm = torch.from_numpy(np.ascontiguousarray(clip, dtype=np.float32))[None, None]
        codes = mimi.encode(pcm.to(mimi.device), num_codebooks)
        recon = mimi.decode(codes)[0, 0, : pcm.shape[-1]].cpu().numpy()
        all_codes.append(codes[0].cpu())
        frames = codes.shape[-1]
        if speech_masks is None:
            mask = speech_frames(clip, mimi.frame_size, frames)
        else:
            mask = np.zeros(frames, dtype=bool)
            given = np.asarray(speech_masks[index], dtype=bool)[:frames]
            mask[: len(given)] = given
        speech.append(torch.from_numpy(mask))
        ratios.append(pitch_ratios(recon, clip, mimi.sample_rate))
        rows.append({"mel_distance": mel_distance(recon, clip, mimi.sample_rate), "si_snr": si_snr(recon, clip),
                     "stoi": stoi(recon, clip, mimi.sample_rate), **pitch_errors(ratios[-1])})
    codes = torch.cat(all_codes, dim=-1)
    active = torch.cat(speech)
    ppl = perplexity(codes, mimi.cardinality)
    speech_ppl = perplexity(codes[:, active], mimi.cardinality) if bool(active.any()) else [0.0] * len(ppl)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("mel_distance", "si_snr", "stoi")}
    pitch = pitch_errors(np.concatenate(ratios))  # pooled over the voiced frames of all clips
    bitrate = num_codebooks * math.log2(mimi.cardinality) * mimi.frame_rate
    return {"num_codebooks": num_codebooks, "kbps": bitrate / 1000, "clips": len(rows), **mean, **pitch,
            "speech_frames_fraction": float(active.double().mean()),
            "speech_perplexity": speech_ppl,
            "speech_perplexity_fraction": [p / mimi.cardinality for p in speech_ppl],
            "min_speech_perplexity_fraction": min(p / mimi.cardinality for p in speech_ppl),
            "perplexity": ppl, "perplexity_fraction": [p / mimi.cardinality for p in ppl],
            "min_perplexity_fraction": min(p / mimi.cardinality for p in ppl), "per_clip": rows}


def plot_spectrograms(mimi, clip: np.ndarray, path: str, num_codebooks: int = 8, seconds: float = 6.0) -> None:
    import matplotlib  # noqa: PLC0415  (slow to import; only the plot needs it)
    from matplotlib.figure import Figure  # noqa: PLC0415  (no pyplot: the process's backend is left alone)

    clip = np.ascontiguousarray(clip[: int(seconds * mimi.sample_rate)], dtype=np.float32)
    with torch.no_grad():
        pcm = torch.from_numpy(clip)[None, None].to(mimi.device)
        recon = mimi.decode(mimi.encode(pcm, num_codebooks))[0, 0, : len(clip)].cpu().numpy()
    fig = Figure(figsize=(9, 5))
    axes = fig.subplots(2, 1, sharex=True)
    panels = ((axes[0], clip, "original"), (axes[1], recon, f"reconstruction, {num_codebooks} codebooks"))
    # Digital silence has zero power (-inf dB): drawn in the colour of the floor of a fixed scale, not left blank.
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="black", under="black")
    for ax, signal, title in panels:
        with np.errstate(divide="ignore"):
            ax.specgram(signal, NFFT=512, Fs=mimi.sample_rate, noverlap=384, cmap=cmap, vmin=-150)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("Hz")
    axes[1].set_xlabel("s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
