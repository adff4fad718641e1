"""``duplex train codec | tokenizer | lm``: train a Mimi-architecture codec, the text tokenizer, or a
Moshi-architecture LM (from scratch or fine-tuning a checkpoint).

The options' defaults are the library's (``CodecTrainingOptions``, ``train_tokenizer``, ``LMTrainingOptions``),
read when the command runs (``cli/options.py``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .common import non_negative, pick_device, positive, positive_float, probability, weight
from .options import OptionsParser, defaults_of, lazy, options_from_args

# Named, imported when their command runs: duplex starts without the trainers (inference never imports them).
CODEC_OPTIONS = "duplex.training.codec:CodecTrainingOptions"
LM_OPTIONS = "duplex.training.lm:LMTrainingOptions"
TOKENIZER = "duplex.training.tokenizer:train_tokenizer"


def _trainer(options_spec: str, train_spec: str):
    """The run function of a trainer command: ``train(options, device)`` (both named as ``options.lazy`` takes
    them), the options dataclass filled from the parsed arguments of the same names. --threads, if given, is the
    one process-wide setting a command may make: the user asked for it."""

    def run(args) -> int:
        if args.threads:
            torch.set_num_threads(args.threads)
        train = lazy(train_spec)()
        train(options_from_args(lazy(options_spec)(), args), pick_device(args.device))
        return 0

    return run


def run_train_tokenizer(args) -> int:
    from ..training.tokenizer import describe, train_tokenizer

    path = train_tokenizer(Path(args.data), Path(args.out), vocab_size=args.vocab_size)
    print(describe(path), file=sys.stderr)
    return 0


def add_run_options(p) -> None:
    """The options every trainer's run folder takes (``duplex.training.run``): length, seed, resume, cadence."""
    p.add_argument("--steps", type=positive, help="optimiser steps the run is planned for")
    p.add_argument("--stop-at", type=positive, metavar="STEP",
                   help="end this run at STEP (saved; --resume continues), the schedule still planned for --steps")
    p.add_argument("--seed", type=int, help="initialisation and data order")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--save-every", type=positive, help="checkpoint every N steps (and at the end)")
    p.add_argument("--eval-every", type=non_negative, help="held-out losses every N steps (0: never)")
    p.add_argument("--threads", type=non_negative, default=0, help="torch CPU threads (0: torch's choice)")


def register(commands) -> None:
    """``duplex train codec | tokenizer | lm``."""
    train = commands.add_parser("train", help="train models on the synthetic corpus")
    train_commands = train.add_subparsers(dest="train_command", required=True, metavar="WHAT",
                                          parser_class=OptionsParser)
    p = train_commands.add_parser("codec", help="train a Mimi-architecture codec", defaults=defaults_of(CODEC_OPTIONS))
    p.add_argument("--data", required=True, help="corpus folder made by 'duplex data synth'")
    p.add_argument("--out", required=True, help="run folder: codec.safetensors, config.json, trainer.pt, log.jsonl")
    p.add_argument("--config", help="small, official, or a config JSON (official layout)")
    p.add_argument("--batch-size", type=positive, help="crops per step")
    p.add_argument("--segment-seconds", type=positive_float, help="length of each crop, rounded to whole 80 ms frames")
    p.add_argument("--lr", type=positive_float, help="peak learning rate of AdamW")
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], help="cosine: decay to 10%% of --lr at --steps")
    p.add_argument("--linear-mel-weight", type=weight,
                   help="weight of an L1 loss on linear mel magnitudes beside the log-mel loss")
    p.add_argument("--adversarial-weight", type=weight,
                   help="weight of the multi-period discriminator's hinge loss (0: no discriminator)")
    p.add_argument("--feature-matching-weight", type=weight,
                   help="weight of the discriminator feature-matching loss (0: off)")
    p.add_argument("--transcript-weight", type=weight,
                   help="weight of the transcript distillation loss: a training-only CTC head must spell each crop's "
                        "words from the first codebook, so its codes carry them (0: off; needs a corpus of "
                        "'duplex data synth', which knows its words)")
    p.add_argument("--init", help="start from this codec checkpoint (fine-tuning; with --config when it is not "
                                  "the small shape) instead of random weights")
    p.add_argument("--crops", choices=["speech", "any"],
                   help="speech: every training crop contains speech; any: uniform crops")
    p.add_argument("--max-codebooks", type=positive, help="quantizer dropout trains 1..N codebooks")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    add_run_options(p)
    p.set_defaults(run=_trainer(CODEC_OPTIONS, "duplex.training.codec:train_codec"))
    p = train_commands.add_parser("tokenizer", help="a SentencePiece text tokenizer on the corpus transcripts, with "
                                  "Moshi's special ids", defaults=defaults_of(TOKENIZER))
    p.add_argument("--data", required=True, help="corpus folder made by 'duplex data synth'")
    p.add_argument("--out", required=True, metavar="PATH.model", help="the SentencePiece model to write")
    p.add_argument("--vocab-size", type=positive, help="pieces at most (a small corpus may give fewer)")
    p.set_defaults(run=run_train_tokenizer)
    p = train_commands.add_parser("lm", help="train a Moshi-architecture LM on a dataset in Kyutai's fine-tuning "
                                  "layout (from scratch, or fine-tuning --init)", defaults=defaults_of(LM_OPTIONS))
    p.add_argument("--data", required=True, action="append", help="dataset folder: train.jsonl (+ heldout.jsonl), "
                   "stereo WAVs with their alignments JSON and codes ('duplex data encode'); give it again to train "
                   "on several datasets as one (every file as likely; held-out losses over all their held-out files)")
    p.add_argument("--out", required=True, help="run folder: model.safetensors (with --lora: lora.safetensors), "
                   "config.json, tokenizer.model, best/, the checkpoint (lm.safetensors or lora-train.safetensors, "
                   "trainer.pt), log.jsonl, loss.png")
    p.add_argument("--tokenizer", help="SentencePiece model (default: the first DATA's tokenizer.model)")
    p.add_argument("--config", help="preset (default, small, moshi_7b) or a config JSON in Kyutai's keyword layout "
                   "(default: 'default', or the config beside --init)")
    p.add_argument("--init", metavar="MODEL", help="start from this LM (fine-tune): a checkpoint file (a Moshi 7B "
                   "file, a model.safetensors this command made), 'default' (the shipped model), or a Hugging Face "
                   "repository in the local cache (e.g. kyutai/moshiko-pytorch-bf16; its tokenizer comes with it)")
    p.add_argument("--lora", action="store_true", help="train a LoRA adapter on the frozen --init (moshi-finetune's "
                   "way): writes lora.safetensors + config.json, which Kyutai's loader and duplex's --lora read")
    p.add_argument("--lora-rank", type=positive, help="the adapter's rank (moshi-finetune's LoraArgs)")
    p.add_argument("--lora-scaling", type=positive_float, help="the adapter's scaling: y = xW^T + scaling (xA^T)B^T")
    p.add_argument("--quantize", choices=["int8", "fp8"], help="with --lora: the frozen base's linear weights in "
                   "int8 or fp8 (a 7B base in 8 GB instead of 15.4 GB)")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, help="recompute each layer's "
                   "activations in the backward pass (less memory, about a third more time; default: on with --lora)")
    p.add_argument("--batch-size", type=positive, help="segments per step")
    p.add_argument("--segment-seconds", type=positive_float, help="segment length (whole frames)")
    p.add_argument("--segments", choices=["random", "consecutive"],
                   help="random: crops of the segment length inside each file; consecutive: Kyutai's cut from each "
                   "file's start, the last one padded")
    p.add_argument("--lr", type=positive_float, help="peak learning rate (Kyutai fine-tunes 7B at 2e-6)")
    p.add_argument("--weight-decay", type=weight, help="AdamW weight decay")
    p.add_argument("--warmup", type=weight, help="share of --steps spent warming up")
    p.add_argument("--grad-clip", type=positive_float, help="gradient norm clip")
    p.add_argument("--semantic-weight", type=weight, help="loss weight of the semantic codebook")
    p.add_argument("--text-padding-weight", type=weight, help="loss weight of text PAD/EPAD targets")
    p.add_argument("--user-acoustic-dropout", type=probability, metavar="SHARE",
                   help="leave the user's acoustic codebooks (all but its first) out of this share of the training "
                   "segments, so the model also follows the user from the semantic codebook alone (0: off, as Kyutai "
                   "trains)")
    p.add_argument("--export-dtype", choices=["bfloat16", "float16", "float32"],
                   help="dtype of the exported model.safetensors")
    p.add_argument("--autocast", choices=["auto", "bfloat16", "off"], help="auto: bfloat16 autocast on CUDA (as "
                   "Kyutai trains), float32 on the CPU; bfloat16: autocast on the CPU too (faster where the CPU has "
                   "bfloat16 instructions, e.g. AVX512-BF16); off: float32 (a bfloat16 LoRA base computes in bfloat16 "
                   "in any mode); --resume says when it differs from the run's")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (bf16 autocast on CUDA)")
    add_run_options(p)
    p.set_defaults(run=_trainer(LM_OPTIONS, "duplex.training.lm:train_lm"))
