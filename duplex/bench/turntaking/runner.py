"""``duplex bench turns run DIR OUT``: every FDB sample of DIR through the engine, offline and many at a time (each
slot takes the next sample when its current one ends), writing OUT in DIR's layout: the sample's files copied,
``output.wav`` (16 kHz mono, time-synchronous with the input and exactly as long, as FDB's scorer expects) and
``output.json`` (FDB's ASR format) made from the model's own text stream: a word per run of text pieces, timed by
the frames that emitted them. What the engine makes at step k can be heard only once input frame k has come in
whole, so it is placed as a live conversation hears it, one frame later: [0.08 (k + 1), 0.08 (k + 2)) s, audio and
words alike, as Full-Duplex-Bench's own Moshi client records it (``SKIP_FRAMES = 1``: the output file starts with
one frame of silence). Runs before 2026-12-06 placed step k at [0.08 k, ...): their latencies read 0.08 s shorter.
For user-interruption samples only the words that start after the interruption's end are kept, as FDB's ASR step
transcribes only that audio.

With the same ``seed`` and slot count a run is repeated exactly (sample i samples with ``seed`` + i; the engine's
slots are independent of what runs beside them). Another slot count batches the arithmetic differently, so the
sampled outputs can differ in detail.

A run of hours can be stopped (Ctrl-C) and taken up again: while a run is unfinished OUT holds ``MARK`` (which set,
seed and slot count made it, and the caller's ``setup``: whatever else changes the outputs, such as the model's
files, the system prompt, the weights' quantization and the KV rings' dtype); a sample is finished once its
``output.json`` exists (written last, in one rename). Interrupted, the finished samples stay and ``RunInterrupted``
says how many; the same run again (same set, seed, slots and setup) skips them. Any other non-empty OUT is refused,
naming what differs, so that outputs of two runs never mix. The mark goes when the run is complete.
"""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Union

import numpy as np
import torch
from tqdm import tqdm

from codec.io.audio import load_audio, resample, save_audio

from ...errors import FDBError, UsageError
from ...runtime.realtime import freeze_startup_objects
from .fdb import INTERRUPTION, Chunk, annotation_time, find_samples, task_of, write_chunks
from .vad import seconds_of

OUTPUT_RATE = 16000
OUTPUT_DELAY_FRAMES = 1  # step k is heard from frame k + 1 on (FDB's moshi client: SKIP_FRAMES = 1)
SLOTS = 4  # samples run at once, unless the caller says
SEED = 0  # sample i samples with SEED + i
MARK = ".duplex-turns-run.json"  # in OUT while its run is unfinished


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: the message says what was kept and how to go on."""


@dataclass
class Progress:
    """Where a run stands: samples and seconds of input audio done (of this invocation's ``total``), and
    ``skipped``, the samples an earlier, interrupted run had finished."""

    done: int
    total: int
    audio_seconds: float
    audio_total: float
    wall_seconds: float
    skipped: int = 0

    @property
    def speed(self) -> float:
        """Seconds of input audio per second of wall time."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def eta(self) -> float:
        """Seconds left at the speed so far: never negative (the headers' lengths can differ from the decoded
        audio's by a sample), 0 once every sample is done, NaN before the first."""
        if self.done >= self.total:
            return 0.0
        if self.speed <= 0:
            return math.nan
        return max(0.0, (self.audio_total - self.audio_seconds) / self.speed)

    def __str__(self) -> str:
        eta = "?" if math.isnan(self.eta) else f"{self.eta:.0f}"
        return f"{self.done}/{self.total} samples, {self.speed:.2f}x real time, ETA {eta} s"


class ConsoleProgress:
    """A ``progress`` callback for a person: a bar on a terminal, else a line every ``every`` samples; says first
    when an earlier run's samples are skipped. ``close()``, or the end of a ``with`` block, ends the bar."""

    def __init__(self, stream=None, every: int = 10):
        self.stream = stream if stream is not None else sys.stderr
        self.every = every
        self.bar = None

    def __call__(self, p: Progress) -> None:
        if p.done == 0:
            if p.skipped:
                one = p.skipped == 1
                print(f"resuming: {p.skipped} sample{'' if one else 's'} finished by the interrupted run "
                      f"{'is' if one else 'are'} kept, {p.total} to go", file=self.stream)
            return
        if self.stream.isatty():
            if self.bar is None:
                self.bar = tqdm(total=p.total, unit="sample", file=self.stream)
            self.bar.update(p.done - self.bar.n)
            self.bar.set_postfix_str(str(p).split(", ", 1)[1])
        elif p.done == p.total or p.done % self.every == 0:
            print(p, file=self.stream)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "ConsoleProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()  # before whatever the caller says next (an interruption's message) is printed


@dataclass
class _Job:
    index: int
    folder: Path
    task: str
    frames: np.ndarray  # [n, frame_size] float32 at the engine's rate
    input_seconds: float
    slot: int = -1
    position: int = 0
    audio: List[np.ndarray] = field(default_factory=list)
    pieces: List[tuple] = field(default_factory=list)  # (frame index, text piece)


def words_from_pieces(pieces: List[tuple], frame_seconds: float) -> List[Chunk]:
    """Words from (frame, piece) pairs: a piece that starts with a space starts a word; a word spans the frames of
    its pieces. A piece that is a space alone (SentencePiece spells a word its vocabulary lacks as "▁" then the
    word's pieces: "of japan" is "▁of", "▁", "j", "a", "p", "an") starts the next word, unless that is
    punctuation only ("there", "▁", "!" is "there!")."""
    words: List[List] = []
    space = False  # a space alone came last: the next piece with a letter or a digit starts a word
    for frame, piece in pieces:
        text = piece.strip()
        if not text:
            space = space or bool(piece)
            continue
        if piece.startswith(" ") or not words or (space and any(c.isalnum() for c in text)):
            words.append([text, frame, frame])
        else:
            words[-1][0] += piece
            words[-1][2] = frame
        space = False
    return [Chunk(text, round(first * frame_seconds, 3), round((last + 1) * frame_seconds, 3))
            for text, first, last in words]


def _mark(root: Path, seed: int, slots: int, setup: Optional[dict] = None) -> dict:
    # as it reads back from the file (a tuple is a list there), so that equal setups compare equal
    return {"source": str(root.resolve()), "seed": seed, "slots": slots, "setup": json.loads(json.dumps(setup))}


def _shown(value) -> str:
    return "not given" if value is None else repr(value) if isinstance(value, str) else str(value)


def _setup_differences(earlier: Optional[dict], setup: Optional[dict]) -> List[str]:
    """What differs between two runs' setups, for people: "quantize 'int8' (this run: none)"."""
    if earlier is None or setup is None:
        return [f"{'its' if earlier is None else 'this'} run's setup is not recorded (a run from Python without "
                "one)"]
    return [f"{key.replace('_', ' ')} {_shown(earlier.get(key))} (this run: {_shown(setup.get(key))})"
            for key in dict.fromkeys([*earlier, *setup]) if earlier.get(key) != setup.get(key)]


def sample_folders(root: Path) -> List[Path]:
    """The sample folders under ``root`` that the run takes (those with a task), in order."""
    root = Path(root)
    folders = [f for f in find_samples(root) if task_of(f, root) is not None]
    if not folders:
        raise FDBError(f"{root}: no FDB sample folder (input.wav with an annotation, or under a *backchannel* "
                       "folder)")
    return folders


def check_output(root: Path, out: Path, seed: int, slots: int, setup: Optional[dict] = None) -> None:
    """Refuse ``out`` unless it is new, empty, or an unfinished run of the same set, seed, slot count and ``setup``
    (the checks of ``run_samples``, to make before minutes of loading a model)."""
    root, out = Path(root), Path(out)
    sample_folders(root)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is not a folder")
    if not out.is_dir() or not any(p.name != MARK for p in out.iterdir()):
        return  # new, empty, or a run stopped before its first sample: nothing to mix with
    if not (out / MARK).is_file():
        raise UsageError(f"{out} is not empty: give a new folder for the outputs")
    try:
        earlier = json.loads((out / MARK).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"{out / MARK}: cannot read it ({e}); give a new folder for the outputs") from None
    if not isinstance(earlier, dict):
        raise UsageError(f"{out / MARK}: not a run's mark; give a new folder for the outputs")
    ours = _mark(root, seed, slots, setup)
    if any(earlier.get(key) != ours[key] for key in ("source", "seed", "slots")):
        raise UsageError(f"{out} holds an unfinished run of {earlier.get('source')} with seed {earlier.get('seed')} "
                         f"and {earlier.get('slots')} slots: run that again to finish it, or give a new folder")
    if "setup" not in earlier:
        # A mark written before the setup was recorded (duplex before issue 25) says nothing of the model, the
        # prompts or the quantization its run used. It is refused rather than taken for this run's: accepting it
        # (even only for the default setup) would be a guess, and a wrong guess mixes two models' outputs into one
        # set of figures without a word, which is what the mark is there to prevent; refusing costs at most the
        # rerun of one interrupted run.
        raise UsageError(f"{out} holds an unfinished run made by an older duplex, which did not record its model, "
                         "prompts and quantization, so it cannot be checked against this one: give a new folder")
    if earlier["setup"] != setup:
        raise UsageError(f"{out} holds an unfinished run made with another setup: "
                         + "; ".join(_setup_differences(earlier["setup"], setup))
                         + ": run it again with the same options to finish it, or give a new folder")


def run_samples(engine, root: Path, out: Path, seed: int = SEED,
                progress: Optional[Callable[[Progress], None]] = None, prompt=None,
                setup: Optional[dict] = None, adapter: Union[None, int, str] = None,
                sampling: Optional[dict] = None) -> dict:
    """Run every sample under ``root`` into ``out`` (resuming an interrupted run there); returns the run's figures
    (``run_figures``: samples, seconds of audio and of wall time, speed, engine steps, slots used) of this call
    (``skipped``: the samples an earlier, interrupted run had finished, not run again). ``progress`` is called
    with a ``Progress`` once before the first sample and after each. Ctrl-C raises ``RunInterrupted``. ``prompt``:
    a system prompt (``Engine.system_prompt``) every sample starts in; stepped once, its state copied into each slot.
    ``setup``: what else changes the outputs (JSON values; ``duplex bench turns run`` gives its model, prompt,
    quantization and LoRA options), recorded in the mark so that a resumed run must have the same. ``adapter``: the
    LoRA adapter every sample runs (``Engine.open``: a name, "none" for the base model; None: the engine's first).
    ``sampling``: ``SlotSampling`` fields every sample's slot changes from the engine's default (temperatures, top-k;
    the seed is ``seed`` + the sample's index).

    Meanwhile what is alive at the start (the engine) is kept out of the garbage collector's full passes
    (``runtime.realtime.freeze_startup_objects``, as ``duplex serve`` does) and given back after."""
    root, out = Path(root), Path(out)
    folders = sample_folders(root)
    check_output(root, out, seed, engine.slots, setup)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARK).write_text(json.dumps(_mark(root, seed, engine.slots, setup)) + "\n", encoding="utf-8")
    todo = [(i, f) for i, f in enumerate(folders) if not (out / f.relative_to(root) / "output.json").is_file()]
    frame = engine.frame_size
    frame_seconds = frame / engine.sample_rate
    state = Progress(0, len(todo), 0.0, sum(seconds_of(f / "input.wav") or 0.0 for _, f in todo), 0.0,
                     skipped=len(folders) - len(todo))
    start = time.perf_counter()
    if progress:
        progress(state)

    def load(index: int, folder: Path) -> _Job:  # when a slot takes it: only the running samples are in memory
        pcm = load_audio(folder / "input.wav", engine.sample_rate)[0].numpy()
        padded = np.pad(pcm, (0, (-len(pcm)) % frame)).reshape(-1, frame)
        return _Job(index, folder, task_of(folder, root), padded, len(pcm) / engine.sample_rate)

    def finish(job: _Job) -> None:
        target = out / job.folder.relative_to(root)
        target.mkdir(parents=True, exist_ok=True)
        for item in job.folder.iterdir():
            if item.is_file() and item.name not in ("output.wav", "output.json"):
                shutil.copy2(item, target / item.name)
        audio = np.concatenate([np.zeros(OUTPUT_DELAY_FRAMES * frame, np.float32), *job.audio])
        length = int(round(job.input_seconds * OUTPUT_RATE))
        audio16 = resample(torch.from_numpy(audio)[None], engine.sample_rate, OUTPUT_RATE)[0]
        audio16 = torch.nn.functional.pad(audio16, (0, max(0, length - audio16.shape[-1])))[:length]
        save_audio(target / "output.wav", audio16, OUTPUT_RATE)
        words = words_from_pieces([(k + OUTPUT_DELAY_FRAMES, piece) for k, piece in job.pieces], frame_seconds)
        if job.task == INTERRUPTION:
            end = annotation_time(job.folder, INTERRUPTION)
            words = [w for w in words if w.start >= end]
        partial = target / "output.json.partial"  # the sample counts as finished once output.json exists
        write_chunks(partial, words)
        os.replace(partial, target / "output.json")

    queue, running = list(todo), {}
    steps = occupied = most = 0  # engine steps, and the slots they ran: summed, at most
    chosen = {} if adapter is None else {"adapter": adapter}  # (stand-in engines need not know of adapters)
    if prompt is not None:
        engine.prepare_prompt(prompt, **chosen)
    freeze_startup_objects()
    try:
        while queue or running:
            while queue and engine.free_slots > 0:
                job = load(*queue.pop(0))
                job.slot = engine.open(seed=seed + job.index, **({} if prompt is None else {"prompt": prompt}),
                                       **chosen, **(sampling or {}))
                running[job.slot] = job
            outputs = engine.step({slot: job.frames[job.position] for slot, job in running.items()})
            steps += 1
            occupied += len(running)
            most = max(most, len(running))
            for slot, job in list(running.items()):
                audio, text = outputs[slot]
                job.audio.append(audio)
                if text:
                    job.pieces.append((job.position, text))
                job.position += 1
                if job.position == len(job.frames):
                    engine.close(slot)
                    del running[slot]
                    finish(job)
                    state.done += 1
                    state.audio_seconds += job.input_seconds
                    state.wall_seconds = time.perf_counter() - start
                    if progress:
                        progress(state)
    except KeyboardInterrupt:
        kept = state.skipped + state.done
        raise RunInterrupted(f"interrupted: {kept} of {len(folders)} samples finished are kept in {out}; the same "
                             "command again runs the rest") from None
    finally:
        gc.unfreeze()
    _copy_set_files(root, out)
    (out / MARK).unlink()
    return run_figures(len(folders), state.skipped, state.audio_seconds, time.perf_counter() - start, engine.slots,
                       steps, occupied, most)


def run_figures(samples: int, skipped: int, audio_seconds: float, wall_seconds: float, slots: int, steps: int,
                occupied: int, most: int) -> dict:
    """A run's figures: ``samples`` (``skipped`` of them finished by an earlier, interrupted run), the seconds of
    input audio run and the wall time it took, their ratio both ways (``x_real_time``: audio seconds per second;
    ``real_time_factor``: its inverse, wall seconds per audio second), the engine's steps (80 ms frames of every
    running sample at once) and the slots they ran: ``slots_used`` mean and max of the occupied slots over the
    steps, of ``slots``."""
    return {"samples": samples, "skipped": skipped, "audio_seconds": audio_seconds, "wall_seconds": wall_seconds,
            "x_real_time": audio_seconds / wall_seconds if wall_seconds > 0 else 0.0,
            "real_time_factor": wall_seconds / audio_seconds if audio_seconds > 0 else None,
            "engine_steps": steps, "slots": slots,
            "slots_used": {"mean": occupied / steps if steps else 0.0, "max": most}}


def format_run(ran: dict, slots: int, out: Path) -> str:
    """One line: what a run did, how fast, and where."""
    speed = ran["audio_seconds"] / max(ran["wall_seconds"], 1e-9)
    skipped = f" ({ran['skipped']} finished earlier)" if ran.get("skipped") else ""
    return (f"{ran['samples']} samples{skipped}, {ran['audio_seconds']:.1f} s of audio in {ran['wall_seconds']:.1f} s "
            f"({speed:.2f}x real time, {slots} slot{'' if slots == 1 else 's'}) -> {out}")


def format_run_table(run: dict) -> str:
    """The run's figures (``run_figures``, and ``load_seconds`` when the caller timed the model's loading) as a
    table of one row, then what its columns mean."""
    rtf = run.get("real_time_factor")
    used = run["slots_used"]
    load = run.get("load_seconds")
    head = (f"{'samples':>7} {'audio s':>9} {'wall s':>8} {'x real time':>11} {'RTF':>7} {'steps':>7} "
            f"{'slots used (mean / max of N)':>28}" + (f" {'load s':>7}" if load is not None else ""))
    slots = f"{used['mean']:.1f} / {used['max']} of {run['slots']}"
    row = (f"{run['samples'] - run.get('skipped', 0):>7} {run['audio_seconds']:>9.1f} {run['wall_seconds']:>8.1f} "
           f"{run['x_real_time']:>10.2f}x {'-' if rtf is None else f'{rtf:.4f}':>7} {run['engine_steps']:>7} "
           f"{slots:>28}" + (f" {load:>7.1f}" if load is not None else ""))
    legend = ("samples: run by this command" + (f" ({run['skipped']} finished by an earlier run)"
                                                 if run.get("skipped") else "")
              + "; audio s: their input audio; wall s: from the first sample to the last output written (not "
              "the scoring); x real time: audio s / wall s; RTF: wall s / audio s; steps: engine steps (one 80 ms "
              "frame of every running sample); slots used: running samples per step"
              + ("; load s: the model loaded and the engine built, before the run" if load is not None else ""))
    return "\n".join([head, row, *textwrap.wrap(legend, 115)])


def _copy_set_files(root: Path, out: Path) -> None:
    """Files of the set outside the sample folders (FDB's icc_gt_distribution.json beside the backchannel
    samples, READMEs) go to the same place in OUT, so that OUT scores as DIR would."""
    for folder, _, files in os.walk(root):
        folder = Path(folder)
        if "input.wav" in files:
            continue
        for name in files:
            target = out / folder.relative_to(root)
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(folder / name, target / name)
