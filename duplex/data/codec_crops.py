"""Reading the synthetic corpus for training: random crops of single channels, in memory as 16-bit samples."""

from __future__ import annotations

import json
import os
from typing import List, Optional, Tuple, Union

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


def channel_words(meta: dict, channel: int, rate: int = SAMPLE_RATE) -> List[Tuple[int, int, str]]:
    """(first sample, end sample, word) of each word of ``channel``'s transcript, in time order."""
    words = [(int(w["start"] * rate), int(np.ceil(w["end"] * rate)), str(w["word"]))
             for turn in meta.get("turns", []) if turn.get("channel") == CHANNELS[channel]
             for w in turn.get("words", [])]
    return sorted(words)


def crop_text(words: List[Tuple[int, int, str]], start: int, samples: int) -> str:
    """The words of a crop [start, start + samples): those whose middle lies inside it (a word cut at an edge
    counts on the side that holds most of it)."""
    return " ".join(w for a, b, w in words if start <= (a + b) // 2 < start + samples)


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
        self.words: List[Optional[List[Tuple[int, int, str]]]] = []  # per clip, its transcript (None: unknown)
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
                self.words.append(channel_words(meta, c) if meta is not None and c < len(CHANNELS) else None)
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

    @property
    def transcribed(self) -> bool:
        """Whether every clip has its transcript (what ``batch(..., words=True)`` needs)."""
        return all(w is not None for w in self.words)

    def batch(self, batch_size: int, samples: int, generator: torch.Generator, speech: bool = False,
              words: bool = False) -> Union[torch.Tensor, Tuple[torch.Tensor, List[str]]]:
        """float32 [batch_size, 1, samples]: crops drawn with ``generator`` (so a resumed run draws the same).
        ``speech``: every crop contains a speech frame drawn uniformly from all of them, at a random place.
        ``words``: (crops, each crop's words as one string), for the codec's transcript loss; the crops are the
        same as without it."""
        if words and not self.transcribed:
            raise DatasetError("this corpus has channels without a transcript (no conversation .json); the "
                               "transcript loss needs a corpus of 'duplex data synth'")
        if speech and len(self.speech_frames):
            places = self._speech_places(batch_size, samples, generator)
        else:
            places = self._uniform_places(batch_size, samples, generator)
        out = torch.zeros(batch_size, 1, samples)
        for row, (clip_index, start) in enumerate(places):
            piece = torch.from_numpy(self.clips[clip_index][start:start + samples].astype(np.float32) / 32768.0)
            out[row, 0, :len(piece)] = piece
        if not words:
            return out
        return out, [crop_text(self.words[c], start, samples) for c, start in places]

    def _uniform_places(self, batch_size: int, samples: int, generator: torch.Generator) -> List[Tuple[int, int]]:
        weights = torch.from_numpy(np.maximum(self.lengths - samples, 1.0))
        picks = torch.multinomial(weights, batch_size, replacement=True, generator=generator).tolist()
        places = []
        for clip_index in picks:
            clip = self.clips[clip_index]
            places.append((clip_index, int(torch.randint(0, max(1, len(clip) - samples), (1,), generator=generator))))
        return places

    def _speech_places(self, batch_size: int, samples: int, generator: torch.Generator) -> List[Tuple[int, int]]:
        picks = torch.randint(0, len(self.speech_frames), (batch_size,), generator=generator).tolist()
        offsets = torch.randint(0, max(1, samples - FRAME), (batch_size,), generator=generator).tolist()
        places = []
        for pick, offset in zip(picks, offsets):
            clip_index, frame = self.speech_frames[pick]
            clip = self.clips[int(clip_index)]
            places.append((int(clip_index), min(max(0, int(frame) * FRAME - offset), max(0, len(clip) - samples))))
        return places


def _read_json(path: str):
    """A conversation's metadata, or None when it is missing or unreadable (speech is then found by energy)."""
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None
