"""``duplex data encode DIR``: the codec's codes of both channels of every conversation, computed once and cached
beside each WAV (``NAME.codes.safetensors``), so that LM training does not run the codec every step.

The conversations are those the Kyutai-layout manifests of DIR list (every ``*.jsonl`` whose lines are
``{"path", "duration"}``: our corpus's ``train.jsonl`` and ``heldout.jsonl``, or a user's own dataset). Each codes
file holds int16 ``codes`` [2, K, S] (channel 0, the model's, then channel 1, the user's), encoded offline at the
codec's rate, with the codec's fingerprints (its configuration's and its weights') and the audio's length in its
metadata. A file whose codes are already there for this codec is skipped, so an interrupted run resumes where it
stopped; codes another codec made (another shape, or the same shape trained otherwise) are made again; each file is
written whole.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import soundfile as sf
import torch
from safetensors import safe_open
from tqdm import tqdm

from codec.io.audio import resample
from codec.io.checkpoint import write_safetensors
from codec.io.codes import codec_fingerprint, weights_fingerprint

from ..errors import EncodeError

STEREO_CODES_FORMAT = "duplex-stereo-codes/1"
SUFFIX = ".codes.safetensors"



def manifest_entries(folder: Path) -> Iterator[Tuple[Path, float]]:
    """(WAV path, duration) of every line of the Kyutai-layout manifests in ``folder``."""
    manifests = sorted(p for p in Path(folder).glob("*.jsonl"))
    found = False
    for manifest in manifests:
        lines = manifest.read_text(encoding="utf-8").splitlines()
        entries = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError as e:
                raise EncodeError(f"{manifest}, line {number}: not JSON ({e})") from None
            if not isinstance(entry, dict) or "path" not in entry:
                entries = None  # not a Kyutai-layout manifest (ours lists "wav" and "json"): not this reader's
                break
            entries.append((manifest.parent / entry["path"], float(entry.get("duration", 0.0))))
        if entries:
            found = True
            yield from entries
    if not found:
        raise EncodeError(f"{folder}: no manifest of {{\"path\", \"duration\"}} lines (*.jsonl); make a corpus with "
                          "'duplex data synth' or give a folder in Kyutai's fine-tuning layout")


def codes_path(wav: Path) -> Path:
    return wav.with_name(wav.stem + SUFFIX)


def codec_identity(mimi) -> dict:
    """What a codes file records of the codec that made it: its configuration's and its weights' fingerprints."""
    return {"codec": codec_fingerprint(mimi.config), "codec_weights": weights_fingerprint(mimi.state_dict())}


def _done(path: Path, identity: dict) -> bool:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return all(meta.get(k) == v for k, v in identity.items()) and \
                meta.get("format") == STEREO_CODES_FORMAT and "codes" in f.keys()
    except Exception:  # missing, cut short, not safetensors: encode it (again)
        return False


def encode_file(mimi, wav: Path, out: Path, identity: dict) -> None:
    try:
        data, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    except Exception as e:
        raise EncodeError(f"{wav}: cannot read this audio file ({e})") from None
    if data.shape[1] != 2:
        raise EncodeError(f"{wav}: expected stereo (channel 0 the model, channel 1 the user), got "
                          f"{data.shape[1]} channel{'s' if data.shape[1] != 1 else ''}")
    pcm = resample(torch.from_numpy(data.T.copy()), rate, mimi.sample_rate)  # [2, T]
    if not bool(torch.isfinite(pcm).all()):
        raise EncodeError(f"{wav}: the audio contains non-finite samples")
    with torch.no_grad():
        codes = mimi.encode(pcm[:, None].to(mimi.device))  # the two channels as a batch of two
    write_safetensors({"codes": codes.to(torch.int16).cpu().contiguous()}, str(out), metadata={
        "format": STEREO_CODES_FORMAT, **identity, "num_samples": str(pcm.shape[-1]),
        "sample_rate": str(mimi.sample_rate), "frame_rate": str(mimi.frame_rate), "channels": "model,user"})


def encode_corpus(folder: Path, mimi, progress: Optional[Callable[[int, int], None]] = None) -> Tuple[int, int]:
    """Encode what is not encoded yet; returns (encoded now, already there)."""
    identity = codec_identity(mimi)
    wavs: List[Path] = [wav for wav, _ in manifest_entries(Path(folder))]
    encoded = skipped = 0
    for i, wav in enumerate(wavs):
        out = codes_path(wav)
        if _done(out, identity):
            skipped += 1
        else:
            if not wav.is_file():
                raise EncodeError(f"{wav}: listed in a manifest but not found")
            encode_file(mimi, wav, out, identity)
            encoded += 1
        if progress:
            progress(i + 1, len(wavs))
    return encoded, skipped


class ConsoleProgress:
    """A ``progress`` callback of ``encode_corpus`` for a person: a bar of files on a terminal's stderr, nothing
    when stderr is a file or a pipe. Use it in a ``with`` block, which ends the bar."""

    def __init__(self):
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if sys.stderr.isatty():
            if self.bar is None:
                self.bar = tqdm(total=total, unit="file", desc="encoding")
            self.bar.update(done - self.bar.n)

    def __enter__(self) -> "ConsoleProgress":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def format_encoded(encoded: int, skipped: int, seconds: float, num_codebooks: int) -> str:
    """One line: what ``encode_corpus`` did (its two counts) in ``seconds``, and where the codes are."""
    return (f"{encoded} file{'s' if encoded != 1 else ''} encoded in {seconds:.0f} s, {skipped} already encoded "
            f"with this codec ({num_codebooks} codebooks) -> NAME{SUFFIX} beside each WAV")


def load_stereo_codes(path: Path) -> Tuple[torch.Tensor, dict]:
    """(int64 codes [2, K, S], metadata) of a codes file written by ``encode_corpus``."""
    if not os.path.exists(path):
        raise EncodeError(f"{path}: no codes file; run 'duplex data encode' on its corpus")
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("codes").long(), dict(f.metadata() or {})
