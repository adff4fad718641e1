"""Whole recordings through a Mimi: an audio file to a codes file, a codes file to an audio file, and an audio
file through both (what ``duplex codec encode | decode | roundtrip`` runs, for any Python caller as well).

Offline runs encode or decode the whole recording in one pass. Streaming runs go frame by frame as a live stream
does, in chunks of ``CHUNK_FRAMES`` with the stream's state carried from chunk to chunk (so the result does not
depend on the chunk size), which lets a long run report progress between chunks. Nothing here imports ``duplex``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable, List, Optional, TextIO

import torch

from .io.audio import PathLike, audio_conversions, load_audio, save_audio
from .io.codes import load_codes, save_codes
from .model import Mimi

CHUNK_FRAMES = 250  # streaming runs report progress every 20 s of audio (at 12.5 Hz)
LONG_SECONDS = 60.0  # an offline pass over more audio than this is worth announcing

# on_progress(stage, done, total): stage "encode" or "decode", done and total in seconds of audio; offline, once
# before the single pass (done 0) and once after it; streaming, after every chunk.
Progress = Callable[[str, float, float], None]


def bitrate_kbps(mimi: Mimi, num_codebooks: int) -> float:
    """The codes' bitrate: frames per second x codebooks x bits per code."""
    return mimi.frame_rate * num_codebooks * (mimi.cardinality - 1).bit_length() / 1000


def encode(mimi: Mimi, pcm: torch.Tensor, streaming: bool = False, on_progress: Optional[Progress] = None,
           chunk_frames: int = CHUNK_FRAMES) -> torch.Tensor:
    """float mono audio [1, T] -> codes [1, K, ceil(T / frame_size)] (K: the model's ``num_codebooks``)."""
    x = pcm.reshape(1, 1, -1)
    if not streaming:
        seconds = x.shape[-1] / mimi.sample_rate
        _report(on_progress, "encode", 0.0, seconds)
        codes = mimi.encode(x)
        _report(on_progress, "encode", seconds, seconds)
        return codes
    x = torch.nn.functional.pad(x, (0, (-x.shape[-1]) % mimi.frame_size))
    stream, total = mimi.stream(1), x.shape[-1] // mimi.frame_size
    codes = []
    for start in range(0, total, chunk_frames):  # the stream carries its state from chunk to chunk
        end = min(total, start + chunk_frames)
        codes.append(stream.encode(x[..., start * mimi.frame_size:end * mimi.frame_size]))
        _report(on_progress, "encode", end / mimi.frame_rate, total / mimi.frame_rate)
    return torch.cat(codes, dim=-1)


def decode(mimi: Mimi, codes: torch.Tensor, streaming: bool = False, on_progress: Optional[Progress] = None,
           chunk_frames: int = CHUNK_FRAMES) -> torch.Tensor:
    """codes [1, K, S] -> float audio [1, S * frame_size] (whole frames: trim it to the original length)."""
    total = codes.shape[-1]
    if not streaming:
        _report(on_progress, "decode", 0.0, total / mimi.frame_rate)
        pcm = mimi.decode(codes)[0]
        _report(on_progress, "decode", total / mimi.frame_rate, total / mimi.frame_rate)
        return pcm
    stream = mimi.stream(1)
    pcm = []
    for start in range(0, total, chunk_frames):
        end = min(total, start + chunk_frames)
        pcm.append(stream.decode(codes[..., start:end]))
        _report(on_progress, "decode", end / mimi.frame_rate, total / mimi.frame_rate)
    return torch.cat(pcm, dim=-1)[0]


def _report(on_progress: Optional[Progress], stage: str, done: float, total: float) -> None:
    if on_progress is not None:
        on_progress(stage, done, total)


@dataclass
class FileResult:
    """What one file command did: ``seconds`` of audio (the input's; for ``decode_file`` the output's), the codes'
    ``frames`` x ``codebooks`` and their bitrate, and what loading the input did to it (``conversions``, e.g.
    ``["resampled from 16000 Hz"]``)."""

    seconds: float
    frames: int
    codebooks: int
    kbps: float
    conversions: List[str] = field(default_factory=list)


def encode_file(mimi: Mimi, audio: PathLike, codes_file: PathLike, streaming: bool = False,
                on_progress: Optional[Progress] = None) -> FileResult:
    """Any audio file (mixed to mono, resampled to the codec's rate) -> a codes file with its metadata."""
    pcm = load_audio(audio, mimi.sample_rate)
    codes = encode(mimi, pcm, streaming, on_progress)
    save_codes(codes_file, codes, mimi.config, pcm.shape[-1])
    return _result(mimi, pcm.shape[-1], codes, audio_conversions(audio, mimi.sample_rate))


def decode_file(mimi: Mimi, codes_file: PathLike, audio: PathLike, streaming: bool = False,
                on_progress: Optional[Progress] = None) -> FileResult:
    """A codes file (checked against this codec) -> an audio file at the codec's rate, as long as the original."""
    codes, num_samples = load_codes(codes_file, mimi.config)
    pcm = decode(mimi, codes, streaming, on_progress)
    if num_samples is not None:
        pcm = pcm[..., :num_samples]
    save_audio(audio, pcm, mimi.sample_rate)
    return _result(mimi, pcm.shape[-1], codes)


def roundtrip_file(mimi: Mimi, audio: PathLike, output: PathLike, streaming: bool = False,
                   on_progress: Optional[Progress] = None) -> FileResult:
    """An audio file through the codec and back, written as long as the input at the codec's rate."""
    pcm = load_audio(audio, mimi.sample_rate)
    codes = encode(mimi, pcm, streaming, on_progress)
    save_audio(output, decode(mimi, codes, streaming, on_progress)[..., :pcm.shape[-1]], mimi.sample_rate)
    return _result(mimi, pcm.shape[-1], codes, audio_conversions(audio, mimi.sample_rate))


def _result(mimi: Mimi, samples: int, codes: torch.Tensor, conversions: Optional[List[str]] = None) -> FileResult:
    return FileResult(samples / mimi.sample_rate, codes.shape[-1], codes.shape[1], bitrate_kbps(mimi, codes.shape[1]),
                      conversions or [])


class TerminalProgress:
    """Shows a ``Progress`` on a terminal: an offline pass over more than ``LONG_SECONDS`` of audio says that it
    has started ("encoding 2.5 min of audio in one pass..."); a streaming run longer than one chunk keeps one line
    up to date ("[encoded 40 / 150 s]") when ``out`` (default: stderr) is a terminal."""

    def __init__(self, streaming: bool, frame_rate: float, out: Optional[TextIO] = None):
        self.streaming, self.out = streaming, out
        self.chunk_seconds = CHUNK_FRAMES / frame_rate

    def __call__(self, stage: str, done: float, total: float) -> None:
        out = self.out or sys.stderr
        if not self.streaming:
            if done == 0 and total > LONG_SECONDS:
                print(f"{stage[:-1]}ing {total / 60:.1f} min of audio in one pass...", file=out)
        elif out.isatty() and total > self.chunk_seconds:
            print(f"\r[{stage}d {done:.0f} / {total:.0f} s]", end="" if done < total else "\n", file=out,
                  flush=True)
