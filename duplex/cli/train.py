"""``duplex train codec``: train a Mimi-architecture codec on the synthetic corpus."""

from __future__ import annotations

import json
import os
import sys
import time

import torch

from ..errors import UsageError
from .common import non_negative, pick_device, positive, positive_float, weight


def _codec_config(name: str):
    from codec import MimiConfig

    if name == "small":
        return MimiConfig.small()
    if name == "official":
        return MimiConfig.official()
    return MimiConfig.load(name)


def _logged_step(line: str) -> float:
    """The step of a log line; infinity for a line that is not a whole record (a crash can cut the last one)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, TypeError, KeyError):
        return float("inf")


def run_train_codec(args) -> int:
    from codec import Mimi
    from codec.shipped import export_for_inference
    from codec.train.trainer import CodecTrainer, TrainConfig, init_for_training

    from ..data.codec_crops import CorpusAudio

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    frame = 1920
    samples = max(1, round(args.segment_seconds * 24000 / frame)) * frame
    try:
        train = CorpusAudio(args.data, "train")
        heldout = CorpusAudio(args.data, "heldout") if args.eval_every else None
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    # A run folder is never overwritten by accident (a forgotten --resume would lose hours of training).
    existing = os.path.exists(os.path.join(args.out, "trainer.pt"))
    if args.resume and not existing:
        raise UsageError(f"--resume: {args.out} holds no run to continue (no trainer.pt)")
    if existing and not args.resume:
        raise UsageError(f"{args.out} already holds a training run (trainer.pt): --resume continues it, or "
                         f"choose another --out")
    resume = args.resume
    config = _codec_config(args.config) if not resume else _codec_config(os.path.join(args.out, "config.json"))
    torch.manual_seed(args.seed)
    mimi = Mimi(config, num_codebooks=min(8, config.quantizer.n_q))
    if not resume:
        init_for_training(mimi, seed=args.seed)
    mimi = mimi.to(device)
    mimi._rebuild_derived()
    cfg = TrainConfig(learning_rate=args.lr, max_codebooks=min(args.max_codebooks, config.quantizer.n_q),
                      lr_schedule=args.lr_schedule, total_steps=args.steps,
                      linear_mel_weight=args.linear_mel_weight, adversarial_weight=args.adversarial_weight,
                      feature_matching_weight=args.feature_matching_weight)
    trainer = CodecTrainer(mimi, cfg, seed=args.seed)
    if resume:
        from codec import CheckpointError

        try:
            trainer.load(args.out)
        except (ValueError, CheckpointError) as e:
            raise UsageError(f"--resume: {e}") from None
        log_file = os.path.join(args.out, "log.jsonl")
        if os.path.exists(log_file):  # drop what was logged after the checkpoint (a crash): it is redone
            with open(log_file, encoding="utf-8") as f:
                kept = [line for line in f if _logged_step(line) <= trainer.step]
            with open(log_file, "w", encoding="utf-8") as f:
                f.writelines(kept)
        print(f"resumed {args.out} at step {trainer.step} (training options come from this command line)",
              file=sys.stderr)
    eval_batch = (heldout.batch(8, samples, torch.Generator().manual_seed(1234), speech=True).to(device)
                  if heldout else None)
    log_path = os.path.join(args.out, "log.jsonl")
    os.makedirs(args.out, exist_ok=True)
    print(f"training on {train.seconds / 3600:.2f} h ({len(train.clips)} channels, "
          f"{train.speech_seconds / 3600:.2f} h of speech frames), "
          f"{sum(p.numel() for p in mimi.parameters()) / 1e6:.2f} M parameters, {device}", file=sys.stderr)
    # --stop-at ends this invocation early (a later --resume continues); the schedule still plans for --steps.
    end = min(args.steps, args.stop_at) if args.stop_at else args.steps
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=end, initial=trainer.step, unit="step")
    start = time.time()
    # A fresh run starts its log afresh (a run that crashed before its first checkpoint leaves one behind).
    with open(log_path, "a" if resume else "w", encoding="utf-8") as log:
        while trainer.step < end:
            batch = train.batch(args.batch_size, samples, trainer.generator, speech=args.crops == "speech").to(device)
            record = {"step": trainer.step + 1, **trainer.train_step(batch)}
            if eval_batch is not None and trainer.step % args.eval_every == 0:
                record["heldout"] = trainer.evaluate(eval_batch, n_q=min(8, config.quantizer.n_q))
            log.write(json.dumps(record) + "\n")
            log.flush()  # followable with tail -f
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}", mel=f"{record['mel']:.3f}")
            elif trainer.step % 50 == 0 or trainer.step == end:
                print(f"step {trainer.step}: loss {record['loss']:.4f} mel {record['mel']:.4f}", file=sys.stderr)
            if trainer.step % args.save_every == 0 or trainer.step == end:
                trainer.save(args.out)
                # the inference file (float16, what duplex ships): loads with --config codec-fp16.json
                export_for_inference(trainer.mimi, os.path.join(args.out, "codec-fp16.safetensors"))
    if bar:
        bar.close()
    print(f"step {trainer.step} of {args.steps} after {time.time() - start:.0f} s -> {args.out}/codec.safetensors "
          f"(config {args.out}/config.json); inference file {args.out}/codec-fp16.safetensors "
          f"(config {args.out}/codec-fp16.json)", file=sys.stderr)
    return 0


def register(commands) -> None:
    """``duplex train codec``."""
    train = commands.add_parser("train", help="train models on the synthetic corpus")
    train_commands = train.add_subparsers(dest="train_command", required=True, metavar="WHAT")
    p = train_commands.add_parser("codec", help="train a Mimi-architecture codec")
    p.add_argument("--data", required=True, help="corpus folder made by 'duplex data synth'")
    p.add_argument("--out", required=True, help="run folder: codec.safetensors, config.json, trainer.pt, log.jsonl")
    p.add_argument("--config", default="small", help="small (default), official, or a config JSON (official layout)")
    p.add_argument("--steps", type=positive, default=2000, help="optimiser steps the run is planned for")
    p.add_argument("--batch-size", type=positive, default=8, help="crops per step")
    p.add_argument("--segment-seconds", type=positive_float, default=2.0,
                   help="length of each crop, rounded to whole 80 ms frames")
    p.add_argument("--lr", type=positive_float, default=3e-4, help="peak learning rate of AdamW")
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default="cosine",
                   help="cosine: decay to 10%% of --lr at --steps (default)")
    p.add_argument("--linear-mel-weight", type=weight, default=0.0,
                   help="weight of an L1 loss on linear mel magnitudes beside the log-mel loss")
    p.add_argument("--stop-at", type=positive, default=None, metavar="STEP",
                   help="end this run at STEP (saved; --resume continues), the schedule still planned for --steps")
    p.add_argument("--adversarial-weight", type=weight, default=0.0,
                   help="weight of the multi-period discriminator's hinge loss (0: no discriminator)")
    p.add_argument("--feature-matching-weight", type=weight, default=0.0,
                   help="weight of the discriminator feature-matching loss (0: off)")
    p.add_argument("--crops", choices=["speech", "any"], default="speech",
                   help="speech: every training crop contains speech (default); any: uniform crops")
    p.add_argument("--max-codebooks", type=positive, default=8, help="quantizer dropout trains 1..N codebooks")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--seed", type=int, default=0, help="initialisation and data order")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--save-every", type=positive, default=250, help="checkpoint every N steps (and at the end)")
    p.add_argument("--eval-every", type=non_negative, default=100, help="held-out losses every N steps (0: never)")
    p.add_argument("--threads", type=non_negative, default=0, help="torch CPU threads (0: torch's choice)")
    p.set_defaults(run=run_train_codec)

