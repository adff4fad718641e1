"""Codec training on the corpus: speech-centred crops of the corpus channels fed to ``codec.train.fit`` in a run
folder (``duplex train codec``)."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

import torch

from codec import Mimi, MimiConfig
from codec.shipped import export_for_inference
from codec.train.trainer import CodecTrainer, TrainConfig, fit, init_for_training

from ..data.codec_crops import CorpusAudio
from .run import RunFolder


@dataclass
class CodecTrainingOptions:
    data: str
    out: str
    config: str = "small"  # small, official, or a config JSON in the official layout
    steps: int = 2000  # what the learning-rate schedule is planned for
    stop_at: Optional[int] = None  # end this invocation there (saved; a resume continues)
    batch_size: int = 8
    segment_seconds: float = 2.0
    lr: float = 3e-4
    lr_schedule: str = "cosine"
    linear_mel_weight: float = 0.0
    adversarial_weight: float = 0.0
    feature_matching_weight: float = 0.0
    transcript_weight: float = 0.0  # transcript distillation of the first codebook (codec.train.transcript)
    init: Optional[str] = None  # start from this codec checkpoint, of the shape --config gives
    crops: str = "speech"  # speech: every crop holds speech; any: uniform crops
    max_codebooks: int = 8
    seed: int = 0
    resume: bool = False
    save_every: int = 250
    eval_every: int = 100


def _codec_config(name: str) -> MimiConfig:
    if name == "small":
        return MimiConfig.small()
    if name == "official":
        return MimiConfig.official()
    return MimiConfig.load(name)


def train_codec(options: CodecTrainingOptions, device: torch.device) -> int:
    """Train (or resume) the run in ``options.out``; returns the step reached. After Ctrl-C the run stops at a
    step boundary, saves it, and raises KeyboardInterrupt."""
    run = RunFolder(options.out, options.resume)
    train = CorpusAudio(options.data, "train")
    heldout = CorpusAudio(options.data, "heldout") if options.eval_every else None
    config = _codec_config(run.file("config.json") if options.resume else options.config)
    frame = config.frame_size
    samples = max(1, round(options.segment_seconds * config.sample_rate / frame)) * frame
    with torch.random.fork_rng(devices=[]):  # the modules' default initialisation, seeded without touching ours
        torch.manual_seed(options.seed)
        mimi = Mimi(config, num_codebooks=min(8, config.quantizer.n_q))
    if options.init and not options.resume:  # fine-tune: its weights in float32 (a float16 export loads too)
        mimi = Mimi.from_checkpoint(options.init, config, num_codebooks=mimi.num_codebooks).train()
    elif not options.resume:
        init_for_training(mimi, seed=options.seed)
    mimi = mimi.to(device)
    mimi.refresh_derived()
    cfg = TrainConfig(learning_rate=options.lr, max_codebooks=min(options.max_codebooks, config.quantizer.n_q),
                      lr_schedule=options.lr_schedule, total_steps=options.steps,
                      linear_mel_weight=options.linear_mel_weight, adversarial_weight=options.adversarial_weight,
                      feature_matching_weight=options.feature_matching_weight,
                      transcript_weight=options.transcript_weight,
                      # a codec that is already trained needs no unquantized warm-up (its codebooks would drift)
                      **({"warmup_unquantized_steps": 0} if options.init else {}))
    trainer = CodecTrainer(mimi, cfg, seed=options.seed)
    if options.resume:
        trainer.load(options.out)
        print(f"resumed {options.out} at step {trainer.step} (training options come from this call)",
              file=sys.stderr)
    words = options.transcript_weight > 0

    def on_device(batch):
        return (batch[0].to(device), batch[1]) if words else batch.to(device)

    eval_batch = (on_device(heldout.batch(8, samples, torch.Generator().manual_seed(1234), speech=True, words=words))
                  if heldout else None)
    print(f"training on {train.seconds / 3600:.2f} h ({len(train.clips)} channels, "
          f"{train.speech_seconds / 3600:.2f} h of speech frames), "
          f"{sum(p.numel() for p in mimi.parameters()) / 1e6:.2f} M parameters, {device}", file=sys.stderr)
    end = min(options.steps, options.stop_at) if options.stop_at else options.steps
    start = time.time()
    with run:
        run.open_log(trainer.step)
        progress = run.progress(end, trainer.step)

        def log(record: dict) -> None:
            run.log(record)
            progress(record["step"], heldout=record.get("heldout"), loss=record["loss"], mel=record["mel"])

        def save() -> None:
            with run.saving():  # a second Ctrl-C waits for the checkpoint and the inference file
                trainer.save(options.out)
                # the inference file (float16, what duplex ships): loads with --config codec-fp16.json
                export_for_inference(trainer.mimi, run.file("codec-fp16.safetensors"))

        fit(trainer, lambda: on_device(train.batch(options.batch_size, samples, trainer.generator,
                                                   speech=options.crops == "speech", words=words)),
            end, save, options.save_every, log=log, eval_batch=eval_batch, eval_every=options.eval_every,
            stop_requested=run.stop_requested)
    print(f"step {trainer.step} of {options.steps} after {time.time() - start:.0f} s -> "
          f"{os.path.join(options.out, 'codec.safetensors')} (config {run.file('config.json')}); inference file "
          f"{run.file('codec-fp16.safetensors')} (config {run.file('codec-fp16.json')})", file=sys.stderr)
    run.raise_if_interrupted(trainer.step)
    return trainer.step
