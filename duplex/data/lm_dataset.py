"""LM training data: segments of conversations in Kyutai's fine-tuning layout, as [1 + 2 * Q, T] token grids.

A dataset folder holds JSONL manifests of ``{"path", "duration"}`` (``train.jsonl``, ``heldout.jsonl``; relative
paths resolve against the manifest's folder); beside each stereo WAV (channel 0 the model, channel 1 the user) an
``{"alignments": [[word, [start, end], "SPEAKER_MAIN"], ...]}`` JSON and the codes ``duplex data encode`` cached
(``NAME.codes.safetensors``). Rows of a segment: the text stream (``text_stream``), the model's Q codebooks, the
user's Q; frames past a file's end are -1 (the zero token: zero embedding, no loss), as in Kyutai's code.

Segments, per epoch (the order is a function of the seed and the epoch, so a resumed run sees the same data):
``consecutive`` cuts each file from its start into segments of T frames and one shorter last one (Kyutai's cut);
``random`` takes as many crops of T frames as that would give, at uniformly drawn places inside the file, so no
frame is padding (a file shorter than T is one padded segment either way).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from safetensors import safe_open

from codec import MimiConfig
from codec.io.files import readable_file

from ..errors import DatasetError, UsageError
from .encode import codes_path, load_stereo_codes
from .text_stream import Word, text_stream

SEGMENTS = ("random", "consecutive")



@dataclass
class Conversation:
    path: Path  # the WAV
    codes: torch.Tensor  # int16 [2, Q, S]: model, user
    words: List[Word]  # the model's words, sorted by start
    codec_weights: Optional[str] = None  # the fingerprint of the weights of the codec that made the codes, if recorded

    @property
    def frames(self) -> int:
        return self.codes.shape[-1]


def _read_text(path: Path, what: str, missing: str) -> str:
    """The UTF-8 text of a dataset file; a DatasetError naming it when it is ``missing`` (that message), not a
    readable regular file (a folder in its place, permission denied, a named pipe that would block) or not
    UTF-8."""
    if not os.path.lexists(path):  # readable_file says the rest (a folder, a broken link, permission denied)
        raise DatasetError(f"{path}: {missing}")
    readable_file(path, what, DatasetError)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: the {what} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:  # what readable_file could not foresee (a file removed meanwhile, an I/O error)
        raise DatasetError(f"{path}: cannot read the {what} ({e.strerror or e})") from None


def read_manifest(path: Path) -> List[Tuple[Path, float]]:
    """(WAV path, duration) per line of a Kyutai-layout manifest."""
    path = Path(path)
    text = _read_text(path, "manifest", "manifest not found")
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            wav, duration = entry["path"], float(entry["duration"])
        except (ValueError, TypeError, KeyError):
            raise DatasetError(f"{path}, line {number}: expected {{\"path\": ..., \"duration\": seconds}}") from None
        if not isinstance(wav, str) or not wav.strip():  # a number or a list would only fail later, as a traceback
            raise DatasetError(f"{path}, line {number}: \"path\" must be a file name, got {wav!r:.80}")
        if not math.isfinite(duration) or duration <= 0:
            raise DatasetError(f"{path}, line {number}: duration must be a positive number of seconds")
        entries.append((path.parent / wav, duration))
    if not entries:
        raise DatasetError(f"{path}: the manifest lists no files")
    return entries


def read_alignments(path: Path) -> List[Word]:
    """The model's words (``SPEAKER_MAIN``) of an alignments JSON, sorted by start; words with start >= end are
    dropped, as Kyutai's reader drops them."""
    text = _read_text(Path(path), "alignments file",
                      "no alignments file beside the WAV (the model's words with their times)")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise DatasetError(f"{path}: not JSON ({e})") from None
    entries = data.get("alignments") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: expected {{\"alignments\": [[word, [start, end], speaker], ...]}}")
    words = []
    for i, entry in enumerate(entries):
        try:
            word, (start, end), speaker = entry
            start, end = float(start), float(end)
        except (ValueError, TypeError):
            raise DatasetError(f"{path}: alignment {i} is not [word, [start, end], speaker]: {entry!r:.80}") from None
        if not isinstance(word, str) or not (math.isfinite(start) and math.isfinite(end)):
            raise DatasetError(f"{path}: alignment {i} has a non-text word or a non-finite time")
        if speaker == "SPEAKER_MAIN" and start < end:
            words.append((word, start, end))
    return sorted(words, key=lambda w: w[1])


def codes_frame_rate(manifest: Path) -> float:
    """The frame rate of a dataset's codes: the codec's, as ``duplex data encode`` recorded it in the codes file of
    the manifest's first entry; the default codec config's when that file does not say (or is not there yet:
    ``load_conversations`` names what is missing)."""
    try:
        wav, _ = read_manifest(manifest)[0]
        with safe_open(str(codes_path(wav)), framework="pt") as f:
            return float((f.metadata() or {})["frame_rate"])
    except Exception:  # missing, unreadable or silent: the default, which load_conversations checks every file by
        return MimiConfig().frame_rate


def load_conversations(manifest: Path, codebooks: int, frame_rate: float,
                       progress: Optional[Callable[[int, int], None]] = None,
                       card: Optional[int] = None) -> List[Conversation]:
    """Every file of ``manifest`` with its cached codes (the first ``codebooks`` of each channel) and words; with
    ``card`` (the LM's codebook size) the codes must lie in -1..card-1 (-1: the zero token)."""
    entries = read_manifest(manifest)
    conversations = []
    for i, (wav, duration) in enumerate(entries):
        try:
            codes, meta = load_stereo_codes(codes_path(wav))
        except Exception as e:
            raise DatasetError(f"{codes_path(wav)}: {e}; run 'duplex data encode {manifest.parent}'") from None
        if codes.dim() != 3 or codes.shape[0] != 2:
            raise DatasetError(f"{codes_path(wav)}: codes of shape {list(codes.shape)}, expected [2, Q, S]")
        if codes.shape[1] < codebooks:
            raise DatasetError(f"{codes_path(wav)}: {codes.shape[1]} codebooks per channel, the LM needs "
                               f"{codebooks}; encode with a codec of at least {codebooks}")
        if float(meta.get("frame_rate", frame_rate)) != frame_rate:
            raise DatasetError(f"{codes_path(wav)}: codes at {meta['frame_rate']} Hz, the LM runs at {frame_rate} Hz")
        # The manifest's duration decides the length, as in Kyutai's reader (never past the codes).
        frames = min(codes.shape[-1], math.ceil(duration * frame_rate))
        codes = codes[:, :codebooks, :frames]
        # Another codec's codes (a larger codebook) would only fail at the first step, as an IndexError; checked
        # before the int16 cast, which would wrap large values
        if card is not None and codes.numel() and not (-1 <= int(codes.min()) and int(codes.max()) < card):
            raise DatasetError(f"{codes_path(wav)}: codes from {int(codes.min())} to {int(codes.max())}, the LM's "
                               f"codebooks hold 0..{card - 1} (encoded with another codec? encode with the LM's)")
        conversations.append(Conversation(wav, codes.to(torch.int16).contiguous(),
                                          read_alignments(wav.with_suffix(".json")), meta.get("codec_weights")))
        if progress:
            progress(i + 1, len(entries))
    return conversations


def check_one_codec(conversations: Sequence[Conversation]) -> Optional[str]:
    """A DatasetError when the codes were made by codecs of other weights (datasets encoded apart, one of them with
    another codec of the same shape): an LM learns one codec's codes, and the codec it will run with is one. Files
    that do not record their codec's weights (encoded before duplex recorded them, or by other tools) cannot be
    checked: beside files that do, the returned note says so (None when there is nothing to say)."""
    first, unrecorded = {}, None
    for conv in conversations:
        if conv.codec_weights is None:
            unrecorded = unrecorded or conv.path
            continue
        first.setdefault(conv.codec_weights, conv.path)
        if len(first) > 1:
            (a, path_a), (b, path_b) = list(first.items())[:2]
            raise DatasetError(f"the codes were made by two codecs: {codes_path(path_a)} by codec weights {a}, "
                               f"{codes_path(path_b)} by {b} (encode every dataset with the LM's codec: "
                               "'duplex data encode DIR --checkpoint CODEC')")
    if first and unrecorded is not None:
        return (f"note: {codes_path(unrecorded)} (and maybe others) does not record which codec's weights made it, "
                "the other files do: if it was not the same codec, encode it again ('duplex data encode DIR "
                "--checkpoint CODEC' records it)")
    return None


class SegmentSource:
    """Batches of segments [B, 1 + 2Q, T] from ``conversations``, in an order fixed by ``seed``.

    ``position`` (epoch, index within the epoch) is all the state there is: a run saves it and resumes there."""

    def __init__(self, conversations: Sequence[Conversation], tokenize: Callable[[str], Sequence[int]],
                 segment_frames: int, frame_rate: float, segments: str = "random", seed: int = 0):
        if segments not in SEGMENTS:
            raise UsageError(f"segments must be one of {SEGMENTS}, got {segments!r}")
        if not conversations:
            raise DatasetError("the dataset has no conversations")
        self.conversations, self.tokenize = list(conversations), tokenize
        self.segment_frames, self.frame_rate, self.segments, self.seed = segment_frames, frame_rate, segments, seed
        self.position = (0, 0)
        self._epoch_cache: Tuple[int, List[Tuple[int, int]]] = (-1, [])
        self._tokens = {}

    def epoch(self, epoch: int) -> List[Tuple[int, int]]:
        """(conversation, first frame) of every segment of ``epoch``, shuffled."""
        if self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        t = self.segment_frames
        items = []
        for i, conv in enumerate(self.conversations):
            count = max(1, math.ceil(conv.frames / t))
            if self.segments == "consecutive" or conv.frames <= t:
                items += [(i, j * t) for j in range(count)]
            else:
                starts = torch.randint(0, conv.frames - t + 1, (count,), generator=g)
                items += [(i, int(s)) for s in starts]
        order = torch.randperm(len(items), generator=g).tolist()
        self._epoch_cache = (epoch, [items[k] for k in order])
        return self._epoch_cache[1]

    def segment(self, index: int, start: int) -> torch.Tensor:
        """[1 + 2Q, T] int64 of conversation ``index`` from frame ``start``; -1 past its end."""
        conv, t = self.conversations[index], self.segment_frames
        q = conv.codes.shape[1]
        out = torch.full((1 + 2 * q, t), -1, dtype=torch.long)
        length = max(0, min(t, conv.frames - start))
        out[0, :length] = torch.tensor(text_stream(conv.words, length, self._tokenize, self.frame_rate,
                                                   first_frame=start), dtype=torch.long)
        out[1:1 + q, :length] = conv.codes[0, :, start:start + length]
        out[1 + q:, :length] = conv.codes[1, :, start:start + length]
        return out

    def _tokenize(self, word: str) -> Sequence[int]:
        if word not in self._tokens:
            self._tokens[word] = list(self.tokenize(word))
        return self._tokens[word]

    def next_batch(self, batch_size: int) -> torch.Tensor:
        epoch, index = self.position
        rows = []
        while len(rows) < batch_size:
            items = self.epoch(epoch)
            if index >= len(items):
                epoch, index = epoch + 1, 0
                continue
            rows.append(self.segment(*items[index]))
            index += 1
        self.position = (epoch, index)
        return torch.stack(rows)

    def all_segments(self, batch_size: int):
        """Every segment of the first epoch's cut, in file order, in batches (held-out evaluation)."""
        t = self.segment_frames
        items = [(i, j * t) for i, conv in enumerate(self.conversations)
                 for j in range(max(1, math.ceil(conv.frames / t)))]
        for k in range(0, len(items), batch_size):
            yield torch.stack([self.segment(*item) for item in items[k:k + batch_size]])
