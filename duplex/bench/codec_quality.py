"""``duplex bench codec-quality``: a codec's reconstruction quality on the clips of a corpus made by ``duplex data
synth`` (the measures are ``codec.eval.quality``'s; the corpus reader is duplex's, which the codec package does not
import)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from codec.eval.quality import evaluate, plot_spectrograms

from ..data.codec_crops import CorpusAudio

SPLIT = "heldout"
MAX_CLIPS = 40  # channels evaluated at most
NUM_CODEBOOKS = 8


def codec_quality(mimi, corpus: str, split: str = SPLIT, num_codebooks: int = NUM_CODEBOOKS,
                  max_clips: int = MAX_CLIPS, plot: Optional[str] = None) -> dict:
    """Encode and decode up to ``max_clips`` channels of the corpus split; the report of ``evaluate`` (and with
    ``plot``, the spectrograms of the first clip and its reconstruction there)."""
    audio = CorpusAudio(corpus, split)
    clips = [c.astype(np.float32) / 32768.0 for c in audio.clips[:max_clips]]
    report = evaluate(mimi, clips, num_codebooks, speech_masks=audio.speech_masks[:max_clips])
    report["split"] = split
    if plot:
        plot_spectrograms(mimi, clips[0], plot, num_codebooks)
    return report


def format_summary(report: dict) -> str:
    """The report as one line a person reads."""
    if report["pitch_error"] is None:
        pitch = "no voiced frames to compare pitch"
    else:
        pitch = (f"pitch error {report['pitch_error']:.1%} median, {report['gross_pitch_error']:.0%} of "
                 f"{report['voiced_frames']} voiced frames more than 20% off")
    return (f"{report['clips']} clips, {report['num_codebooks']} codebooks ({report['kbps']:.2f} kbps): "
            f"STOI {report['stoi']:.3f}, SI-SNR {report['si_snr']:.2f} dB, mel distance {report['mel_distance']:.3f}, "
            f"{pitch}, smallest codebook perplexity {report['min_speech_perplexity_fraction']:.1%} of its size on "
            f"speech frames ({report['speech_frames_fraction']:.0%} of frames), "
            f"{report['min_perplexity_fraction']:.1%} on all frames")
