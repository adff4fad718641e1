"""A recording through the engine, offline: the library side of ``duplex offline`` and ``duplex mic --input-file``
(docs/offline.md).

The counterpart of NVIDIA's ``moshi.offline``: the user's recording is fed frame by frame as a live stream would
be, after an optional system prompt (a voice and a role text, ``Engine.system_prompt``), and the model's reply is
collected with its text. Two layouts of the text: NVIDIA's JSON list (``nvidia_text``: one entry per frame the model
produced, its piece with "▁" as a space, or ``"EPAD"`` / ``"PAD"`` for the padding tokens 0 and 3), and the pieces
with their frame (``OfflineRun.pieces``).

One difference from NVIDIA's runner, on purpose: the reply keeps its timing. NVIDIA concatenates the frames the
model produced (its first two calls produce none) and pads the end with zeros to the input's length, so its reply
starts 160 ms early; here the frames before the model's first are silence, so the reply lines up with the input
sample for sample, as ``duplex mic --input-file`` always wrote it (and as Full-Duplex-Bench timing expects).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple, Union

import numpy as np

from ..model.prompts import PromptFrames
from .clock import ClockStats, FrameClock, run_engine

# NVIDIA's offline runner writes these names for the padding tokens instead of their pieces.
NVIDIA_TEXT_NAMES = {0: "EPAD", 3: "PAD"}
STATUS_EVERY_FRAMES = 12  # the progress line: about once a second of audio


@dataclass
class OfflineRun:
    """What ``run_offline`` produced. ``reply``: the model's audio, as long as the input when complete;
    ``tokens``: the text token of every frame (-2 before the model's first frame); ``pieces``: (frame, piece) of the
    shown text; ``frames`` done of ``total``; ``interrupted`` when Ctrl-C stopped it early; ``clock``: late frames;
    ``seconds`` of input and ``reply_seconds`` of reply; ``prompt_frames``: the system prompt's length."""

    reply: np.ndarray
    tokens: List[int]
    pieces: List[Tuple[int, str]]
    frames: int
    total: int
    interrupted: bool
    clock: ClockStats
    seconds: float = 0.0
    reply_seconds: float = 0.0
    prompt_frames: int = 0
    text: List[str] = field(default_factory=list)  # NVIDIA's JSON layout (``nvidia_text``), when a tokenizer is known


def nvidia_text(tokens, tokenizer) -> List[str]:
    """The text of a run as NVIDIA's ``moshi.offline`` writes ``--output-text``: for every frame the model
    produced (``tokens`` >= 0), the token's SentencePiece piece with "▁" as a space, or "EPAD" / "PAD" for 0 / 3
    ("" for a token past the tokenizer's pieces, where NVIDIA's would fail)."""
    out = []
    size = tokenizer.sp.GetPieceSize()
    for token in tokens:
        token = int(token)
        if token < 0:
            continue
        if token in NVIDIA_TEXT_NAMES:
            out.append(NVIDIA_TEXT_NAMES[token])
        else:  # "": beyond the tokenizer (a test model's text vocabulary may be larger)
            out.append(tokenizer.sp.IdToPiece(token).replace("\u2581", " ") if token < size else "")
    return out


def run_offline(engine, pcm: np.ndarray, prompt: Optional[PromptFrames] = None, realtime: bool = False,
                on_text: Optional[Callable[[str], None]] = None,
                on_frame: Optional[Callable[[int, int], None]] = None, display=None,
                adapter: Union[None, int, str] = None, **sampling) -> OfflineRun:
    """``pcm`` (float32 mono at the engine's rate) through one engine slot, frame by frame; the reply has the same
    length. ``prompt``: a system prompt (``engine.system_prompt``), stepped first (its state is kept, so the next run
    with the same prompt starts at once); ``adapter``: the LoRA adapter the slot runs (``Engine.open``: a name,
    "none" for the base model; default the engine's first); ``sampling``: fields of the slot's ``SlotSampling``
    (``seed``, ``temperature``...). ``realtime`` paces the frames at 80 ms.

    ``on_text(piece)`` for the model's words, ``on_frame(done, total)`` after every frame; ``display`` (a
    ``serving.terminal.LiveText``), when given, shows the words and a progress line and is closed at the end.
    Ctrl-C (KeyboardInterrupt) stops it between two frames and returns what was done, marked ``interrupted``."""
    frame = engine.frame_size
    frame_seconds = frame / engine.sample_rate
    pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
    frames = np.pad(pcm, (0, (-len(pcm)) % frame)).reshape(-1, frame)
    chosen = {} if adapter is None else {"adapter": adapter}  # (stand-in engines need not know of adapters)
    if prompt is not None:
        engine.prepare_prompt(prompt, **chosen)  # stepped alone once, then copied into the slot when it opens
    slot = engine.open(prompt=prompt, **chosen, **sampling)
    replies, tokens, pieces = [], [], []

    def sink(tick, outputs):
        audio, text = outputs[slot]
        replies.append(audio)
        tokens.append(int(engine.last_tokens[slot, 0]))
        done = tick + 1
        if text:
            pieces.append((tick, text))
            if on_text:
                on_text(text)
            if display:
                display.write(text)
        if display and (done % STATUS_EVERY_FRAMES == 0 or done == len(frames)):
            display.status(f"[{done * frame_seconds:.1f} / {len(frames) * frame_seconds:.1f} s]")
        if on_frame:
            on_frame(done, len(frames))

    clock = FrameClock(frame_seconds, realtime=realtime)
    interrupted = False
    try:
        run_engine(engine, source=lambda tick: {slot: frames[tick]}, sink=sink, ticks=len(frames), clock=clock)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        engine.close(slot)
        if display:
            display.close()
    reply = np.concatenate(replies)[:len(pcm)] if replies else np.zeros(0, np.float32)
    text = nvidia_text(tokens, engine.tokenizer) if engine.tokenizer is not None else []
    return OfflineRun(reply, tokens, pieces, len(replies), len(frames), interrupted, clock.stats,
                      len(pcm) / engine.sample_rate, len(reply) / engine.sample_rate,
                      0 if prompt is None else len(prompt), text)



class PromptedEngine:
    """The engine as seen by code that opens its own slots (``serving.mic.run_live``): ``open`` starts every session
    in ``prompt`` (or none), whose state is stepped once, here, and then copied into each slot as it opens (no prompt
    frames to wait for), with the LoRA ``adapter`` (a name, "none"; None: the engine's default). Everything else is
    the engine's."""

    def __init__(self, engine, prompt: Optional[PromptFrames], adapter: Union[None, int, str] = None):
        self._chosen = {} if adapter is None else {"adapter": adapter}
        if prompt is not None:
            engine.prepare_prompt(prompt, **self._chosen)
        self._engine, self._prompt = engine, prompt

    def open(self, sampling=None, **changes) -> int:
        return self._engine.open(sampling, prompt=self._prompt, **{**self._chosen, **changes})

    def __getattr__(self, name):
        return getattr(self._engine, name)
