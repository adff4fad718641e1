"""Transcript distillation: make the first codebook carry the words (issue 28).

Mimi's first codebook is "semantic" because its training pulls that level's output towards WavLM's features (a
cosine loss, Kyutai's paper section 3.3). No speech model can be fetched at run time here, but a corpus made by
``duplex data synth`` knows every word it says and when; so the first level's output is asked instead to be
transcribable: a small bidirectional GRU reads it and is trained with CTC to spell each crop's words, and the
gradient reaches the encoder through the straight-through quantizer. The head (like Mimi's distillation
projection) exists for training only: it is saved in ``trainer.pt``, never in the codec's file, and the codec stays
causal (the head sees the whole crop; the codes it shapes are computed causally).

Characters, not word pieces: any transcribed corpus works without a tokenizer. A 12.5 Hz frame is too short for
the 1-2 characters speech says in it, so each frame emits ``UPSAMPLE`` CTC slots (50 Hz).
"""

from __future__ import annotations

import re
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

CHARACTERS = " abcdefghijklmnopqrstuvwxyz'"  # CTC's blank is 0, character i is i + 1
UPSAMPLE = 4


def encode_text(text: str) -> torch.Tensor:
    """int64 [L] CTC targets for ``text`` (lowercased; other characters dropped, spaces collapsed)."""
    text = re.sub(r" +", " ", re.sub(r"[^a-z' ]", "", text.lower().replace("-", " "))).strip()
    return torch.tensor([CHARACTERS.index(c) + 1 for c in text], dtype=torch.long)


class TranscriptHead(nn.Module):
    """[B, D, T] first-level output -> log-probabilities [T * UPSAMPLE, B, len(CHARACTERS) + 1]."""

    def __init__(self, dim: int, hidden: int = 256):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.rnn = nn.GRU(dim, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, UPSAMPLE * (len(CHARACTERS) + 1))

    def forward(self, first: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.norm(first.transpose(1, 2)))
        b, t, _ = h.shape
        logits = self.out(h).view(b, t * UPSAMPLE, len(CHARACTERS) + 1)
        return logits.float().log_softmax(-1).transpose(0, 1)


def transcript_loss(head: TranscriptHead, first: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
    """Mean CTC loss per character of ``texts`` (one per crop; "" for a crop without words) given ``first``."""
    logp = head(first)
    targets: List[torch.Tensor] = [encode_text(t) for t in texts]
    lengths = torch.tensor([len(t) for t in targets])
    slots = torch.full((len(targets),), logp.shape[0], dtype=torch.long)
    flat = torch.cat(targets) if int(lengths.sum()) else torch.zeros(0, dtype=torch.long)
    # zero_infinity: a crop whose words outnumber its slots (never at 50 Hz) adds nothing instead of inf
    return F.ctc_loss(logp, flat.to(logp.device), slots, lengths, blank=0, reduction="sum",
                      zero_infinity=True) / max(int(lengths.sum()), 1)


@torch.no_grad()
def greedy_transcripts(head: TranscriptHead, first: torch.Tensor) -> List[str]:
    """The head's best-path reading of each crop (for the held-out check)."""
    best = head(first).argmax(-1).T.tolist()  # [B, slots]
    out = []
    for ids in best:
        chars = [CHARACTERS[t - 1] for j, t in enumerate(ids) if t and (j == 0 or t != ids[j - 1])]
        out.append(re.sub(r" +", " ", "".join(chars)).strip())
    return out


def character_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Edit distance in characters over the references' length (as ``encode_text`` normalises them)."""
    errors = total = 0
    for ref, hyp in zip(references, hypotheses):
        a, b = encode_text(ref).tolist(), encode_text(hyp).tolist()
        row = list(range(len(b) + 1))
        for i, x in enumerate(a, 1):
            prev, row[0] = row[0], i
            for j, y in enumerate(b, 1):
                prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
        errors, total = errors + row[-1], total + len(a)
    return errors / max(total, 1)
