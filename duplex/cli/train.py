"""``duplex train codec | tokenizer``: train a Mimi-architecture codec, or the text tokenizer, on the synthetic
corpus."""

from __future__ import annotations

import torch

from .common import non_negative, pick_device, positive, positive_float, weight


def run_train_codec(args) -> int:
    from ..training.codec import CodecTrainingOptions, train_codec

    if args.threads:
        torch.set_num_threads(args.threads)
    fields = CodecTrainingOptions.__dataclass_fields__
    train_codec(CodecTrainingOptions(**{name: getattr(args, name) for name in fields}), pick_device(args.device))
    return 0


def run_train_tokenizer(args) -> int:
    import sys
    from pathlib import Path

    from ..model.tokenizer import TextTokenizer
    from ..training.tokenizer import train_tokenizer

    path = train_tokenizer(Path(args.data), Path(args.out), vocab_size=args.vocab_size)
    tokenizer = TextTokenizer(path)
    print(f"{tokenizer.vocab_size} pieces (0 EPAD/unknown, 1 BOS, 2 EOS, 3 PAD) -> {path}", file=sys.stderr)
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
    p = train_commands.add_parser("tokenizer", help="a SentencePiece text tokenizer on the corpus transcripts, with "
                                  "Moshi's special ids")
    p.add_argument("--data", required=True, help="corpus folder made by 'duplex data synth'")
    p.add_argument("--out", required=True, metavar="PATH.model", help="the SentencePiece model to write")
    p.add_argument("--vocab-size", type=positive, default=256,
                   help="pieces at most (a small corpus may give fewer)")
    p.set_defaults(run=run_train_tokenizer)
