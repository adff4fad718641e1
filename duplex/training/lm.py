"""``duplex train lm``: train (or fine-tune) a Moshi-architecture LM on a dataset in Kyutai's fine-tuning layout.

``LMTrainer`` has the shape of the codec's ``CodecTrainer`` (``train_step`` / ``evaluate`` / ``save`` / ``load``
through the run folder); ``fit`` is the loop and ``train_lm`` the wiring. What a step does: teacher-forced ``forward_train`` on segments [B, 17, T], ``lm_loss`` (Kyutai's weights), AdamW
with Kyutai's defaults, a one-cycle cosine schedule, gradient clipping; held-out losses every N steps; a run folder
that resumes exactly (the data position is part of the saved state, the rest of the loop is deterministic); the
exported model (``model.safetensors`` in Kyutai's key layout, ``config.json`` in its keyword layout, and the
tokenizer) rewritten at every checkpoint, so a stopped run always leaves a usable model.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional

import torch

from codec.io.checkpoint import check_and_load, normalize_keys
from codec.io.files import write_json

from ..data.lm_dataset import SegmentSource, codes_frame_rate, load_conversations
from ..errors import DatasetError, TokenizerError, UsageError
from ..model.config import LMConfig, lm_config_beside
from ..model.lm import MoshiLM
from ..model.tokenizer import TextTokenizer
from .lm_loss import LossWeights, lm_loss
from .run import RunFolder

WEIGHTS = "lm.safetensors"  # the float32 training weights of the checkpoint set
EXPORT = "model.safetensors"
EXPORT_CONFIG = "config.json"
EXPORT_TOKENIZER = "tokenizer.model"
BEST = "best"  # the export at the lowest held-out loss so far (a run that overfits keeps its best model)
EXPORT_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class LMTrainingOptions:
    data: str
    out: str
    tokenizer: Optional[str] = None  # default: DATA/tokenizer.model
    config: Optional[str] = None  # preset or JSON (default: "default", or the one beside --init)
    init: Optional[str] = None  # a checkpoint to start from (fine-tuning)
    steps: int = 2000  # what the schedule is planned for
    stop_at: Optional[int] = None
    batch_size: int = 8
    segment_seconds: float = 10.0
    segments: str = "random"  # random crops, or Kyutai's consecutive cut
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup: float = 0.05  # share of the steps
    grad_clip: float = 1.0
    semantic_weight: float = 100.0
    text_padding_weight: float = 0.5
    export_dtype: str = "bfloat16"
    seed: int = 0
    resume: bool = False
    save_every: int = 250
    eval_every: int = 100


def one_cycle_lr(step: int, total: int, peak: float, warmup: float = 0.05) -> float:
    """The learning rate of optimiser step ``step`` (0-based) of a one-cycle cosine schedule, as torch's
    ``OneCycleLR`` (``anneal_strategy="cos"``, ``div_factor=25``, ``final_div_factor=1e4``) computes it: a cosine
    rise from peak/25 to the peak over the warm-up, then a cosine fall to peak/25/1e4 at the last step."""
    start, end = peak / 25, peak / 25 / 1e4
    rise = float(warmup * total) - 1
    if rise > 0 and step <= rise:
        pct, low, high = step / rise, start, peak
    else:
        fall = total - 1 - max(rise, 0)
        pct, low, high = (step - max(rise, 0)) / max(fall, 1), peak, end
    return high + (low - high) * (math.cos(math.pi * min(pct, 1.0)) + 1) / 2


def _resolve_config(options: LMTrainingOptions, run: RunFolder) -> "tuple[LMConfig, bool]":
    """(the LM's config, whether it is a preset that may be sized to the tokenizer)."""
    if options.resume:
        return LMConfig.load(run.file(EXPORT_CONFIG)), False
    if options.config is not None:
        return LMConfig.load(options.config), options.config in LMConfig.PRESETS
    if options.init is not None:
        beside = lm_config_beside(options.init)
        if beside is None:
            raise UsageError(f"{options.init}: no config.json beside it; name the config it was made with (a preset "
                             "such as moshi_7b, or its JSON)")
        return LMConfig.load(beside), False
    return LMConfig.load("default"), True


def _fit_vocabulary(config: LMConfig, tokenizer: TextTokenizer, resizable: bool) -> LMConfig:
    """The text vocabulary must hold the tokenizer's ids; a preset is sized to the tokenizer exactly."""
    if resizable and config.text_card != tokenizer.vocab_size:
        config.text_card = tokenizer.vocab_size
        config.validate()
    elif tokenizer.vocab_size > config.text_card:
        raise UsageError(f"the tokenizer has {tokenizer.vocab_size} pieces but the LM's text vocabulary "
                         f"(text_card) only {config.text_card}")
    if config.n_q != 2 * config.dep_q:
        raise UsageError(f"n_q must be 2 x dep_q (the model's and the user's codebooks), got n_q {config.n_q}, "
                         f"dep_q {config.dep_q}")
    return config


def export_model(model: MoshiLM, folder: str, tokenizer_path: str, dtype: torch.dtype) -> None:
    """The usable model: ``MoshiLM.save`` (Kyutai's layout) and the tokenizer beside it."""
    model.save(folder, dtype)
    target = os.path.join(folder, EXPORT_TOKENIZER)
    if os.path.abspath(tokenizer_path) != os.path.abspath(target):
        shutil.copyfile(tokenizer_path, target)


class LMTrainer:
    """One optimiser step per batch (AdamW with Kyutai's betas, the one-cycle schedule, gradient clipping), held-out
    losses, and checkpoints in a run folder that hold everything needed to continue exactly (the data position
    travels in ``save``'s ``extra``)."""

    def __init__(self, model: MoshiLM, options: LMTrainingOptions):
        self.model, self.options = model.train(), options
        self.weights = LossWeights(semantic=options.semantic_weight, text_padding=options.text_padding_weight)
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]  # the norms' gains: decaying them only hurts
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": options.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}],
                                           lr=options.lr, betas=(0.9, 0.95), eps=1e-8)
        self.step = 0

    def _autocast(self):
        """bfloat16 autocast on CUDA (as Kyutai trains), plain float32 elsewhere."""
        if self.model.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def _losses(self, batch: torch.Tensor) -> Dict[str, torch.Tensor]:
        with self._autocast():
            return lm_loss(self.model.forward_train(batch.to(self.model.device)), batch, self.weights)

    def train_step(self, batch: torch.Tensor) -> Dict[str, float]:
        """One optimiser step on segments [B, K, T]: the learning rate, the gradient norm and the losses."""
        o = self.options
        lr = one_cycle_lr(self.step, o.steps, o.lr, o.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        losses = self._losses(batch)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.grad_clip)
        if not bool(torch.isfinite(norm)):
            raise UsageError(f"the gradient became non-finite at step {self.step + 1} (lower the learning rate)")
        self.optimizer.step()
        self.step += 1
        return {"lr": lr, "grad_norm": float(norm), **{k: float(v.detach()) for k, v in losses.items()}}

    @torch.no_grad()
    def evaluate(self, batches: Iterable[torch.Tensor]) -> Dict[str, float]:
        """The mean losses per segment over ``batches``."""
        self.model.eval()
        try:
            totals, count = {}, 0
            for batch in batches:
                for k, v in self._losses(batch).items():
                    totals[k] = totals.get(k, 0.0) + float(v) * batch.shape[0]
                count += batch.shape[0]
            return {k: v / count for k, v in totals.items()}
        finally:
            self.model.train()

    def save(self, run: RunFolder, extra: Optional[dict] = None) -> None:
        """The checkpoint set ``lm.safetensors`` (float32) + ``trainer.pt`` (step, optimizer, ``extra``)."""
        state = {"step": self.step, "optimizer": self.optimizer.state_dict(), **(extra or {})}
        weights = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        run.save_checkpoint(WEIGHTS, weights, state, self.step)

    def load(self, run: RunFolder) -> dict:
        """Continue from the run's checkpoint; returns its whole state (``extra`` included)."""
        weights, state = run.load_checkpoint(WEIGHTS)
        check_and_load(self.model, normalize_keys(weights), "LM", source=run.file(WEIGHTS), assign=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        return state


class BestModel:
    """The export at the lowest held-out loss so far, in its own folder with ``step.json`` (a run that overfits
    keeps its best model)."""

    def __init__(self, folder: str, resume: bool):
        self.folder = folder
        self.loss = _best_heldout(folder) if resume else float("inf")

    def offer(self, step: int, heldout: dict, export: Callable[[str], None]) -> None:
        if heldout["loss"] < self.loss:
            self.loss = heldout["loss"]
            os.makedirs(self.folder, exist_ok=True)
            export(self.folder)
            write_json(os.path.join(self.folder, "step.json"), {"step": step, "heldout": heldout})


def _best_heldout(folder: str) -> float:
    try:
        with open(os.path.join(folder, "step.json"), encoding="utf-8") as f:
            return float(json.load(f)["heldout"]["loss"])
    except (OSError, ValueError, KeyError, TypeError):
        return float("inf")


def fit(trainer: LMTrainer, run: RunFolder, next_batch: Callable[[], torch.Tensor], end: int,
        save: Callable[[], None], save_every: int, heldout: Optional[Callable[[], Iterable[torch.Tensor]]] = None,
        eval_every: int = 0, on_heldout: Callable[[int, dict], None] = lambda step, losses: None) -> None:
    """Train until ``trainer.step`` reaches ``end``, as ``codec.train.fit`` does: one logged record per step,
    held-out losses on ``heldout()`` every ``eval_every`` steps (shown, and given to ``on_heldout``), ``save()``
    every ``save_every`` steps, at the end, and when Ctrl-C asked the run to stop (always a whole step)."""
    progress = run.progress(end, trainer.step)
    while trainer.step < end:
        record = {"step": trainer.step + 1, **trainer.train_step(next_batch())}
        if heldout is not None and eval_every and trainer.step % eval_every == 0:
            record["heldout"] = trainer.evaluate(heldout())
            on_heldout(trainer.step, record["heldout"])
        run.log(record)
        progress(trainer.step, heldout=record.get("heldout"), loss=record["loss"], text=record["text"],
                 audio=record["audio"])
        stopping = run.stop_requested()
        if trainer.step % save_every == 0 or trainer.step == end or stopping:
            save()
        if stopping:
            return


def _data(options: LMTrainingOptions, config: LMConfig, tokenizer: TextTokenizer, frame_rate: float):
    """(training files, held-out files, their segment sources); the held-out source is None without files."""
    data, frames = Path(options.data), max(1, round(options.segment_seconds * frame_rate))
    train = load_conversations(data / "train.jsonl", config.dep_q, frame_rate)
    heldout = (load_conversations(data / "heldout.jsonl", config.dep_q, frame_rate)
               if options.eval_every and (data / "heldout.jsonl").is_file() else [])
    source = SegmentSource(train, tokenizer.encode, frames, frame_rate, options.segments, options.seed)
    held = SegmentSource(heldout, tokenizer.encode, frames, frame_rate, "consecutive") if heldout else None
    return train, heldout, source, held


def _model(options: LMTrainingOptions, config: LMConfig, device: torch.device) -> "tuple[MoshiLM, str]":
    if options.init and not options.resume:
        model = MoshiLM.from_checkpoint(options.init, config, device=device, dtype=torch.float32)
        if model.quantization != "none":  # its codes are not parameters: full fine-tuning would train only the rest
            raise UsageError(f"{options.init} holds {model.quantization} weights, which full fine-tuning cannot "
                             "train: start from the full-precision file")
        return model, f"from {options.init}"
    model = MoshiLM.random(config, seed=options.seed, device=device, dtype=torch.float32)
    return model, "" if options.resume else "from random weights"


def plot_losses(log_path: str, png: str) -> None:
    """Training and held-out losses against steps (text and audio separately)."""
    # no pyplot: the process's matplotlib backend is left alone
    from matplotlib.figure import Figure  # noqa: PLC0415 - slow to import, and only the plot needs it

    records = []
    with open(log_path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except ValueError:
                pass
    if not records:
        return
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, ("text", "audio")):
        steps = [r["step"] for r in records]
        values = [r[key] for r in records]
        window = max(1, len(values) // 100)
        smooth = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                  for i in range(len(values))]
        ax.plot(steps, values, color="0.8", linewidth=0.6, label="train (each step)")
        ax.plot(steps, smooth, color="C0", label=f"train (mean of {window})")
        held = [(r["step"], r["heldout"][key]) for r in records if "heldout" in r]
        if held:
            ax.plot(*zip(*held), "o-", color="C1", markersize=3, label="held-out")
        ax.set_xlabel("step")
        ax.set_ylabel(f"{key} loss (weighted cross-entropy)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=90)


def train_lm(options: LMTrainingOptions, device: torch.device) -> int:
    """Train (or resume) the run in ``options.out``; returns the step reached. After Ctrl-C the run stops at a
    step boundary, saves it, and raises KeyboardInterrupt."""
    data = Path(options.data)
    if not data.is_dir():  # before the tokenizer, which would otherwise be the first thing found missing
        raise DatasetError(f"{data}: no such dataset folder")
    run = RunFolder(options.out, options.resume)
    tokenizer_path = run.file(EXPORT_TOKENIZER) if options.resume else options.tokenizer or str(data / EXPORT_TOKENIZER)
    if not os.path.isfile(tokenizer_path):
        raise TokenizerError(f"tokenizer not found: {tokenizer_path} (train one on the dataset's transcripts with "
                         "'duplex train tokenizer')")
    tokenizer = TextTokenizer(tokenizer_path)
    config, resizable = _resolve_config(options, run)
    config = _fit_vocabulary(config, tokenizer, resizable and options.init is None)
    frame_rate = codes_frame_rate(data / "train.jsonl")
    train, heldout, source, held = _data(options, config, tokenizer, frame_rate)
    model, what = _model(options, config, device)
    trainer, best = LMTrainer(model, options), BestModel(run.file(BEST), options.resume)
    if options.resume:
        source.position = tuple(trainer.load(run)["data_position"])
        print(f"resumed {options.out} at step {trainer.step} (training options come from this call)", file=sys.stderr)
    dtype = EXPORT_DTYPES[options.export_dtype]
    print(f"training {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters {what} on "
          f"{sum(c.frames for c in train) / frame_rate / 3600:.2f} h ({len(train)} files, {len(heldout)} held out), "
          f"segments of {source.segment_frames} frames, {device}", file=sys.stderr)

    def export(folder: str) -> None:
        export_model(model, folder, tokenizer_path, dtype)

    def save() -> None:
        export(options.out)
        trainer.save(run, {"data_position": list(source.position), "options": asdict(options)})
        plot_losses(run.file("log.jsonl"), run.file("loss.png"))

    end = min(options.steps, options.stop_at) if options.stop_at else options.steps
    started = time.time()
    with run:
        run.open_log(trainer.step)
        if trainer.step == 0:
            export(options.out)  # the config is there from the start
        fit(trainer, run, lambda: source.next_batch(options.batch_size), end, save, options.save_every,
            heldout=(lambda: held.all_segments(options.batch_size)) if held else None, eval_every=options.eval_every,
            on_heldout=lambda step, losses: best.offer(step, losses, export))
    print(f"step {trainer.step} of {options.steps} after {time.time() - started:.0f} s -> {run.file(EXPORT)} "
          f"(config {run.file(EXPORT_CONFIG)}, tokenizer {run.file(EXPORT_TOKENIZER)}, losses {run.file('loss.png')})",
          file=sys.stderr)
    run.raise_if_interrupted(trainer.step)
    return trainer.step
