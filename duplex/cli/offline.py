"""``duplex offline IN OUT``: a recording through the model, its reply written with the input's length (the
counterpart of NVIDIA's ``moshi.offline``; its option names where they mean the same). The work is
``runtime.offline.run_offline``; ``duplex mic --input-file`` runs the same function."""

from __future__ import annotations

import json
import os
import sys
from typing import Optional

import torch

from codec.io.audio import load_audio, save_audio

from ..errors import UsageError
from ..model.sampling import SlotSampling
from ..runtime.offline import run_offline
from ..serving.terminal import LiveText
from .common import (
    add_model_options,
    build_engine,
    check_output_path,
    float_above,
    int_in,
    model_files,
    non_negative,
)
from .prompts import add_prompt_options, system_prompt

temperature = float_above(0.0, True, "a temperature >= 0")
top_k = int_in(0, None, "a top-k >= 0 (0: the whole vocabulary)")


def sampling_settings(args) -> dict:
    """The temperatures and top-k of the sampling options (NVIDIA's names; ``SlotSampling``'s fields); --greedy is
    temperature 0 for text and audio."""
    settings = {"temperature": args.temp_audio, "text_temperature": args.temp_text, "top_k": args.topk_audio,
                "text_top_k": args.topk_text}
    if args.greedy:
        settings.update(temperature=0.0, text_temperature=0.0)
    return settings


def sampling_of(args) -> dict:
    """The slot's sampling from the options (``sampling_settings``) and ``--seed``: -1 (NVIDIA's "no seed") is a
    random one."""
    settings = sampling_settings(args)
    if args.seed is not None and args.seed != -1:
        if args.seed < 0:
            raise UsageError(f"--seed {args.seed}: a seed is an integer >= 0 (-1: a random one)")
        settings["seed"] = args.seed
    return settings


def add_adapter_option(p) -> None:
    """``--adapter NAME``: which of the ``--lora`` adapters a command's sessions run (``duplex mic``, ``offline``,
    ``bench turns run``; the server's clients pick theirs with ``?adapter=NAME``)."""
    p.add_argument("--adapter", metavar="NAME", help="which --lora adapter to run, by name: the file's stem, or the "
                   "folder of a lora.safetensors (moshi-finetune's checkpoint: its run's folder); 'none' runs the "
                   "base model (default: the first --lora)")


def chosen_adapter(args, files) -> Optional[str]:
    """``--adapter`` checked against the model's adapters (``files``: ``common.model_files``) before the model
    loads: one of them, or "none"; None when not given (the engine's default, the first)."""
    name = getattr(args, "adapter", None)
    if name is None:
        return None
    if files.fuse_lora:
        raise UsageError(f"--adapter {name}: with --fuse the adapter is merged into the weights, there is none to "
                         "pick; leave --adapter out (or --fuse, to pick among several)")
    names = files.adapter_names()
    if name != "none" and name not in names:
        given = f"the adapters given are {', '.join(names)}" if names else "no --lora adapter was given"
        raise UsageError(f"--adapter {name!r}: {given} ('none' runs the base model)")
    return name


def adapter_text(engine, adapter: Optional[str]) -> str:
    """For the start line: " with adapter NAME" (or " with the base model", " with adapter NAME fused" ...)."""
    files = getattr(engine, "files", None)
    if files is not None and files.fuse_lora and files.lora_adapters:
        return f" with adapter {files.adapter_names()[0]} (fused)"
    names = list(getattr(engine, "adapters", None) or [])
    if not names:
        return ""
    name = names[0] if adapter is None else adapter
    return " with the base model" if name == "none" else f" with adapter {name}"


def check_input(path: str) -> None:
    if not os.path.isfile(path):
        raise UsageError(f"input {path}: no such file")


def run_offline_command(args) -> int:
    check_input(args.input)
    check_output_path(args.output, audio=True)
    if args.output_text:
        check_output_path(args.output_text, audio=False)
    settings = sampling_of(args)
    files = model_files(args)
    adapter = chosen_adapter(args, files)
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = build_engine(args, slots=1, files=files)
    if args.output_text and engine.tokenizer is None:
        raise UsageError("--output-text needs the model's tokenizer (give --tokenizer)")
    prompt = system_prompt(args, engine)
    return run_file(engine, args.input, args.output, prompt, args.realtime, LiveText(), args.output_text, settings,
                    adapter)


def run_file(engine, source: str, output: str, prompt, realtime: bool, display, output_text=None,
             settings=None, adapter: Optional[str] = None) -> int:
    """One recording through ``engine`` into ``output`` (and its text as NVIDIA's JSON into ``output_text``), as
    ``duplex offline`` and ``duplex mic --input-file`` do: the exit status (130 after Ctrl-C, the reply so far
    kept)."""
    pcm = load_audio(source, engine.sample_rate)[0].numpy()
    print(f"{source} ({len(pcm) / engine.sample_rate:.1f} s) through the engine{adapter_text(engine, adapter)} "
          f"{'in real time' if realtime else 'as fast as it goes'}", file=sys.stderr)
    run = run_offline(engine, pcm, prompt=prompt, realtime=realtime, display=display, adapter=adapter,
                      **(settings or {}))
    save_audio(output, torch.from_numpy(run.reply), engine.sample_rate)
    if output_text:
        with open(output_text, "w", encoding="utf-8") as f:
            json.dump(run.text, f, ensure_ascii=False)
    if run.interrupted:
        print(f"interrupted after {run.reply_seconds:.2f} s of {run.seconds:.2f} s: the reply so far is in "
              f"{output}", file=sys.stderr)
        return 130
    text = f" and {output_text}" if output_text else ""
    late = f", {run.clock.lateness()}" if realtime else ""
    print(f"{source}: {run.seconds:.2f} s -> {output}{text}{late}", file=sys.stderr)
    return 0


def add_sampling_options(p, seed: bool = True) -> None:
    """NVIDIA's sampling options of ``moshi.offline`` (defaults Kyutai's and NVIDIA's: 0.8 / 250, 0.7 / 25);
    ``seed`` False: without ``--seed`` (a command that seeds its own way)."""
    if seed:
        p.add_argument("--seed", type=int, default=-1, help="sampling seed: the same seed, the same reply (-1: random)")
    p.add_argument("--greedy", action="store_true", help="temperature 0: always the most likely token (text and "
                   "audio), the same reply every time")
    p.add_argument("--temp-audio", type=temperature, default=SlotSampling.temperature,
                   help="audio sampling temperature")
    p.add_argument("--temp-text", type=temperature, default=SlotSampling.text_temperature,
                   help="text sampling temperature")
    p.add_argument("--topk-audio", type=top_k, default=SlotSampling.top_k, help="audio top-k")
    p.add_argument("--topk-text", type=top_k, default=SlotSampling.text_top_k, help="text top-k")


def register(commands) -> None:
    """``duplex offline``."""
    p = commands.add_parser("offline", help="a recording through the model: the reply (same length) and its text "
                            "(NVIDIA's moshi.offline)", description="Feed IN to the model frame by frame as a live "
                            "stream would, after an optional system prompt (PersonaPlex's voice and role; any model), "
                            "and write the reply to OUT, sample-aligned with IN.")
    p.add_argument("input", metavar="IN", help="the user's recording (any audio file; resampled to 24 kHz, mono)")
    p.add_argument("output", metavar="OUT", help="the model's reply (WAV, the input's length)")
    p.add_argument("--output-text", metavar="JSON", help="also write the model's text here, as NVIDIA's offline "
                   "runner does: a JSON list, one entry per frame the model produced (its piece, or EPAD / PAD)")
    add_prompt_options(p, "default: NVIDIA's assistant role for PersonaPlex, none for other models")
    add_sampling_options(p)
    add_model_options(p)
    add_adapter_option(p)
    p.add_argument("--realtime", action="store_true", help="pace the input at 80 ms per frame")
    p.add_argument("--threads", type=non_negative, default=0, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(run=run_offline_command)
