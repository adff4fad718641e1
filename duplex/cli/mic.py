"""``duplex mic``: the live demo, the engine in this process between the microphone and the speakers (or files)."""

from __future__ import annotations

import sys

import torch

from ..errors import UsageError
from ..runtime.offline import PromptedEngine
from ..runtime.realtime import freeze_startup_objects
from ..serving import mic
from ..serving.terminal import LiveText
from .common import (
    add_model_options,
    build_engine,
    check_output_path,
    list_sound_devices,
    model_files,
    non_negative,
    positive_float,
    sound_device,
)
from .offline import adapter_text, add_adapter_option, chosen_adapter, run_file
from .prompts import add_prompt_options, system_prompt


def run_mic(args) -> int:
    if args.list_devices:
        return list_sound_devices()
    if bool(args.input_file) != bool(args.output_file):
        raise UsageError("--input-file and --output-file go together")
    if args.output_file:
        check_output_path(args.output_file, audio=True)
    files = model_files(args)
    adapter = chosen_adapter(args, files)
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = build_engine(args, slots=1, files=files)
    prompt = system_prompt(args, engine)
    display = LiveText()  # the model's words and the progress line, neither erasing the other
    if args.input_file:
        return run_file(engine, args.input_file, args.output_file, prompt, args.realtime, display, adapter=adapter)
    print(f"duplex: talking{adapter_text(engine, adapter)} (Ctrl-C to stop)" + ("; the default model is small and "
          "knows only its synthetic conversations (README, \"The default model\")" if engine.files.is_default
          else ""), file=sys.stderr)
    freeze_startup_objects()
    live = engine if prompt is None and adapter is None else PromptedEngine(engine, prompt, adapter)
    stats = mic.run_live(live, seconds=args.seconds, input_device=args.input_device,
                         output_device=args.output_device, display=display)
    print(stats.summary(), file=sys.stderr)
    return 0


def register(commands) -> None:
    """``duplex mic``."""
    p = commands.add_parser("mic", help="live demo: talk with the engine through your microphone and speakers")
    add_model_options(p)
    add_adapter_option(p)
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

