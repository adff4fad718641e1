"""Quantization fidelity (docs/quantization.md, "Fidelity"): how far an LM with int8 or fp8 weights, or an fp8 KV
ring, is from the same model unquantized, in the same compute dtype.

Two measures, both on speech:

* **Teacher-forced**: the reference model first holds a conversation: the user's stream is speech (the shipped
  demo set's recordings by default, encoded with the model's codec), the model's own stream (text and audio) is
  what the reference model samples in reply, frame by frame, with a fixed seed. Then both models read that whole
  conversation at once (``MoshiLM.forward_train(codes, kv_dtype=)``, which rounds keys and values as the fp8 ring
  does) and their next-token distributions are compared at every frame: the mean KL divergence KL(reference ||
  quantized) of the text logits and of each audio codebook's logits, and the top-1 agreement (the same argmax).
* **Greedy**: both models generate greedily (``lm.generator(greedy=True)``, the streaming path) from the same user
  codes for a number of frames: the share of frames whose tokens (text and every audio codebook) are identical, the
  share of tokens, and the first frame where they differ (after it, each model reads its own past, so the
  sequences usually part for good).

A variant is named by its parts joined with ``+``: ``int8`` or ``fp8`` (the linear weights), ``fp8kv`` (the fp8 KV
ring), ``bf16`` (the unquantized model in bfloat16: the scale of a cost that is already accepted, when the
reference runs in float32). On CPU, int8 products run with bfloat16 activations (``codec.modules.quantized``), so
the int8 figures there include that rounding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F

from codec.io.audio import load_audio
from codec.modules.quantized import FP8
from codec.utils.stats import describe_device

from ..model.config import LMConfig
from ..model.lm import MoshiLM
from ..runtime.quantization import describe
from . import variants
from .turntaking.fdb import SHIPPED_SET

FRAMES = 300  # teacher-forced frames (24 s of speech)
GREEDY_FRAMES = 40
SEED = 0
DEFAULT_VARIANTS = ("int8", "fp8", "fp8kv", "int8+fp8kv")
PARTS = ("int8", "fp8", "fp8kv", "bf16")
DEMO_SET = SHIPPED_SET


@dataclass(frozen=True)
class Variant:
    """What differs from the reference: ``weights`` ("none", "int8", "fp8"), the KV ring (``kv``: None is the
    model's dtype, or float8_e4m3fn) and the compute dtype (None: the reference's)."""

    name: str
    weights: str = "none"
    kv: Optional[torch.dtype] = None
    dtype: Optional[torch.dtype] = None


def parse_variant(name: str) -> Variant:
    """The names of ``--variants`` of ``bench latency`` / ``bench lm`` (``bench.variants``: ``int8``, ``fp8``,
    ``fp8kv``, ``int8+fp8kv``...), plus ``bf16`` (the unquantized model in bfloat16); ValueError otherwise."""
    parts = name.split("+")
    if not name or len(set(parts)) != len(parts):
        raise ValueError(f"variant {name!r}: expected parts {', '.join(PARTS)} joined with '+' (e.g. int8+fp8kv)")
    rest = "+".join(p for p in parts if p != "bf16")
    shared = variants.parse_variant(rest) if rest else variants.Variant()
    if shared.kv not in ("auto", "fp8"):
        raise ValueError(f"variant {name!r}: fidelity compares the fp8 ring (fp8kv) with the model's own dtype")
    return Variant(name, shared.weights, shared.kv_dtype, torch.bfloat16 if "bf16" in parts else None)


def variant_of(quantize: Optional[str], kv: Optional[torch.dtype]) -> Variant:
    """The variant that ``--quantize`` and ``--kv-dtype`` name (KV dtypes other than fp8 are not measured here)."""
    parts = [quantize] if quantize not in (None, "none") else []
    if kv is not None and kv != FP8:
        raise ValueError(f"--kv-dtype {str(kv).replace('torch.', '')}: fidelity compares the fp8 ring (fp8) with "
                         "the model's own dtype")
    parts += ["fp8kv"] if kv == FP8 else []
    if not parts:
        raise ValueError("nothing to compare: name a quantization (--quantize int8|fp8, --kv-dtype fp8)")
    return parse_variant("+".join(parts))


# ------------------------------------------------------------------------------------------------ speech
def demo_recordings(root: Path = DEMO_SET) -> List[Path]:
    """The demo set's user recordings (``input.wav`` of every sample folder), one task after another in turn
    (first sample of each task, then the second...), so a few hundred frames hold every kind of turn."""
    tasks = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    per_task = [sorted(t.glob("*/input.wav"), key=lambda p: (len(p.parent.name), p.parent.name)) for t in tasks]
    ordered = [files[i] for i in range(max(map(len, per_task), default=0)) for files in per_task if i < len(files)]
    if not ordered:
        raise FileNotFoundError(f"no demo recordings (*/*/input.wav) under {root}: pass audio files")
    return ordered


def speech_codes(mimi, paths: Sequence, frames: int, codebooks: int) -> tuple:
    """(codes int64 [frames, codebooks], files used, whether the audio was looped): the recordings one after the
    other (each resampled to the codec's rate), encoded by ``mimi`` (offline), cut to ``frames``; repeated when
    they are shorter."""
    used, pieces, total = [], [], 0
    needed = frames * mimi.frame_size
    for path in paths:
        pcm = load_audio(path, mimi.sample_rate)[0]
        pieces.append(pcm)
        used.append(str(path))
        total += pcm.shape[0]
        if total >= needed:
            break
    pcm = torch.cat(pieces)
    looped = pcm.shape[0] < needed
    if looped:
        pcm = pcm.repeat(-(-needed // pcm.shape[0]))
    codes = mimi.encode(pcm[:needed].view(1, 1, -1).to(mimi.device), num_codebooks=codebooks)
    return codes[0].T.contiguous().cpu(), used, looped


# ---------------------------------------------------------------------------------------------- measures
@torch.no_grad()
def converse(lm: MoshiLM, user: torch.Tensor, frames: int, greedy: bool, seed: int = SEED,
             kv_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """What ``lm`` says, streaming, while the user says ``user`` [steps, user_codebooks]: codes [1 + n_q, frames] in
    ``forward_train``'s layout (text, the model's audio, then the user's audio, frame-aligned).

    Alignment (``duplex.model.generator``): the codes fed at step s are the user's frame s - 1 (those of step 0 are
    never read), and step s returns the model's frame s - max_delay. So ``frames`` model frames take ``frames +
    max_delay`` steps, and user frame f is ``user[f + 1]``."""
    cfg = lm.config
    steps = frames + cfg.max_delay
    if user.shape[0] < max(steps, frames + 1):
        raise ValueError(f"{frames} frames need {max(steps, frames + 1)} frames of user codes, got {user.shape[0]}")
    gen = lm.generator(1, greedy=greedy, seed=seed, kv_dtype=kv_dtype)
    out = [gen.step(user[s:s + 1].to(lm.device)).cpu() for s in range(steps)]
    model = torch.cat(out[cfg.max_delay:], dim=0)  # [frames, 1 + dep_q]
    return torch.cat([model, user[1:frames + 1, :cfg.n_q - cfg.dep_q]], dim=1).T.contiguous()


def _entropy(logits: torch.Tensor, mask: torch.Tensor) -> List[float]:
    """Mean entropy (nats) of logits [S, T, V] over the valid positions [S, T], per stream."""
    logp = F.log_softmax(logits.float(), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return (torch.where(mask, entropy, 0.0).sum(-1) / mask.sum(-1).clamp_min(1)).tolist()


def _compare(reference: torch.Tensor, other: torch.Tensor, mask: torch.Tensor) -> tuple:
    """Logits [S, T, V] of two models, valid positions [S, T] -> (mean KL(reference || other), top-1 agreement)
    per stream S, as float lists."""
    ref = F.log_softmax(reference.float(), dim=-1)
    oth = F.log_softmax(other.float(), dim=-1)
    kl = (ref.exp() * (ref - oth)).sum(-1).clamp_min(0.0)  # [S, T]; tiny negative float noise clipped
    same = (reference.argmax(-1) == other.argmax(-1)).float()
    count = mask.sum(-1).clamp_min(1)
    kl_mean = (torch.where(mask, kl, 0.0).sum(-1) / count).tolist()
    top1 = (torch.where(mask, same, 0.0).sum(-1) / count).tolist()
    return kl_mean, top1


@torch.no_grad()
def teacher_forced(reference: MoshiLM, other: MoshiLM, codes: torch.Tensor,
                   kv_dtype: Optional[torch.dtype] = None, ref_out=None) -> dict:
    """KL(reference || other) and top-1 agreement of the text and of each audio codebook over ``codes`` [K, T]
    (``other`` reads them with ``kv_dtype``'s rounding). ``ref_out``: the reference's ``forward_train`` output,
    when already computed."""
    batch = codes[None]
    ref = ref_out if ref_out is not None else reference.forward_train(batch)
    out = other.forward_train(batch, kv_dtype=kv_dtype)
    text_kl, text_top1 = _compare(ref.text_logits[0], out.text_logits[0].to(ref.text_logits.device),
                                  ref.text_mask[0])
    audio_kl, audio_top1 = _compare(ref.logits[0], out.logits[0].to(ref.logits.device), ref.mask[0])
    return {"frames": int(codes.shape[1]), "text_kl": text_kl[0], "text_top1": text_top1[0],
            "audio_kl": audio_kl, "audio_top1": audio_top1,
            "audio_kl_mean": sum(audio_kl) / len(audio_kl), "audio_top1_mean": sum(audio_top1) / len(audio_top1)}


def greedy_agreement(reference: torch.Tensor, other: torch.Tensor) -> dict:
    """Two greedy generations (codes [K, T] from ``converse``, the model's rows compared) -> the share of identical
    frames and tokens, and the first frame that differs (None: none does)."""
    rows = reference.shape[0]
    same = reference[:rows] == other[:rows]
    frames_same = same.all(dim=0)
    differing = (~frames_same).nonzero()
    return {"frames": int(reference.shape[1]), "frames_identical": float(frames_same.float().mean()),
            "tokens_identical": float(same.float().mean()),
            "first_divergence": int(differing[0, 0]) if len(differing) else None}


@torch.no_grad()
def measure(load: Callable[[Variant], MoshiLM], variants: Sequence[Variant], user: torch.Tensor,
            frames: int = FRAMES, greedy_frames: int = GREEDY_FRAMES, seed: int = SEED, progress=None) -> dict:
    """Every variant against the reference (``load(Variant("reference"))``): the conversation and the reference's
    own figures computed once, then each variant loaded, measured and dropped (one model more at a time).
    ``user``: the user's codes, at least ``frames + max_delay`` frames (and ``greedy_frames + max_delay``)."""
    def say(text):
        if progress is not None:
            progress(text)

    reference = load(Variant("reference"))
    if reference.quantization != "none":
        raise ValueError(f"the reference holds {reference.quantization} weights (a quantized file): measure the "
                         "full-precision file")
    model_rows = 1 + reference.config.dep_q
    say(f"reference conversation: {frames} frames sampled (seed {seed})")
    codes = converse(reference, user, frames, greedy=False, seed=seed)
    ref_out = reference.forward_train(codes[None])
    say(f"reference greedy: {greedy_frames} frames")
    ref_greedy = converse(reference, user, greedy_frames, greedy=True)[:model_rows]
    results = []
    for variant in variants:
        say(f"{variant.name}: loading")
        model = load(variant)
        say(f"{variant.name}: teacher-forced")
        forced = teacher_forced(reference, model, codes, variant.kv, ref_out)
        say(f"{variant.name}: greedy")
        greedy = greedy_agreement(ref_greedy, converse(model, user, greedy_frames, greedy=True,
                                                       kv_dtype=variant.kv)[:model_rows])
        results.append({"variant": variant.name,
                        "runs": describe(variant.weights, variant.kv or model.dtype, model.dtype),
                        "teacher_forced": forced, "greedy": greedy})
        del model
    audio_entropy = _entropy(ref_out.logits[0], ref_out.mask[0])
    entropy = {"text": _entropy(ref_out.text_logits[0], ref_out.text_mask[0])[0], "audio": audio_entropy,
               "audio_mean": sum(audio_entropy) / len(audio_entropy)}
    return {"reference": describe("none", reference.dtype, reference.dtype), "reference_entropy": entropy,
            "results": results,
            "parameters": sum(p.numel() for p in reference.parameters()),
            "config": {"dim": reference.config.dim, "num_layers": reference.config.num_layers,
                       "text_card": reference.config.text_card, "card": reference.config.card,
                       "dep_q": reference.config.dep_q}}


def file_loader(files, device, dtype: torch.dtype) -> Callable[[Variant], MoshiLM]:
    """Variants of a model's files (``runtime.checkpoints.ModelFiles``): each loaded from the file, quantized on
    the host as ``--quantize`` does."""
    def load(variant: Variant) -> MoshiLM:
        return files.load_lm(device, variant.dtype or dtype,
                             quantize=None if variant.weights == "none" else variant.weights)
    return load


def random_loader(config, device, dtype: torch.dtype, seed: int = SEED) -> Callable[[Variant], MoshiLM]:
    """Variants of a random model (``MoshiLM.random``: the same weights for the same seed), each made afresh."""
    def load(variant: Variant) -> MoshiLM:
        lm = MoshiLM.random(config, seed=seed, device=device, dtype=dtype)
        if variant.dtype is not None and variant.dtype != dtype:
            lm = lm.to(variant.dtype)
            lm._rebuild_buffers()  # the rope tables and token ids as a model loaded in that dtype has them
        return lm if variant.weights == "none" else lm.quantize_(variant.weights)
    return load


def fidelity(load: Callable[[Variant], MoshiLM], config: LMConfig, mimi, variants: Sequence[Variant], model: str,
             recordings: Sequence, device, frames: int = FRAMES, greedy_frames: int = GREEDY_FRAMES,
             seed: int = SEED, notes: Sequence[str] = (), progress=None) -> dict:
    """The report of ``duplex bench fidelity``: ``measure`` on the user's speech from ``recordings`` (encoded with
    ``mimi``, the model's codec), for a model of ``config``."""
    if config.personaplex:
        raise ValueError("PersonaPlex models step one frame later than Moshi's (duplex.model.generator): their "
                         "fidelity is not measured yet")
    steps = max(frames, greedy_frames) + max(config.max_delay, 1)
    user, used, looped = speech_codes(mimi, recordings, steps, config.user_codebooks)
    report = measure(load, variants, user, frames, greedy_frames, seed, progress)
    return {"benchmark": "quantization fidelity against the unquantized model",
            "model": model, "device": str(device), "hardware": describe_device(torch.device(device)),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            "speech": {"recordings": used, "looped": looped, "frames": frames, "greedy_frames": greedy_frames,
                       "user_stream": "the recordings, encoded by the model's codec",
                       "model_stream": f"the reference model's own sampled reply (seed {seed})"},
            "notes": list(notes), **report}


def format_table(report: dict) -> str:
    """One row per variant: teacher-forced KL and top-1 agreement (text; audio as the mean over codebooks and the
    semantic codebook), greedy agreement."""
    ref = report["reference"]
    cfg = report["config"]
    rows = [f"# {report['benchmark']} -- {report['model']} ({report['parameters'] / 1e6:.1f} M parameters, "
            f"{cfg['num_layers']} temporal layers of {cfg['dim']}), reference {ref['compute']} weights and ring, "
            f"{report['hardware']}, torch {report['torch']}, {report['date']}",
            f"# teacher-forced: {report['speech']['frames']} frames (user: speech; model: its own sampled reply); "
            f"greedy: {report['speech']['greedy_frames']} frames; the reference's mean entropy: text "
            f"{report['reference_entropy']['text']:.2f} nats, audio {report['reference_entropy']['audio_mean']:.2f}",
            f"{'variant':<14} {'weights':>7} {'kv':>8} {'text KL':>9} {'text top1':>9} {'audio KL':>9} "
            f"{'sem KL':>9} {'audio top1':>10} {'greedy same':>11} {'1st diff':>8}"]
    for r in report["results"]:
        t, g = r["teacher_forced"], r["greedy"]
        first = "-" if g["first_divergence"] is None else str(g["first_divergence"])
        rows.append(f"{r['variant']:<14} {r['runs']['weights']:>7} {r['runs']['kv']:>8} {t['text_kl']:>9.2e} "
                    f"{t['text_top1']:>9.3f} {t['audio_kl_mean']:>9.2e} {t['audio_kl'][0]:>9.2e} "
                    f"{t['audio_top1_mean']:>10.3f} {g['frames_identical']:>11.3f} {first:>8}")
    rows += ["KL: mean KL(reference || variant) in nats per frame; top1: share of frames with the same argmax; audio: "
             "mean over the model's codebooks (sem: the semantic one)",
             "greedy same: share of generated frames whose tokens are all identical; 1st diff: first differing frame "
             "('-': none)"]
    rows += [f"note: {n}" for n in report.get("notes", [])]
    return "\n".join(rows)
