"""``duplex mic``: the live demo, the engine in this process between the microphone and the speakers (or files)."""

from __future__ import annotations

import sys

import torch

from codec.io.audio import load_audio, save_audio

from ..errors import UsageError
from ..runtime.offline import PromptedEngine, run_offline
from ..runtime.realtime import freeze_startup_objects
from ..serving import mic
from ..serving.terminal import LiveText
from .common import (
    add_model_options,
    build_engine,
    check_output_path,
    list_sound_devices,
    non_negative,
    positive_float,
    sound_device,
)
from .prompts import add_prompt_options, system_prompt


def run_mic(args) -> int:
    if args.list_devices:
        return list_sound_devices()
    if bool(args.input_file) != bool(args.output_file):
        raise UsageError("--input-file and --output-file go together")
    if args.output_file:
        check_output_path(args.output_file, audio=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = build_engine(args, slots=1)
    prompt = system_prompt(args, engine)
    display = LiveText()  # the model's words and the progress line, neither erasing the other
    if args.input_file:
        pcm = load_audio(args.input_file, engine.sample_rate)[0].numpy()
        print(f"{args.input_file} ({len(pcm) / engine.sample_rate:.1f} s) through the engine "
              f"{'in real time' if args.realtime else 'as fast as it goes'}", file=sys.stderr)
        run = run_offline(engine, pcm, prompt=prompt, realtime=args.realtime, display=display)
        save_audio(args.output_file, torch.from_numpy(run.reply), engine.sample_rate)
        if run.interrupted:
            print(f"interrupted after {run.reply_seconds:.2f} s of {run.seconds:.2f} s: the reply so far is in "
                  f"{args.output_file}", file=sys.stderr)
            return 130
        late = f", {run.clock.lateness()}" if args.realtime else ""
        print(f"{args.input_file}: {run.seconds:.2f} s -> {args.output_file}{late}", file=sys.stderr)
        return 0
    print("duplex: talking (Ctrl-C to stop)" + ("; the default model is small and knows only its synthetic "
          "conversations (README, \"The default model\")" if engine.files.is_default else ""), file=sys.stderr)
    freeze_startup_objects()
    stats = mic.run_live(engine if prompt is None else PromptedEngine(engine, prompt), seconds=args.seconds, input_device=args.input_device,
                         output_device=args.output_device, display=display)
    print(stats.summary(), file=sys.stderr)
    return 0


def register(commands) -> None:
    """``duplex mic``."""
    p = commands.add_parser("mic", help="live demo: talk with the engine through your microphone and speakers")
    add_model_options(p)
    p.add_argument("--input-device", type=sound_device, help="sound input device (index or name; see --list-devices)")
    p.add_argument("--output-device", type=sound_device, help="sound output device (index or name)")
    p.add_argument("--list-devices", action="store_true", help="list sound devices and exit")
    p.add_argument("--seconds", type=positive_float, help="stop after this long (default: Ctrl-C)")
    p.add_argument("--input-file", metavar="AUDIO", help="headless: read the microphone from this file")
    p.add_argument("--output-file", metavar="WAV", help="headless: write the replies here (with --input-file)")
    p.add_argument("--realtime", action="store_true", help="headless: pace the file at 80 ms per frame")
    p.add_argument("--threads", type=non_negative, default=0, help="torch CPU threads (default: torch's choice)")
    add_prompt_options(p, "default: NVIDIA's assistant role for PersonaPlex, none for other models")
    p.set_defaults(run=run_mic)

