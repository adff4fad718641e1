"""Does a model speak as the persona: its signature greeting (only into a quiet line), and its voice?

Feeds the user channel of held-out conversations of a persona corpus (made by make-data.sh: user voices the
training split never hears) through ``duplex offline``, one at a time, and looks for the greeting in the model's
text stream (its inner monologue). Conversations that open with the corpus's greeting give a quiet line at the
start (the user waits, then speaks): the adapter should greet there. Those that open with the user speaking at once
should get no greeting over the user. The voice, coarsely: the median pitch (F0) of the model's speech in each
reply. The persona's voice (en-us-nyc+Annie, pitch 60) is at about 260 Hz as espeak-ng makes it; the default model's
training voices spread from about 80 to 250 Hz. Through the shipped codec (1.1 kbps) pitch lands near 100 Hz for
low voices and 200 Hz for high ones, so what this tells is the register: the share of replies at 150 Hz or more.

    python demos/lora-persona/persona_check.py lora-persona-data out/persona-before
    python demos/lora-persona/persona_check.py lora-persona-data out/persona-after --lora adapter.safetensors

Any option after the two folders goes to ``duplex offline`` (--lora FILE, --greedy, --lm ...). A conversation
counts as greeted when at least 5 of the greeting's 7 words come, in order, among the model's words of its first
``--seconds`` (default 12).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import List, Tuple

import numpy as np
import soundfile as sf

from duplex.cli import main as duplex

GREETING = "hi, this is duplex, your friendly helper"
RATE = 24000
FRAME = 0.08
HIGH = 150.0  # Hz: a reply at or above is in the persona's (high) register


def words_of(pieces: List[str]) -> List[Tuple[str, float]]:
    """(word, start s) from ``--output-text``'s per-frame pieces: a piece starting with a space starts a word
    (a lone space too: SentencePiece's "▁" then "hi"), PAD and EPAD are silence."""
    words: List[List] = []
    for frame, piece in enumerate(pieces):
        if piece in ("PAD", "EPAD", ""):
            continue
        if piece.startswith(" ") or not words:
            words.append([piece.strip(), frame * FRAME])
        else:
            words[-1][0] += piece
    return [(w.lower(), t) for w, t in words if w]


def median_f0(audio: np.ndarray, rate: int) -> float:
    """The median F0 (Hz) of the voiced 40 ms frames (10 ms hop) of ``audio``: the autocorrelation's peak between
    70 and 400 Hz, where it holds at least half the frame's energy and the frame is not quiet; 0 without any."""
    size, hop, found = int(0.04 * rate), int(0.01 * rate), []
    low, high = int(rate / 400), int(rate / 70)
    for i in range(0, len(audio) - size, hop):
        x = audio[i:i + size].astype(np.float64)
        if np.sqrt(np.mean(x ** 2)) < 0.02:
            continue
        x = x - x.mean()
        c = np.correlate(x, x, "full")[size - 1:]
        lag = low + int(np.argmax(c[low:high]))
        if c[lag] > 0.5 * c[0]:
            found.append(rate / lag)
    return float(np.median(found)) if found else 0.0


def in_order(wanted: List[str], said: List[str]) -> int:
    """How many of ``wanted`` come in order in ``said`` (their longest common subsequence)."""
    table = [[0] * (len(said) + 1) for _ in range(len(wanted) + 1)]
    for i, a in enumerate(wanted):
        for j, b in enumerate(said):
            table[i + 1][j + 1] = table[i][j] + 1 if a == b else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("corpus", help="a persona corpus (make-data.sh): its heldout/ conversations are used")
    p.add_argument("out", help="folder for the inputs, replies, texts and report.json")
    p.add_argument("--count", type=int, default=12, help="held-out conversations, half of each opening if the "
                   "split has them (default 12)")
    p.add_argument("--seconds", type=float, default=12.0, help="length of each input from the conversation's start")
    p.add_argument("--seed", type=int, default=0, help="sampling seed of the first conversation (+1 each)")
    p.add_argument("--greeting", default=GREETING)
    args, offline = p.parse_known_args(argv)
    corpus, out = Path(args.corpus), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines() if line.strip()]
    metas = [json.loads((corpus / r["json"]).read_text()) for r in rows if r["split"] == "heldout"]
    by_opening = {k: [m for m in metas if m.get("opening") == k] for k in ("greeting", "user")}
    chosen = by_opening["greeting"][:args.count - args.count // 2] + by_opening["user"][:args.count // 2]
    wanted = re.findall(r"[a-z0-9']+", args.greeting.lower())
    need = max(1, round(0.7 * len(wanted)))
    results = []
    for n, meta in enumerate(chosen):
        stereo, rate = sf.read(corpus / "heldout" / f"{meta['id']}.wav", dtype="float32", always_2d=True)
        assert rate == RATE
        stem = out / meta["id"]
        sf.write(f"{stem}-input.wav", stereo[:int(args.seconds * RATE), 1], RATE, subtype="PCM_16")
        code = duplex(["offline", f"{stem}-input.wav", f"{stem}-reply.wav", "--output-text", f"{stem}-text.json",
                       "--seed", str(args.seed + n), *offline])
        if code:
            return code
        said = words_of(json.loads(Path(f"{stem}-text.json").read_text()))
        first_user = next(t["start"] for t in meta["turns"] if t["channel"] == "user")
        matched = in_order(wanted, [w for w, _ in said])
        reply, reply_rate = sf.read(f"{stem}-reply.wav", dtype="float32")
        reply = reply if reply.ndim == 1 else reply.mean(axis=1)
        results.append({"id": meta["id"], "opening": meta["opening"], "user_starts": round(first_user, 2),
                        "greeting_words": matched, "greeted": matched >= need,
                        "reply_f0": round(median_f0(reply, reply_rate), 1),
                        "persona_f0": round(median_f0(stereo[:, 0], RATE), 1),
                        "first_words": " ".join(w for w, t in said if t < first_user + 3.0)})
    summary = {}
    for opening in ("greeting", "user"):
        mine = [r for r in results if r["opening"] == opening]
        summary[opening] = {"conversations": len(mine), "greeted": sum(r["greeted"] for r in mine)}
    f0s = [r["reply_f0"] for r in results if r["reply_f0"] > 0]
    summary["reply_f0"] = {"median": float(np.median(f0s)) if f0s else 0.0, "min": min(f0s, default=0.0),
                           "max": max(f0s, default=0.0), "replies_with_speech": len(f0s),
                           "high_register": sum(f >= HIGH for f in f0s)}
    summary["persona_f0"] = float(np.median([r["persona_f0"] for r in results]))
    (out / "report.json").write_text(json.dumps({"greeting": args.greeting, "offline": offline, "seconds":
                                                 args.seconds, "summary": summary, "results": results}, indent=1))
    for r in results:
        print(f"{r['id']}  {'quiet line' if r['opening'] == 'greeting' else 'user first':10}  user at "
              f"{r['user_starts']:5.2f} s  greeting words {r['greeting_words']}/{len(wanted)}  "
              f"{'GREETS' if r['greeted'] else '      '}  F0 {r['reply_f0']:5.0f} Hz  {r['first_words'][:80]}")
    g, u = summary["greeting"], summary["user"]
    print(f"greets a quiet line: {g['greeted']} of {g['conversations']}; greets over a user who speaks first: "
          f"{u['greeted']} of {u['conversations']}")
    f0 = summary["reply_f0"]
    print(f"the model's pitch: {f0['high_register']} of {f0['replies_with_speech']} replies at {HIGH:.0f} Hz or "
          f"more (median {f0['median']:.0f} Hz, {f0['min']:.0f} to {f0['max']:.0f}); the persona's voice in the "
          f"corpus, before the codec: {summary['persona_f0']:.0f} Hz")
    return 0


if __name__ == "__main__":
    sys.exit(main())
