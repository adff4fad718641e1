"""``duplex voices make | folder | list``: voice files in NVIDIA's ``.pt`` layout for a model (as NVIDIA's
``save_voice_prompt_embeddings`` writes them), a folder answering NVIDIA's voice names, and the voices a model
has. The work is in ``runtime.voices``."""

from __future__ import annotations

import os
import sys

from ..errors import UsageError
from ..runtime import voices
from .common import add_model_options, build_engine, check_output_path, model_files
from .offline import check_input


def run_make(args) -> int:
    check_input(args.recording)
    check_output_path(args.output, audio=False)
    if not args.output.endswith(".pt"):
        raise UsageError(f"{args.output}: a voice-embedding file is named NAME.pt (NVIDIA's readers go by the "
                         "extension)")
    engine = build_engine(args, slots=1)
    count, frames = voices.make_voice_file(engine, args.recording, args.output)
    print(f"{args.recording}: {frames} frames -> {args.output} ({count} embeddings, for {engine.files.name})",
          file=sys.stderr)
    return 0


def _recordings(pairs) -> dict:
    found = {}
    for pair in pairs or ():
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--voice {pair!r}: expected NAME=RECORDING, e.g. NATF0=me.wav")
        check_input(path)
        found[name] = path
    return found


def run_folder(args) -> int:
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"{args.out} is a file; give a folder")
    recordings = _recordings(args.voice)
    names = args.names.split(",") if args.names else list(voices.NVIDIA_VOICE_NAMES)
    names += [n for n in recordings if n not in names]
    engine = build_engine(args, slots=1)
    written = voices.build_default_voices(engine, args.out, names, recordings,
                                          progress=lambda name, path: print(f"{name} -> {path}", file=sys.stderr))
    size = sum(os.path.getsize(p) for p in written)
    print(f"{len(written)} voices for {engine.files.name} -> {args.out} ({size / 1e3:.0f} kB)", file=sys.stderr)
    return 0


def run_list(args) -> int:
    files = model_files(args)
    folders = [args.voice_prompt_dir] if args.voice_prompt_dir else list(files.voice_prompts)
    if not folders:
        print(f"{files.name}: no voice folder", file=sys.stderr)
        return 1
    for name in voices.list_voices(folders):
        print(name)
    print(f"({', '.join(folders)})", file=sys.stderr)
    return 0


def register(commands) -> None:
    """``duplex voices``."""
    group = commands.add_parser("voices", help="voice prompts: make NVIDIA-layout voice files for a model, list "
                                "a model's voices")
    actions = group.add_subparsers(dest="voices_command", required=True, metavar="ACTION")
    p = actions.add_parser("make", help="a voice file (NVIDIA's .pt layout) of a recording, for the given model")
    p.add_argument("recording", help="any audio file (its first channel; normalised to -24 LUFS as NVIDIA does)")
    p.add_argument("output", metavar="OUT.pt", help="the voice file to write")
    add_model_options(p)
    p.set_defaults(run=run_make)
    p = actions.add_parser("folder", help="a folder of voice files answering NVIDIA's names (NATF0-3, NATM0-3, "
                           "VARF0-4, VARM0-4) for the given model, from espeak-ng voices or your recordings")
    p.add_argument("out", help="the folder to write (NAME.pt files)")
    p.add_argument("--voice", action="append", metavar="NAME=RECORDING", help="make NAME from this recording "
                   "instead of espeak-ng (repeatable)")
    p.add_argument("--names", metavar="A,B", help="only these names (default: all of NVIDIA's)")
    add_model_options(p)
    p.set_defaults(run=run_folder)
    p = actions.add_parser("list", help="the voices of a model (--hf-repo: its voices.tgz; the default model's own)")
    p.add_argument("--voice-prompt-dir", metavar="DIR", help="list this folder instead")
    add_model_options(p)
    p.set_defaults(run=run_list)
