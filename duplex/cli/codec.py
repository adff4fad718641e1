"""``duplex codec encode | decode | roundtrip``: audio files <-> Mimi codes files."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from codec import CheckpointError, Mimi
from codec.transcode import FileResult, TerminalProgress, decode_file, encode_file, roundtrip_file

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


def summary(args, result: FileResult) -> str:
    """The input's length and what loading did to it, e.g. 'in.wav: 3.00 s (resampled from 16000 Hz)'."""
    conversions = f" ({', '.join(result.conversions)})" if result.conversions else ""
    return f"{args.input}: {result.seconds:.2f} s{conversions}"


def run_encode(args) -> int:
    check_output_path(args.output, audio=False)
    mimi = load_codec(args)
    result = encode_file(mimi, args.input, args.output, args.streaming,
                         TerminalProgress(args.streaming, mimi.frame_rate))
    print(f"{summary(args, result)} -> {result.frames} frames x {result.codebooks} codebooks -> {args.output}")
    return 0


def run_decode(args) -> int:
    check_output_path(args.output, audio=True)
    mimi = load_codec(args)
    result = decode_file(mimi, args.input, args.output, args.streaming,
                         TerminalProgress(args.streaming, mimi.frame_rate))
    print(f"{args.input}: {result.frames} frames -> {result.seconds:.2f} s -> {args.output}")
    return 0


def run_roundtrip(args) -> int:
    check_output_path(args.output, audio=True)
    mimi = load_codec(args)
    result = roundtrip_file(mimi, args.input, args.output, args.streaming,
                            TerminalProgress(args.streaming, mimi.frame_rate))
    print(f"{summary(args, result)} through {result.codebooks} codebooks ({result.kbps:.2f} kbps) -> {args.output}")
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
