"""``duplex bench turns run DIR OUT``: every FDB sample of DIR through the engine, offline and many at a time (each
slot takes the next sample when its current one ends), writing OUT in DIR's layout: the sample's files copied,
``output.wav`` (16 kHz mono, time-synchronous with the input and exactly as long, as FDB's scorer expects) and
``output.json`` (FDB's ASR format) made from the model's own text stream: a word per run of text pieces, timed by
the frames that emitted them (frame k spans [0.08 k, 0.08 (k + 1)) s). For user-interruption samples only the
words that start after the interruption's end are kept, as FDB's ASR step transcribes only that audio.

With the same ``seed`` and slot count a run is repeated exactly (sample i samples with ``seed`` + i; the engine's
slots are independent of what runs beside them). Another slot count batches the arithmetic differently, so the
sampled outputs can differ in detail.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

from .fdb import INTERRUPTION, Chunk, annotation_time, find_samples, task_of, write_chunks

OUTPUT_RATE = 16000


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
    its pieces."""
    words: List[List] = []
    for frame, piece in pieces:
        if piece.startswith(" ") or not words:
            text = piece.strip()
            if not text:
                continue
            words.append([text, frame, frame])
        else:
            words[-1][0] += piece
            words[-1][2] = frame
    return [Chunk(text, round(first * frame_seconds, 3), round((last + 1) * frame_seconds, 3))
            for text, first, last in words]


def run_samples(engine, root: Path, out: Path, seed: int = 0,
                progress: Optional[Callable[[int, int, float, float], None]] = None) -> dict:
    """Run every sample under ``root`` into ``out``; returns {"samples", "audio_seconds", "wall_seconds"}.
    ``progress(done, total, audio_seconds_done, audio_seconds_total, wall_seconds)``."""
    import torch

    from codec.io.audio import load_audio, resample, save_audio

    from .vad import seconds_of

    root, out = Path(root), Path(out)
    folders = [f for f in find_samples(root) if task_of(f, root) is not None]
    frame = engine.frame_size
    total, done, audio_done = len(folders), 0, 0.0
    queue, running = list(enumerate(folders)), {}
    frame_seconds = frame / engine.sample_rate
    start = time.perf_counter()
    total_seconds = sum(seconds_of(f / "input.wav") or 0.0 for f in folders)

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
        audio = np.concatenate(job.audio) if job.audio else np.zeros(0, np.float32)
        length = int(round(job.input_seconds * OUTPUT_RATE))
        audio16 = resample(torch.from_numpy(audio)[None], engine.sample_rate, OUTPUT_RATE)[0]
        audio16 = torch.nn.functional.pad(audio16, (0, max(0, length - audio16.shape[-1])))[:length]
        save_audio(target / "output.wav", audio16, OUTPUT_RATE)
        words = words_from_pieces(job.pieces, frame_seconds)
        if job.task == INTERRUPTION:
            end = annotation_time(job.folder, INTERRUPTION)
            words = [w for w in words if w.start >= end]
        write_chunks(target / "output.json", words)

    while queue or running:
        while queue and engine.free_slots > 0:
            job = load(*queue.pop(0))
            job.slot = engine.open(seed=seed + job.index)
            running[job.slot] = job
        outputs = engine.step({slot: job.frames[job.position] for slot, job in running.items()})
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
                done += 1
                audio_done += job.input_seconds
                if progress:
                    progress(done, total, audio_done, total_seconds, time.perf_counter() - start)
    _copy_set_files(root, out)
    return {"samples": total, "audio_seconds": audio_done, "wall_seconds": time.perf_counter() - start}


def _copy_set_files(root: Path, out: Path) -> None:
    """Files of the set outside the sample folders (FDB's icc_gt_distribution.json beside the backchannel
    samples, READMEs) go to the same place in OUT, so that OUT scores as DIR would."""
    import os

    for folder, _, files in os.walk(root):
        folder = Path(folder)
        if "input.wav" in files:
            continue
        for name in files:
            target = out / folder.relative_to(root)
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(folder / name, target / name)
