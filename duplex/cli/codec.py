"""``duplex codec encode | decode | roundtrip``: audio files <-> Mimi codes files."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator, Optional

import torch

from codec import CheckpointError, Mimi
from codec.io.audio import load_audio, save_audio
from codec.io.codes import load_codes, save_codes

from ..runtime.checkpoints import codec_files, unused_codec_config
from .common import add_codec_options, check_output_path, pick_device


def load_codec(args) -> Mimi:
    """The codec of --checkpoint / --config (default: $DUPLEX_MIMI, else the shipped codec)."""
    path, config = codec_files(args.checkpoint, args.config)
    with config_hint(path, config):
        return Mimi.from_checkpoint(path, config=config, num_codebooks=getattr(args, "num_codebooks", 8),
                                    device=pick_device(args.device))


@contextlib.contextmanager
def config_hint(checkpoint: str, config: Optional[str]) -> Iterator[None]:
    """Loading ``checkpoint`` as the official architecture failed while a ``config.json`` it did not use sits
    beside it (a run folder copied without its ``trainer.pt``): name it with the option that uses it."""
    try:
        yield
    except CheckpointError as e:
        beside = unused_codec_config(checkpoint, config)
        if beside is None:
            raise
        raise CheckpointError(f"{e}\n(there is a {beside}: if it describes this codec, pass --config {beside})") \
            from None


CHUNK_FRAMES = 250  # streaming runs report progress every 20 s of audio
LONG_SECONDS = 60.0  # an offline pass over more audio than this says it has started


def _progress(what: str, done: int, total: int, frame_rate: float) -> None:
    """Progress of a long run on a terminal: seconds of audio done out of the total."""
    if sys.stderr.isatty() and total > CHUNK_FRAMES:
        print(f"\r[{what} {done / frame_rate:.0f} / {total / frame_rate:.0f} s]", end="" if done < total else "\n",
              file=sys.stderr, flush=True)


def _encode(mimi: Mimi, pcm: torch.Tensor, streaming: bool) -> torch.Tensor:
    x = pcm[None]  # [1, 1, T]
    if not streaming:
        if x.shape[-1] > LONG_SECONDS * mimi.sample_rate:
            print(f"encoding {x.shape[-1] / mimi.sample_rate / 60:.1f} min of audio in one pass...", file=sys.stderr)
        return mimi.encode(x)
    x = torch.nn.functional.pad(x, (0, (-x.shape[-1]) % mimi.frame_size))
    stream, total = mimi.stream(1), x.shape[-1] // mimi.frame_size
    codes = []
    for start in range(0, total, CHUNK_FRAMES):  # the stream carries its state from chunk to chunk
        end = min(total, start + CHUNK_FRAMES)
        codes.append(stream.encode(x[..., start * mimi.frame_size:end * mimi.frame_size]))
        _progress("encoded", end, total, mimi.frame_rate)
    return torch.cat(codes, dim=-1)


def _decode(mimi: Mimi, codes: torch.Tensor, streaming: bool) -> torch.Tensor:
    if not streaming:
        if codes.shape[-1] > LONG_SECONDS * mimi.frame_rate:
            print(f"decoding {codes.shape[-1] / mimi.frame_rate / 60:.1f} min of audio in one pass...",
                  file=sys.stderr)
        return mimi.decode(codes)[0]
    stream, total = mimi.stream(1), codes.shape[-1]
    pcm = []
    for start in range(0, total, CHUNK_FRAMES):
        end = min(total, start + CHUNK_FRAMES)
        pcm.append(stream.decode(codes[..., start:end]))
        _progress("decoded", end, total, mimi.frame_rate)
    return torch.cat(pcm, dim=-1)[0]


def conversion_note(path: str, sample_rate: int) -> str:
    """What loading did to the file, for the summary line: '' or e.g. ' (resampled from 16000 Hz, 2 channels
    mixed to mono)'."""
    import soundfile as sf

    try:
        info = sf.info(path)
    except Exception:  # the file was read already; this is only a note
        return ""
    notes = []
    if info.samplerate != sample_rate:
        notes.append(f"resampled from {info.samplerate} Hz")
    if info.channels != 1:
        notes.append(f"{info.channels} channels mixed to mono")
    return f" ({', '.join(notes)})" if notes else ""


def run_encode(args) -> int:
    check_output_path(args.output, audio=False)
    mimi = load_codec(args)
    pcm = load_audio(args.input, mimi.sample_rate)
    codes = _encode(mimi, pcm, args.streaming)
    save_codes(args.output, codes, mimi.config, pcm.shape[-1])
    print(f"{args.input}: {pcm.shape[-1] / mimi.sample_rate:.2f} s{conversion_note(args.input, mimi.sample_rate)} "
          f"-> {codes.shape[-1]} frames x "
          f"{codes.shape[1]} codebooks -> {args.output}")
    return 0


def run_decode(args) -> int:
    check_output_path(args.output, audio=True)
    mimi = load_codec(args)
    codes, num_samples = load_codes(args.input, mimi.config)
    pcm = _decode(mimi, codes, args.streaming)
    if num_samples is not None:
        pcm = pcm[..., :num_samples]
    save_audio(args.output, pcm, mimi.sample_rate)
    print(f"{args.input}: {codes.shape[-1]} frames -> {pcm.shape[-1] / mimi.sample_rate:.2f} s -> {args.output}")
    return 0


def run_roundtrip(args) -> int:
    check_output_path(args.output, audio=True)
    mimi = load_codec(args)
    pcm = load_audio(args.input, mimi.sample_rate)
    codes = _encode(mimi, pcm, args.streaming)
    out = _decode(mimi, codes, args.streaming)[..., : pcm.shape[-1]]
    save_audio(args.output, out, mimi.sample_rate)
    kbps = mimi.frame_rate * codes.shape[1] * (mimi.cardinality - 1).bit_length() / 1000
    print(f"{args.input}: {pcm.shape[-1] / mimi.sample_rate:.2f} s{conversion_note(args.input, mimi.sample_rate)} "
          f"through {codes.shape[1]} codebooks "
          f"({kbps:.2f} kbps) -> {args.output}")
    return 0


def register(commands) -> None:
    """``duplex codec encode | decode | roundtrip``."""
    codec = commands.add_parser("codec", help="encode / decode audio with the Mimi codec")
    codec_commands = codec.add_subparsers(dest="codec_command", required=True, metavar="ACTION")
    p = codec_commands.add_parser("encode", help="audio file -> codes (.safetensors)")
    p.add_argument("input", help="audio file (any format and rate soundfile reads; mixed to mono)")
    p.add_argument("output", help="codes file to write (.safetensors)")
    add_codec_options(p)
    p.set_defaults(run=run_encode)
    p = codec_commands.add_parser("decode", help="codes (.safetensors) -> 24 kHz audio file")
    p.add_argument("input", help="codes file written by 'duplex codec encode'")
    p.add_argument("output", help="audio file to write (format from the extension: .wav, .flac, .ogg)")
    add_codec_options(p, codebooks=False)
    p.set_defaults(run=run_decode)
    p = codec_commands.add_parser("roundtrip", help="audio file -> codes -> 24 kHz audio file")
    p.add_argument("input", help="audio file (any format and rate; mixed to mono)")
    p.add_argument("output", help="audio file to write")
    add_codec_options(p)
    p.set_defaults(run=run_roundtrip)
