"""``duplex client``: talk to a voice server, an audio file in and a reply file out, or microphone and speaker."""

from __future__ import annotations

import asyncio
import sys

import torch

from codec.io.audio import load_audio, save_audio

from ..errors import SoundDeviceError, UsageError
from ..serving.client import run_conversation, talk
from ..serving.protocol import SAMPLE_RATE
from ..serving.terminal import LiveText
from .common import check_output_path, list_sound_devices, positive_float, sound_device


def run_client(args) -> int:
    if args.list_devices:
        return list_sound_devices()
    if bool(args.input) != bool(args.output):
        raise UsageError("give both an input and an output file, or neither (microphone <-> speaker)")
    screen = LiveText()

    def notice(text: str) -> None:
        screen.message(f"server: {text}")

    if not args.input:
        try:
            stats = asyncio.run(talk(args.url, raw=args.raw, token=args.token, seconds=args.seconds,
                                     on_text=screen.write, input_device=args.input_device,
                                     output_device=args.output_device, on_notice=notice))
        except KeyboardInterrupt:
            return 0
        except SoundDeviceError as e:
            raise SoundDeviceError(f"{e}; pick devices with --input-device/--output-device (see duplex client "
                                   "--list-devices)") from None
        finally:
            screen.close()
        print(stats.summary(), file=sys.stderr)
        for problem in stats.errors:
            print(f"note: {problem}", file=sys.stderr)
        return 0
    check_output_path(args.output, audio=True)
    pcm = load_audio(args.input, SAMPLE_RATE)[0].numpy()
    length = len(pcm) / SAMPLE_RATE

    def progress(seconds: float) -> None:
        if seconds == 0.0:
            screen.message(f"connected to {args.url}: sending {args.input} ({length:.1f} s) in real time")
        else:
            screen.status(f"[{seconds:.0f} / {length:.0f} s of reply]")

    try:  # whatever arrived is kept, also when the server ends the session early or on Ctrl-C
        result = run_conversation(args.url, pcm, raw=args.raw, token=args.token, on_text=screen.write,
                                  on_notice=notice, on_progress=progress)
    finally:
        screen.close()
    save_audio(args.output, torch.from_numpy(result.audio), SAMPLE_RATE)
    print(f"{args.input}: {result.summary()} -> {args.output}", file=sys.stderr)
    for problem in result.errors:
        print(f"note: {problem}", file=sys.stderr)
    # A cut-off reply is still written, but the exit status tells a script it is not whole.
    return 130 if result.interrupted else (0 if result.complete else 1)


def register(commands) -> None:
    """``duplex client``."""
    p = commands.add_parser("client", help="talk to a server: audio file in and reply file out, or mic <-> speaker")
    p.add_argument("input", nargs="?", help="audio file to send (any format and rate; mixed to mono, resampled); "
                   "omit both files to talk through the microphone and speakers")
    p.add_argument("output", nargs="?", help="reply audio file to write (same length as the input, 24 kHz)")
    p.add_argument("--seconds", type=positive_float, help="live mode: stop after this long (default: Ctrl-C)")
    p.add_argument("--input-device", type=sound_device, help="live mode: sound input device (index or name)")
    p.add_argument("--output-device", type=sound_device, help="live mode: sound output device (index or name)")
    p.add_argument("--list-devices", action="store_true", help="list sound devices and exit")
    p.add_argument("--url", default="ws://127.0.0.1:8998", help="server address (default ws://127.0.0.1:8998)")
    p.add_argument("--token", help="the server's token, if it requires one")
    p.add_argument("--raw", action="store_true", help="use the raw PCM16 mode instead of Ogg/Opus")
    p.set_defaults(run=run_client)

