"""``duplex train tokenizer``: a small SentencePiece model on the corpus transcripts, with the ids Moshi's text
stream needs where Moshi's tokenizer has them: 0 (its unknown piece, used as EPAD, the end of padding before a
word), 1 and 2 (BOS, EOS, never used by the stream) and 3 (PAD). Words are tokenized one at a time in the stream,
so the model learns pieces that start words ("▁").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, List

import sentencepiece as spm

from ..errors import UsageError
from ..model.tokenizer import END_OF_PAD_ID, PAD_ID, TextTokenizer


def transcripts(corpus: Path) -> List[str]:
    """Every turn's text of the corpus (both channels: the assistant's words are the stream's, the user's widen
    the vocabulary the same grammar uses)."""
    manifest = Path(corpus) / "manifest.jsonl"
    if not manifest.is_file():
        raise UsageError(f"{corpus} has no manifest.jsonl; make a corpus with 'duplex data synth'")
    texts = []
    for line in manifest.read_text(encoding="utf-8").splitlines():
        if line.strip():
            meta = json.loads((Path(corpus) / json.loads(line)["json"]).read_text(encoding="utf-8"))
            texts += [t["text"] for t in meta["turns"] if t["text"].strip()]
    if not texts:
        raise UsageError(f"{corpus}: the corpus has no transcripts")
    return texts


def train_tokenizer(corpus: Path, model_path: Path, vocab_size: int = 256) -> Path:
    """Train and write ``model_path`` (``.model``; the ``.vocab`` beside it); returns the model's path."""
    model_path = Path(model_path)
    if model_path.suffix != ".model":
        raise UsageError(f"{model_path}: a SentencePiece model file ends in .model")
    model_path.parent.mkdir(parents=True, exist_ok=True)
    texts = transcripts(corpus)

    def sentences() -> Iterator[str]:
        yield from texts

    try:
        spm.SentencePieceTrainer.train(sentence_iterator=sentences(), model_prefix=str(model_path.with_suffix("")),
                                       vocab_size=vocab_size, model_type="unigram", unk_id=END_OF_PAD_ID, bos_id=1,
                                       eos_id=2, pad_id=PAD_ID, character_coverage=1.0, hard_vocab_limit=False,
                                       minloglevel=2)
    except RuntimeError as e:  # e.g. a vocabulary larger than the corpus can fill
        raise UsageError(f"SentencePiece could not train on {corpus}: {e}") from None
    return model_path


def describe(model_path: Path) -> str:
    """One line: how many pieces the tokenizer at ``model_path`` has, its special ids, and where it is."""
    tokenizer = TextTokenizer(model_path)
    return f"{tokenizer.vocab_size} pieces (0 EPAD/unknown, 1 BOS, 2 EOS, 3 PAD) -> {model_path}"
