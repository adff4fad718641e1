"""Reading the synthetic corpus for training: random crops of single channels, in memory as 16-bit samples."""

from __future__ import annotations

import json
import os
from typing import List

import numpy as np
import soundfile as sf
import torch

from codec import MimiConfig
from codec.io.audio import speech_frames

from ..errors import DatasetError

# Conversation channels are mostly silence (the other side is talking); crops centred on speech frames spend the
# training on what matters. A speech frame is one that overlaps a word of that channel's transcript (the corpus
# knows where every word is, and with --noise an energy threshold would call the noise floor speech); corpora
# without transcripts fall back to the codec quality bench's energy threshold.
# The corpus is made at the codec's rate, in its frames (Mimi's: 24 kHz, 80 ms frames of 1920 samples).
SAMPLE_RATE = MimiConfig().sample_rate
FRAME = MimiConfig().frame_size
CHANNELS = ("assistant", "user")  # channel 0, channel 1


def word_frames(meta: dict, samples: int, channel: int, rate: int = SAMPLE_RATE) -> np.ndarray:
    """bool [ceil(samples / FRAME)]: the frames of ``channel`` that overlap one of its transcript's words."""
    mask = np.zeros(-(-samples // FRAME), dtype=bool)
    for turn in meta.get("turns", []):
        if turn.get("channel") != CHANNELS[channel]:
            continue
        for word in turn.get("words", []):
            first = int(word["start"] * rate) // FRAME
            last = (int(np.ceil(word["end"] * rate)) - 1) // FRAME
            mask[max(first, 0):max(last + 1, 0)] = True
    return mask


class CorpusAudio:
    """Every channel of every conversation of one split, as mono clips to crop training segments from."""

    def __init__(self, corpus_dir: str, split: str = "train"):
        manifest = os.path.join(corpus_dir, "manifest.jsonl")
        if not os.path.exists(manifest):
            raise DatasetError(f"{corpus_dir} has no manifest.jsonl; make a corpus with 'duplex data synth'")
        rows = []
        with open(manifest, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    row["split"], row["wav"]  # noqa: B018 - the fields every row needs
                except (json.JSONDecodeError, TypeError, KeyError) as e:
                    raise DatasetError(f"{manifest}, line {number}: not a corpus entry ({type(e).__name__}: {e})") \
                        from None
                rows.append(row)
        self.clips: List[np.ndarray] = []
        self.speech_masks: List[np.ndarray] = []  # per clip, bool per frame (the last frame may be partial)
        for row in rows:
            if row["split"] != split:
                continue
            path = os.path.join(corpus_dir, row["wav"])
            try:
                audio, rate = sf.read(path, dtype="int16", always_2d=True)
            except (RuntimeError, OSError) as e:  # soundfile's errors for missing, unreadable or corrupt files
                raise DatasetError(f"{path}: cannot read this audio file ({e})") from None
            if rate != SAMPLE_RATE:
                raise DatasetError(f"{path}: expected {SAMPLE_RATE} Hz audio, got {rate} Hz")
            seconds, expected = len(audio) / rate, row.get("duration")
            if isinstance(expected, (int, float)) and abs(seconds - expected) > 0.05:
                raise DatasetError(f"{path}: {seconds:.2f} s of audio where the manifest says {expected:.2f} s "
                                 f"(a truncated or replaced file?)")
            meta = _read_json(os.path.join(corpus_dir, row["json"])) if "json" in row else None
            for c in range(audio.shape[1]):
                clip = np.ascontiguousarray(audio[:, c])
                self.clips.append(clip)
                self.speech_masks.append(
                    word_frames(meta, len(clip), c) if meta is not None and c < len(CHANNELS)
                    else speech_frames(clip.astype(np.float32) / 32768.0, FRAME, -(-len(clip) // FRAME)))
        if not self.clips:
            hint = " (a corpus made without held-out conversations: train without held-out losses)" \
                if split == "heldout" else ""
            raise DatasetError(f"{corpus_dir} has no '{split}' conversations{hint}")
        self.lengths = np.array([len(c) for c in self.clips], dtype=np.float64)
        # (clip, frame) of every whole speech frame, for speech-centred crops
        positions = []
        for index, (clip, mask) in enumerate(zip(self.clips, self.speech_masks)):
            frames = np.nonzero(mask[: len(clip) // FRAME])[0]  # whole frames only
            positions.append(np.stack([np.full_like(frames, index), frames], axis=1))
        self.speech_frames = np.concatenate(positions) if positions else np.zeros((0, 2), dtype=np.int64)

    @property
    def speech_seconds(self) -> float:
        return len(self.speech_frames) * FRAME / SAMPLE_RATE

    @property
    def seconds(self) -> float:
        return float(self.lengths.sum()) / SAMPLE_RATE

    def batch(self, batch_size: int, samples: int, generator: torch.Generator, speech: bool = False) -> torch.Tensor:
        """float32 [batch_size, 1, samples]: crops drawn with ``generator`` (so a resumed run draws the same).
        ``speech``: every crop contains a speech frame drawn uniformly from all of them, at a random place."""
        if speech and len(self.speech_frames):
            return self._speech_batch(batch_size, samples, generator)
        weights = torch.from_numpy(np.maximum(self.lengths - samples, 1.0))
        picks = torch.multinomial(weights, batch_size, replacement=True, generator=generator).tolist()
        out = torch.zeros(batch_size, 1, samples)
        for row, clip_index in enumerate(picks):
            clip = self.clips[clip_index]
            start = int(torch.randint(0, max(1, len(clip) - samples), (1,), generator=generator))
            piece = torch.from_numpy(clip[start:start + samples].astype(np.float32) / 32768.0)
            out[row, 0, :len(piece)] = piece
        return out

    def _speech_batch(self, batch_size: int, samples: int, generator: torch.Generator) -> torch.Tensor:
        out = torch.zeros(batch_size, 1, samples)
        picks = torch.randint(0, len(self.speech_frames), (batch_size,), generator=generator).tolist()
        offsets = torch.randint(0, max(1, samples - FRAME), (batch_size,), generator=generator).tolist()
        for row, (pick, offset) in enumerate(zip(picks, offsets)):
            clip_index, frame = self.speech_frames[pick]
            clip = self.clips[int(clip_index)]
            start = min(max(0, int(frame) * FRAME - offset), max(0, len(clip) - samples))
            piece = torch.from_numpy(clip[start:start + samples].astype(np.float32) / 32768.0)
            out[row, 0, :len(piece)] = piece
        return out


def _read_json(path: str):
    """A conversation's metadata, or None when it is missing or unreadable (speech is then found by energy)."""
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None
