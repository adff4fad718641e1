"""The listening experiment of issue 28 (docs/training.md, "Stage 3: a larger model"): fine-tune an LM export for
a few hundred steps with an auxiliary head that transcribes the user's channel from the temporal transformer's
output, or (``--aux-weight 0``) the same fine-tune without it, as its control; then compare both with
``duplex bench teacher-forced``. The head is for training only: the export is the plain LM, in Kyutai's layout.

    python demos/default-model/listening.py --init RUN/lm3/best --data RUN/corpus3 --out RUN/listen-on --steps 600
    python demos/default-model/listening.py --init RUN/lm3/best --data RUN/corpus3 --out RUN/listen-off --steps 600 \\
        --aux-weight 0

The user's word w (ending at e s) is the head's target from frame floor((e + 0.16) * 12.5) on: by then its semantic
(delay 0) and acoustic (delay 1) codes have been input. The head's loss is taken on those frames only.
"""

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from duplex.data.lm_dataset import SegmentSource, codes_frame_rate, load_conversations
from duplex.data.text_stream import text_stream
from duplex.model.lm import MoshiLM
from duplex.model.tokenizer import END_OF_PAD_ID, PAD_ID, TextTokenizer
from duplex.training.lm_loss import LossWeights, lm_loss

HEARD_AFTER = 0.16  # s after a user word's end: two frames, its codes with the acoustic delay have been input


def user_words(wav: Path):
    """The user's words of a corpus file of ``duplex data synth``, each moved to when it has been heard."""
    path = Path(wav).with_suffix(".json")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        return [(w["word"], w["end"] + HEARD_AFTER, w["end"] + HEARD_AFTER + 0.04)
                for turn in meta["turns"] if turn["channel"] == "user" for w in turn["words"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"error: {path}: not a corpus file of 'duplex data synth' with the user's words ({e!r})")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init", required=True, help="an export folder: model.safetensors, config.json, tokenizer.model")
    p.add_argument("--data", required=True, help="a corpus of 'duplex data synth', encoded with the LM's codec")
    p.add_argument("--out", required=True, help="folder for the fine-tuned export")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--aux-weight", type=float, default=1.0, help="the user transcription loss's weight (0: control)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--segment-seconds", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    init, data = Path(args.init), Path(args.data)
    for path in (init / "model.safetensors", init / "config.json", init / "tokenizer.model", data / "train.jsonl"):
        if not path.is_file():
            raise SystemExit(f"error: {path} not found (--init: an export folder of 'duplex train lm'; --data: a "
                             "corpus of 'duplex data synth', encoded)")
    model = MoshiLM.from_checkpoint(init / "model.safetensors", json.loads((init / "config.json").read_text()),
                                    dtype=torch.float32)
    model.train()
    tok = TextTokenizer(str(init / "tokenizer.model"))
    rate = codes_frame_rate(data / "train.jsonl")
    convs = load_conversations(data / "train.jsonl", model.config.dep_q, rate, card=model.config.card)
    users = [user_words(c.path) for c in convs]
    frames = round(args.segment_seconds * rate)
    source = SegmentSource(convs, tok.encode, frames, rate, "random", seed=args.seed)
    head = torch.nn.Linear(model.config.dim, model.config.text_card)
    hidden = {}

    def heads_input(x, _plain=model.heads_input):  # the temporal output, kept for the head
        out = _plain(x)
        hidden["out"] = out[0]
        return out

    model.heads_input = heads_input  # on this instance only, removed before saving
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    try:
        train(args, model, head, hidden, opt, params, source, convs, users, tok, rate, frames)
    except KeyboardInterrupt:  # an experiment's run: nothing half-made is left behind
        raise SystemExit("interrupted: nothing saved") from None
    del model.heads_input
    model.save(args.out, dtype=torch.bfloat16)
    (Path(args.out) / "tokenizer.model").write_bytes((init / "tokenizer.model").read_bytes())
    print(f"saved {args.out}")


def train(args, model, head, hidden, opt, params, source, convs, users, tok, rate, frames):
    epoch, index, started = 0, 0, time.time()
    for step in range(1, args.steps + 1):
        rows, targets = [], []
        while len(rows) < args.batch_size:
            items = source.epoch(epoch)
            if index >= len(items):
                epoch, index = epoch + 1, 0
                continue
            i, start = items[index]
            index += 1
            rows.append(source.segment(i, start))
            length = max(0, min(frames, convs[i].frames - start))
            target = torch.full((frames,), -1, dtype=torch.long)
            target[:length] = torch.tensor(text_stream(users[i], length, tok.encode, rate, first_frame=start))
            targets.append(target)
        codes, target = torch.stack(rows), torch.stack(targets)
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, step / 50)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = lm_loss(model.forward_train(codes), codes, LossWeights())
            words = (target != PAD_ID) & (target != END_OF_PAD_ID) & (target >= 0)
            aux = (F.cross_entropy(head(hidden["out"])[words].float(), target[words])
                   if args.aux_weight > 0 and bool(words.any()) else torch.zeros(()))
            loss = losses["loss"] + args.aux_weight * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 25 == 0 or step == args.steps:
            print(f"step {step}: loss {losses['loss'].item():.4f} text {losses['text'].item():.4f} "
                  f"user transcription {aux.item():.4f} ({(time.time() - started) / step:.2f} s a step)", flush=True)


if __name__ == "__main__":
    main()
