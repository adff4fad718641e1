"""``duplex train lm``: train (or fine-tune) a Moshi-architecture LM on a dataset in Kyutai's fine-tuning layout.

One readable loop: teacher-forced ``forward_train`` on segments [B, 17, T], ``lm_loss`` (Kyutai's weights), AdamW
with Kyutai's defaults, a one-cycle cosine schedule, gradient clipping; held-out losses every N steps; a run folder
that resumes exactly (the data position is part of the saved state, the rest of the loop is deterministic); the
exported model (``model.safetensors`` in Kyutai's key layout, ``config.json`` in its keyword layout, and the
tokenizer) rewritten at every checkpoint, so a stopped run always leaves a usable model.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from ..errors import UsageError
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


def _resolve_config(options: LMTrainingOptions, run: RunFolder):
    from ..model.config import LMConfig, lm_config_beside

    if options.resume:
        return LMConfig.load(run.file(EXPORT_CONFIG)), False
    if options.config is not None:
        return LMConfig.load(options.config), options.config in LMConfig.PRESETS
    if options.init is not None:
        beside = lm_config_beside(options.init)
        if beside is None:
            raise UsageError(f"--init {options.init}: no config.json beside it; pass --config (a preset such as "
                             f"moshi_7b, or the JSON the model was made with)")
        return LMConfig.load(beside), False
    return LMConfig.load("default"), True


def _fit_vocabulary(config, tokenizer, resizable: bool, where: str):
    """The text vocabulary must hold the tokenizer's ids; a preset is sized to the tokenizer exactly."""
    if resizable and config.text_card != tokenizer.vocab_size:
        config.text_card = tokenizer.vocab_size
        config.validate()
    elif tokenizer.vocab_size > config.text_card:
        raise UsageError(f"{where}: the tokenizer has {tokenizer.vocab_size} pieces but the LM's text vocabulary "
                         f"(text_card) only {config.text_card}")
    return config


def export_model(model, folder: str, tokenizer_path: str, dtype: torch.dtype) -> None:
    """``model.safetensors`` (Kyutai's key layout), ``config.json`` (its keyword layout) and the tokenizer."""
    from codec.io.checkpoint import write_safetensors
    from codec.io.files import write_json

    state = {k: v.detach().to(dtype).contiguous().cpu() for k, v in model.state_dict().items()}
    write_safetensors(state, os.path.join(folder, EXPORT), metadata={"format": "pt"})
    config = model.config.to_dict()
    write_json(os.path.join(folder, EXPORT_CONFIG), config)
    target = os.path.join(folder, EXPORT_TOKENIZER)
    if os.path.abspath(tokenizer_path) != os.path.abspath(target):
        shutil.copyfile(tokenizer_path, target)


def _best_heldout(folder: str) -> float:
    import json

    try:
        with open(os.path.join(folder, "step.json"), encoding="utf-8") as f:
            return float(json.load(f)["heldout"]["loss"])
    except (OSError, ValueError, KeyError, TypeError):
        return float("inf")


def plot_losses(log_path: str, png: str) -> None:
    """Training and held-out losses against steps (text and audio separately)."""
    import json

    from matplotlib.figure import Figure  # no pyplot: the process's matplotlib backend is left alone

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
    """Train (or resume) the run in ``options.out``; returns the step reached."""
    from codec import CheckpointError
    from codec.io.checkpoint import check_and_load, normalize_keys
    from codec.io.files import write_json

    from ..data.lm_dataset import DatasetError, SegmentSource, load_conversations
    from ..model.lm import MoshiLM
    from ..model.tokenizer import TextTokenizer
    from .lm_loss import LossWeights, lm_loss

    run = RunFolder(options.out, options.resume)
    data = Path(options.data)
    tokenizer_path = (run.file(EXPORT_TOKENIZER) if options.resume
                      else options.tokenizer or str(data / "tokenizer.model"))
    if not os.path.isfile(tokenizer_path):
        raise UsageError(f"tokenizer not found: {tokenizer_path} (make one with 'duplex train tokenizer --data "
                         f"{data} --out {data / 'tokenizer.model'}', or pass --tokenizer)")
    tokenizer = TextTokenizer(tokenizer_path)
    config, resizable = _resolve_config(options, run)
    config = _fit_vocabulary(config, tokenizer, resizable and options.init is None, "train lm")
    frame_rate = 12.5
    segment_frames = max(1, round(options.segment_seconds * frame_rate))
    if config.n_q != 2 * config.dep_q:
        raise UsageError(f"train lm: n_q must be 2 x dep_q (the model's and the user's codebooks), got n_q "
                         f"{config.n_q}, dep_q {config.dep_q}")
    try:
        train = load_conversations(data / "train.jsonl", config.dep_q, frame_rate)
        heldout = (load_conversations(data / "heldout.jsonl", config.dep_q, frame_rate)
                   if options.eval_every and (data / "heldout.jsonl").is_file() else [])
    except DatasetError as e:
        raise UsageError(str(e)) from None
    source = SegmentSource(train, tokenizer.encode, segment_frames, frame_rate, options.segments, options.seed)
    held_source = (SegmentSource(heldout, tokenizer.encode, segment_frames, frame_rate, "consecutive")
                   if heldout else None)

    if options.init and not options.resume:
        try:
            model = MoshiLM.from_checkpoint(options.init, config, device=device, dtype=torch.float32)
        except (CheckpointError, ValueError) as e:
            raise UsageError(f"--init {options.init}: {e}") from None
        what = f"from {options.init}"
    else:
        model = MoshiLM.random(config, seed=options.seed, device=device, dtype=torch.float32)
        what = "from random weights" if not options.resume else ""
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]  # the norms' gains: decaying them only hurts
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": options.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=options.lr, betas=(0.9, 0.95), eps=1e-8)
    step = 0
    if options.resume:
        try:
            weights, state = run.load_checkpoint(WEIGHTS)
        except CheckpointError as e:
            raise UsageError(f"--resume: {e}") from None
        check_and_load(model, normalize_keys(weights), "LM", source=run.file(WEIGHTS), assign=False)
        optimizer.load_state_dict(state["optimizer"])
        step, source.position = state["step"], tuple(state["data_position"])
        print(f"resumed {options.out} at step {step} (training options come from this command line)",
              file=sys.stderr)
    weights_cfg = LossWeights(semantic=options.semantic_weight, text_padding=options.text_padding_weight)
    export_dtype = EXPORT_DTYPES[options.export_dtype]
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    params = sum(p.numel() for p in model.parameters())
    frames = sum(c.frames for c in train)
    print(f"training {params / 1e6:.1f} M parameters {what} on {frames / frame_rate / 3600:.2f} h "
          f"({len(train)} files, {len(heldout)} held out), segments of {segment_frames} frames, {device}",
          file=sys.stderr)

    def evaluate() -> dict:
        model.eval()
        totals, count = {}, 0
        with torch.no_grad(), autocast:
            for batch in held_source.all_segments(options.batch_size):
                losses = lm_loss(model.forward_train(batch.to(device)), batch, weights_cfg)
                for k, v in losses.items():
                    totals[k] = totals.get(k, 0.0) + float(v) * batch.shape[0]
                count += batch.shape[0]
        model.train()
        return {k: v / count for k, v in totals.items()}

    def save() -> None:
        state = {"step": step, "optimizer": optimizer.state_dict(), "data_position": list(source.position),
                 "options": asdict(options)}
        export_model(model, options.out, tokenizer_path, export_dtype)
        run.save_checkpoint(WEIGHTS, {k: v.detach().contiguous() for k, v in model.state_dict().items()}, state,
                            step)
        plot_losses(run.file("log.jsonl"), run.file("loss.png"))

    end = min(options.steps, options.stop_at) if options.stop_at else options.steps
    best = [_best_heldout(run.file(BEST)) if options.resume else float("inf")]
    started = time.time()
    with run:
        run.open_log(step)
        progress = run.progress(end, step)
        if step == 0:
            export_model(model, options.out, tokenizer_path, export_dtype)  # the config is there from the start
        while step < end:
            lr = one_cycle_lr(step, options.steps, options.lr, options.warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = source.next_batch(options.batch_size)
            with autocast:
                losses = lm_loss(model.forward_train(batch.to(device)), batch, weights_cfg)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
            if not bool(torch.isfinite(norm)):
                raise UsageError(f"train lm: the gradient became non-finite at step {step + 1} (lower --lr)")
            optimizer.step()
            step += 1
            record = {"step": step, "lr": lr, "grad_norm": float(norm),
                      **{k: float(v.detach()) for k, v in losses.items()}}
            if held_source is not None and options.eval_every and step % options.eval_every == 0:
                record["heldout"] = evaluate()
                if record["heldout"]["loss"] < best[0]:  # the model at its best held-out loss, kept aside
                    best[0] = record["heldout"]["loss"]
                    os.makedirs(run.file(BEST), exist_ok=True)
                    export_model(model, run.file(BEST), tokenizer_path, export_dtype)
                    write_json(os.path.join(run.file(BEST), "step.json"), {"step": step, "heldout": record["heldout"]})
            run.log(record)
            progress(step, loss=record["loss"], text=record["text"], audio=record["audio"])
            stopping = run.stop_requested()
            if step % options.save_every == 0 or step == end or stopping:
                save()
            if stopping:
                break
    print(f"step {step} of {options.steps} after {time.time() - started:.0f} s -> {run.file(EXPORT)} "
          f"(config {run.file(EXPORT_CONFIG)}, tokenizer {run.file(EXPORT_TOKENIZER)}, losses {run.file('loss.png')})",
          file=sys.stderr)
    return step
