"""The LM's training loss, weighted as Kyutai's fine-tuning code weights it (../shared/spec/training.md §3).

Cross-entropy in float32 on the text row and on the model's codebooks (the user's are input only), over the
positions ``forward_train`` marks valid (not -1, not a delayed stream's last frames). The semantic codebook counts
``semantic_weight`` times an acoustic one; text targets that are PAD or EPAD count ``text_padding_weight``. Text and
audio are each normalised by their own sum of weights, then added 1:1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch
import torch.nn.functional as F

from ..model.lm import LMOutput
from ..model.tokenizer import END_OF_PAD_ID, PAD_ID


@dataclass
class LossWeights:
    semantic: float = 100.0
    text_padding: float = 0.5


def lm_loss(out: LMOutput, codes: torch.Tensor, weights: LossWeights = LossWeights()) -> Dict[str, torch.Tensor]:
    """``{"loss", "text", "audio", "semantic", "acoustic"}`` for codes [B, K, T] (what ``forward_train`` saw)."""
    dep_q = out.logits.shape[1]
    codes = codes.to(out.logits.device)

    text_target = codes[:, :1][out.text_mask]
    text_ce = F.cross_entropy(out.text_logits[out.text_mask].float(), text_target, reduction="none")
    text_w = torch.where((text_target == PAD_ID) | (text_target == END_OF_PAD_ID),
                         torch.full_like(text_ce, weights.text_padding), torch.ones_like(text_ce))

    audio_target = codes[:, 1:1 + dep_q]
    audio_ce = F.cross_entropy(out.logits[out.mask].float(), audio_target[out.mask], reduction="none")
    per_q = torch.ones(dep_q, device=audio_ce.device)
    per_q[0] = weights.semantic
    audio_w = per_q.view(1, dep_q, 1).expand_as(out.mask)[out.mask]
    semantic = out.mask.clone()
    semantic[:, 1:] = False
    is_semantic = semantic[out.mask]

    text = (text_ce * text_w).sum() / text_w.sum().clamp(min=1e-9)
    audio = (audio_ce * audio_w).sum() / audio_w.sum().clamp(min=1e-9)
    with torch.no_grad():  # unweighted figures for the log
        sem = audio_ce[is_semantic].mean() if bool(is_semantic.any()) else audio_ce.new_zeros(())
        aco = audio_ce[~is_semantic].mean() if bool((~is_semantic).any()) else audio_ce.new_zeros(())
    return {"loss": text + audio, "text": text, "audio": audio, "semantic": sem, "acoustic": aco}
