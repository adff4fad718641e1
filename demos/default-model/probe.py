"""Are the user's words in the codes? (issue 28, docs/training.md "Stage 3": why no model answers.) A probe that
anyone can read: a small bidirectional GRU trained with CTC to transcribe each user turn of a corpus of ``duplex
data synth`` into words, from one of three inputs of the same frames (12.5 Hz):

* ``codes``:  the user channel's codes as ``duplex data encode`` cached them (all codebooks, embedded and summed),
  i.e. what the LM hears;
* ``codes1``: the first codebook alone (Mimi's semantic level; ours was trained without distillation);
* ``mel``:    the user channel's log-mel spectrum (80 bands at 100 Hz, 8 stacked per frame), i.e. the audio itself.

``--acoustic-dropout P`` leaves out a training turn's acoustic codebooks with probability P (``codes`` only): does
a reader forced to rely on the first codebook now and then stop learning the training audio by heart?

It trains on the corpus's training split and reports the word error rate on its held-out split (a user voice that
the training never heard), on ``--test``'s conversations (another seed's corpus: new conversations in the training
voices) and on a sample of the training split itself, plus the share of number words recovered. The same probe,
budget and seed on each input: if ``mel`` reads the words and ``codes`` does not, the codec loses them; if both
read them, the LM is what has to learn to listen.

    python demos/default-model/probe.py --data CORPUS --test OTHER --features codes mel codes1 --json OUT.json
"""

import argparse
import json
import math
import re
import time
from collections import Counter
from pathlib import Path

import soundfile as sf
import torch
import torch.nn.functional as F
from torch import nn

from duplex.bench.teacher_forced import NUMBER_WORDS
from duplex.data.encode import codes_path, load_stereo_codes
from duplex.data.lm_dataset import read_manifest

FRAME_RATE = 12.5
SAMPLE_RATE = 24000
MEL_PER_FRAME = 8  # 100 Hz mel frames per 12.5 Hz codec frame
FEATURES = ("codes", "codes1", "mel")


def clean(word: str) -> str:
    return re.sub(r"[^a-z0-9']", "", word.lower())


def user_turns(manifest: Path, feature: str, mel=None):
    """(features [C, T] or codes [K, T], words) of each user turn of a manifest's conversations."""
    out = []
    for wav, _ in read_manifest(manifest):
        meta = json.loads(Path(wav).with_suffix(".json").read_text(encoding="utf-8"))
        if feature == "mel":
            audio, rate = sf.read(str(wav), dtype="float32", always_2d=True)
            if rate != SAMPLE_RATE:
                raise SystemExit(f"error: {wav}: {rate} Hz, expected {SAMPLE_RATE}")
            spec = mel(torch.from_numpy(audio[:, 1].copy()))  # [80, n], the user's channel
            frames = spec.shape[-1] // MEL_PER_FRAME
            x = (spec[:, :frames * MEL_PER_FRAME].clamp_min(1e-5).log()
                 .reshape(spec.shape[0], frames, MEL_PER_FRAME).permute(0, 2, 1).reshape(-1, frames))
        else:
            codes, _ = load_stereo_codes(codes_path(Path(wav)))
            x = codes[1, :1] if feature == "codes1" else codes[1]
        for turn in meta["turns"]:
            if turn["channel"] != "user":
                continue
            words = [clean(w["word"]) for w in turn["words"]]
            words = [w for w in words if w]
            a = max(0, math.floor(turn["start"] * FRAME_RATE) - 2)
            b = min(x.shape[-1], math.ceil(turn["end"] * FRAME_RATE) + 3)
            if words and b - a >= len(words):
                out.append((x[:, a:b], words))
    return out


class Probe(nn.Module):
    def __init__(self, feature: str, channels: int, vocab: int, dim: int = 256, card: int = 2048,
                 acoustic_dropout: float = 0.0):
        super().__init__()
        self.feature, self.acoustic_dropout = feature, acoustic_dropout
        if feature == "mel":
            self.inp = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, dim))
        else:
            self.inp = nn.ModuleList(nn.Embedding(card, dim) for _ in range(channels))
        self.rnn = nn.GRU(dim, dim, num_layers=2, bidirectional=True, batch_first=True, dropout=0.1)
        self.out = nn.Linear(2 * dim, vocab + 1)  # the last class is CTC's blank

    def forward(self, x, lengths):  # x: [B, C, T] -> log-probabilities [T, B, V + 1]
        if self.feature == "mel":
            h = self.inp(x.transpose(1, 2))
        else:
            h = sum(emb(x[:, k].clamp_min(0)) for k, emb in enumerate(self.inp))
            if self.training and self.acoustic_dropout > 0 and len(self.inp) > 1:
                # the acoustic levels of a whole turn left out at random (only the first codebook's remain)
                keep = torch.rand(x.shape[0], 1, 1) >= self.acoustic_dropout
                first = self.inp[0](x[:, 0].clamp_min(0))
                h = torch.where(keep, h, first)
        packed = nn.utils.rnn.pack_padded_sequence(h, lengths.cpu(), batch_first=True, enforce_sorted=False)
        h, _ = self.rnn(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=x.shape[-1])
        return self.out(h).log_softmax(-1).transpose(0, 1)


def batch(items, vocab):
    lengths = torch.tensor([x.shape[-1] for x, _ in items])
    x = torch.zeros(len(items), items[0][0].shape[0], int(lengths.max()), dtype=items[0][0].dtype)
    for i, (f, _) in enumerate(items):
        x[i, :, :f.shape[-1]] = f
    targets = [torch.tensor([vocab.get(w, len(vocab) - 1) for w in words]) for _, words in items]
    return x, lengths, targets


def edit_distance(a, b):
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


@torch.no_grad()
def evaluate(model, items, vocab, numbers):
    words = list(vocab)
    model.eval()
    errors = total = exact = num_found = num_total = 0
    for i in range(0, len(items), 64):
        chunk = items[i:i + 64]
        x, lengths, _ = batch(chunk, vocab)
        best = model(x, lengths).argmax(-1).T  # [B, T]
        for b, (_, ref) in enumerate(chunk):
            ids = best[b, :lengths[b]].tolist()
            hyp = [words[t] for j, t in enumerate(ids) if t != len(words) and (j == 0 or t != ids[j - 1])]
            errors += edit_distance(ref, hyp)
            total += len(ref)
            exact += hyp == ref
            want = Counter(w for w in ref if w in numbers)
            num_total += sum(want.values())
            num_found += sum((want & Counter(hyp)).values())
    model.train()
    return {"turns": len(items), "wer": errors / max(total, 1), "turns_exact": exact / max(len(items), 1),
            "number_words_recovered": num_found / max(num_total, 1), "number_words": num_total}


def run(feature, train, heldout, test, args, numbers):
    torch.manual_seed(args.seed)
    counts = Counter(w for _, words in train for w in words)
    vocab = {w: i for i, w in enumerate(sorted(counts))}
    vocab["<unk>"] = len(vocab)
    model = Probe(feature, train[0][0].shape[0], len(vocab), dim=args.dim, acoustic_dropout=args.acoustic_dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(args.seed)
    start, log = time.time(), []
    for step in range(1, args.steps + 1):
        lr = args.lr * min(1.0, step / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(len(train), (args.batch_size,), generator=gen).tolist()
        x, lengths, targets = batch([train[i] for i in idx], vocab)
        logp = model(x, lengths)
        loss = F.ctc_loss(logp, torch.cat(targets), lengths, torch.tensor([len(t) for t in targets]),
                          blank=len(vocab), zero_infinity=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 250 == 0 or step == args.steps:
            held = evaluate(model, heldout, vocab, numbers)
            log.append({"step": step, "loss": round(loss.item(), 4), "heldout_wer": round(held["wer"], 4)})
            print(f"  {feature} step {step}: loss {loss.item():.3f}, held-out WER {held['wer']:.3f} "
                  f"({time.time() - start:.0f} s)", flush=True)
    sample = [train[i] for i in torch.randperm(len(train), generator=gen)[:len(heldout)].tolist()]
    return {"feature": feature, "vocabulary": len(vocab), "parameters": sum(p.numel() for p in model.parameters()),
            "seconds": round(time.time() - start, 1), "heldout": evaluate(model, heldout, vocab, numbers),
            "train_sample": evaluate(model, sample, vocab, numbers),
            **({"test": evaluate(model, test, vocab, numbers)} if test else {}), "log": log}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a corpus of 'duplex data synth', encoded ('duplex data encode')")
    p.add_argument("--test", help="another corpus (encoded with the same codec), read in full as a test set: new "
                   "conversations in the training voices")
    p.add_argument("--features", nargs="+", choices=FEATURES, default=list(FEATURES))
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--acoustic-dropout", type=float, default=0.0,
                   help="codes: leave a training turn's acoustic codebooks out with this probability")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dim", type=int, default=256, help="the GRU's width (each direction)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", help="write the report here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = Path(args.data)
    mel = None
    if "mel" in args.features:
        import torchaudio  # noqa: PLC0415  (seconds to import; only the mel input needs it)
        mel = torchaudio.transforms.MelSpectrogram(SAMPLE_RATE, n_fft=1024, hop_length=SAMPLE_RATE // 100,
                                                   n_mels=80)
    report = {"data": str(data), "args": vars(args), "runs": []}
    for feature in args.features:
        train = user_turns(data / "train.jsonl", feature, mel)
        heldout = user_turns(data / "heldout.jsonl", feature, mel)
        if not train or not heldout:
            raise SystemExit(f"error: {data}: no user turns in its train or heldout split")
        print(f"{feature}: {len(train)} training turns, {len(heldout)} held-out turns", flush=True)
        test = user_turns(Path(args.test) / "train.jsonl", feature, mel) if args.test else []
        result = run(feature, train, heldout, test, args, NUMBER_WORDS)
        report["runs"].append(result)
        for name in ("heldout", "test", "train_sample"):
            if name in result:
                r = result[name]
                print(f"{feature}, {name}: WER {r['wer']:.3f}, exact turns {r['turns_exact']:.2f}, number words "
                      f"{r['number_words_recovered']:.2f} of {r['number_words']}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
