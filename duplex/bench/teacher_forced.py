"""``duplex bench teacher-forced``: which of a corpus's reply words an LM predicts when it is fed the true past.

The turn-taking benchmark (``bench turns``) lets a model run free, so a wrong answer there may be a model that never
learnt the answer or one that learnt it but lost its way earlier in the reply (timing, sampling, its own words).
Teacher forcing separates the two: one forward pass over each conversation of a corpus made by ``duplex data
synth`` (codes from ``duplex data encode``), as training sees it, and at every frame of the text stream the
model's most likely token is compared with the corpus's. Counted:

* ``words``: every word token of the text stream (not PAD or EPAD);
* ``keys``, by topic: replies whose key (what a right answer says, ``grammar.Exchange.key``; for corpora made
  before keys were kept, an arithmetic reply's last number, "is" and result) has every token predicted;
* ``heard``: arithmetic replies whose first number, the sum restated, is predicted: that needs only what the user
  said, the result needs the sum as well.

A model that gets a key right here can answer; one that does not, cannot, whatever its timing.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from ..data.lm_dataset import Conversation, DatasetError, SegmentSource, codes_frame_rate, load_conversations
from ..data.synth.grammar import number_words
from ..model.tokenizer import END_OF_PAD_ID, PAD_ID

# the words of numbers, less the "and" of "one hundred and five", which is no number where it stands alone
NUMBER_WORDS = frozenset(w for n in range(1000) for w in number_words(n).split()) - {"and"}
OPERATORS = ("plus", "minus", "times")
MAX_FILES = 80


def reply_key(turn: dict) -> Optional[List[int]]:
    """Indices (into ``turn["words"]``) of the reply's key words: the turn's own ``key`` found in a row in its
    words, else (older corpora) an arithmetic reply's last number before "is"/"equals", that word and the words
    after it. None when the reply has no key."""
    words = [w["word"] for w in turn.get("words", [])]
    key = turn.get("key")
    if key:
        key = ["equals" if k == "is" and "equals" in words and "is" not in words else k for k in key]
        n = len(key)
        return next((list(range(i, i + n)) for i in range(len(words) - n + 1) if words[i:i + n] == key), None)
    if "topic" in turn or not any(w in OPERATORS for w in words):
        return None
    try:
        verb = next(i for i, w in enumerate(words) if w in ("is", "equals"))
    except StopIteration:
        return None
    first = verb
    while first > 0 and words[first - 1] in NUMBER_WORDS:
        first -= 1
    return list(range(first, len(words))) if first < verb < len(words) - 1 else None


def _topic(turn: dict, scenarios: Sequence[dict]) -> str:
    if turn.get("topic"):
        return turn["topic"]
    inside = [s for s in scenarios if s["start"] <= turn["start"] < s["end"]]
    return inside[-1].get("topic", "other") if inside else "other"


def _read_meta(conv: Conversation) -> dict:
    path = Path(conv.path).with_suffix(".json")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(meta.get("turns"), list):
            raise ValueError("no turns")
        return meta
    except (OSError, ValueError, AttributeError) as e:
        raise DatasetError(f"{path}: not a corpus file of 'duplex data synth' ({e})") from None


def teacher_forced(model, tokenize: Callable[[str], Sequence[int]], manifest: Path, max_files: int = MAX_FILES,
                   progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """The report (module docstring) of ``model`` on the first ``max_files`` conversations of ``manifest``."""
    cfg = model.config
    frame_rate = codes_frame_rate(Path(manifest))  # the codec's, as training reads it
    convs = load_conversations(Path(manifest), cfg.dep_q, frame_rate, card=cfg.card)[:max_files]
    words = {"right": 0, "total": 0}
    heard = {"right": 0, "total": 0}
    keys: Dict[str, Dict[str, int]] = defaultdict(lambda: {"right": 0, "total": 0, "not_in_stream": 0})
    model_was_training = model.training
    model.eval()
    try:
        for n, conv in enumerate(convs, 1):
            meta = _read_meta(conv)
            codes = SegmentSource([conv], tokenize, conv.frames, frame_rate, "consecutive").segment(0, 0)[None]
            with torch.no_grad():
                out = model.forward_train(codes)
            text = codes[0, 0]
            right = (out.text_logits[0, 0].argmax(-1).cpu() == text)
            is_word = (text != PAD_ID) & (text != END_OF_PAD_ID) & (text >= 0)
            words["right"] += int(right[is_word].sum())
            words["total"] += int(is_word.sum())
            for turn in meta["turns"]:
                if turn.get("channel") != "assistant":
                    continue
                index = reply_key(turn)
                if index is None:
                    continue
                # a key inferred from the reply's words is an arithmetic one, whatever scenario the reply lies in
                tally = keys[_topic(turn, meta.get("scenarios", [])) if turn.get("key") else "arithmetic"]
                frames = [_frames(turn["words"][i], tokenize, frame_rate, text) for i in index]
                if any(f is None for f in frames):
                    tally["not_in_stream"] += 1
                    continue
                tally["total"] += 1
                tally["right"] += all(bool(right[f].all()) for f in frames)
                said = [w["word"] for w in turn["words"]]
                if any(w in OPERATORS for w in said):
                    first = next((i for i, w in enumerate(said) if w in NUMBER_WORDS), None)
                    frame = None if first is None else _frames(turn["words"][first], tokenize, frame_rate, text)
                    if frame is not None:
                        heard["total"] += 1
                        heard["right"] += bool(right[frame[:1]].all())
            if progress:
                progress(n, len(convs))
    finally:
        model.train(model_was_training)
    return {"files": len(convs), "words": _rate(words), "heard": _rate(heard),
            "keys": {topic: _rate(t) for topic, t in sorted(keys.items())}}


def _frames(word: dict, tokenize, frame_rate: float, text: torch.Tensor) -> Optional[List[int]]:
    """The frames holding ``word``'s tokens in the text stream; None when they are not all there (cut by the next
    word or the file's end, as the text stream drops them)."""
    tokens = list(tokenize(word["word"]))
    first = math.floor(word["start"] * frame_rate)
    frames = list(range(first, first + len(tokens)))
    if not tokens or frames[-1] >= len(text) or [int(text[f]) for f in frames] != tokens:
        return None
    return frames


def _rate(tally: Dict[str, int]) -> Dict[str, float]:
    return {**tally, "rate": tally["right"] / tally["total"] if tally["total"] else None}


def format_summary(report: dict) -> str:
    def pct(t):
        return "n/a" if t["rate"] is None else f"{t['rate']:.0%}"

    lines = [f"{report['files']} conversations, teacher-forced: word tokens {pct(report['words'])} "
             f"({report['words']['right']}/{report['words']['total']}); arithmetic replies restating the sum "
             f"(what the user said) {pct(report['heard'])} ({report['heard']['right']}/{report['heard']['total']})"]
    for topic, t in report["keys"].items():
        lines.append(f"  {topic}: keys right {pct(t)} ({t['right']}/{t['total']} replies"
                     + (f"; {t['not_in_stream']} with a key cut from the text stream" if t["not_in_stream"] else "")
                     + ")")
    return "\n".join(lines)
