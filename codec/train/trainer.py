"""Training a Mimi-architecture codec: a differentiable forward, losses, EMA codebooks, resumable checkpoints.

The forward runs the same modules as inference (offline paths, causal throughout, so a trained model streams).
The split residual quantizer is trained the way Mimi's codebooks are stored: straight-through gradients to the
encoder, a commitment loss pulling encoder outputs towards their codes, and codebooks that are not learnt by
gradient but as exponential moving averages (``cluster_usage``, ``embedding_sum``), with dead codes replaced by
recent encoder outputs. Quantizer dropout trains every prefix of 1..max codebooks.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ..io.checkpoint import check_and_load, read_checkpoint_set, write_checkpoint_set
from ..io.files import write_json
from ..model import Mimi
from ..modules.quantizer import Codebook, ResidualVectorQuantizer
from .discriminator import MultiPeriodDiscriminator, discriminator_loss, feature_matching_loss, generator_loss
from .losses import MultiScaleMelLoss
from .transcript import TranscriptHead, character_error_rate, greedy_transcripts, transcript_loss

Batch = Union[torch.Tensor, Tuple[torch.Tensor, Sequence[str]]]  # crops, or (crops, each crop's words)


@dataclass
class TrainConfig:
    learning_rate: float = 3e-4
    betas: Tuple[float, float] = (0.8, 0.99)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    # Codes whose EMA usage falls below this are re-seeded. With 2048 bins and a few hundred vectors per step the
    # expected usage of a code is ~0.1, so the threshold is low: a code unused for ~300 steps is dead.
    dead_code_threshold: float = 0.01
    commitment_weight: float = 1.0
    mel_weight: float = 1.0
    linear_mel_weight: float = 0.0
    waveform_weight: float = 0.1
    mel_scales: List[int] = field(default_factory=lambda: [256, 512, 1024, 2048])
    min_codebooks: int = 1
    max_codebooks: int = 8
    # The first steps train a plain autoencoder (the projected latent passes the quantizer unquantized): codebooks
    # initialised from an uninformative random encoder collapse (the decoder learns to ignore its input, so the
    # encoder gets no signal). After the warm-up the codebooks start from the then informative latents.
    warmup_unquantized_steps: int = 300
    # Learning-rate schedule: "constant", or "cosine" from learning_rate down to final_lr_fraction of it at
    # total_steps (the step count the run is planned for).
    lr_schedule: str = "constant"
    total_steps: int = 0
    final_lr_fraction: float = 0.1
    # Optional adversarial training (codec.train.discriminator): 0 disables it. Active after the unquantized warm-up.
    adversarial_weight: float = 0.0
    feature_matching_weight: float = 0.0
    discriminator_lr: float = 2e-4
    # Optional transcript distillation (codec.train.transcript): the first codebook's output must be spelt by a
    # training-only CTC head, the words of each crop given by the corpus. 0 disables it.
    transcript_weight: float = 0.0
    transcript_lr: float = 1e-3  # the head's own AdamW, constant (like the discriminator's): it starts from nothing

    @property
    def adversarial(self) -> bool:
        return self.adversarial_weight > 0 or self.feature_matching_weight > 0

    def lr_at(self, step: int) -> float:
        if self.lr_schedule == "constant" or self.total_steps <= 0:
            return self.learning_rate
        if self.lr_schedule != "cosine":
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r} (constant or cosine)")
        progress = min(1.0, step / self.total_steps)
        floor = self.final_lr_fraction
        return self.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


# ------------------------------------------------------------------------------------------------ init
# The activation gain of ELU on unit Gaussian inputs (E[elu(x)^2] ~ 0.65): a variance-preserving weight scale.
ELU_GAIN = 1.25
OUTPUT_GAIN = 0.03


@torch.no_grad()
def init_for_training(mimi: Mimi, seed: int = 0) -> None:
    """Variance-preserving start for training from scratch: convolutions ~ N(0, gain^2 / fan_in), biases 0.

    PyTorch's default initialisation shrinks the signal by ~2x per layer and gives every layer a random bias, so a
    fresh codec's output does not depend on its input at all (the time-varying part of the latent is ~1e-4 of the
    output's bias-driven part). The decoder then learns an input-independent average spectrum, the encoder gets
    no gradient, and training can sit on that plateau for hundreds of steps or for good. With this initialisation
    the reconstruction depends on the input from the first step."""
    generator = torch.Generator().manual_seed(seed)
    modules = [mimi.encoder, mimi.decoder]
    modules += [m for m in (mimi.downsample, mimi.upsample) if m is not None]
    for root in modules:
        for module in root.modules():
            if isinstance(module, torch.nn.ConvTranspose1d):
                # each output sample sums in_channels / groups * kernel / stride products
                fan_in = module.in_channels // module.groups * module.kernel_size[0] / module.stride[0]
            elif isinstance(module, torch.nn.Conv1d):
                fan_in = module.in_channels // module.groups * module.kernel_size[0]
            else:
                continue
            std = ELU_GAIN / math.sqrt(fan_in)
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
            if module.bias is not None:
                module.bias.zero_()
    # The stack above has a gain of ~30 from waveform to waveform: start the output near speech level instead.
    last = [m for m in mimi.decoder.modules() if isinstance(m, torch.nn.Conv1d)][-1]
    last.weight.mul_(OUTPUT_GAIN)
    q = mimi.quantizer
    for rvq in (q.rvq_first, q.rvq_rest):
        for proj in (rvq.input_proj, rvq.output_proj):
            if proj is not None:
                w = proj.weight
                w.copy_(torch.randn(w.shape, generator=generator) / math.sqrt(w.shape[1] * w.shape[2]))


# --------------------------------------------------------------------------------------------- quantizer
@torch.no_grad()
def _ema_update(codebook: Codebook, inputs: torch.Tensor, codes: torch.Tensor, decay: float,
                dead_threshold: float, generator: torch.Generator) -> None:
    """EMA of usage counts and vector sums, then dead codes re-seeded with random current inputs."""
    bins = codebook.cluster_usage.shape[0]
    if not bool(codebook._initialized.item()) and inputs.shape[0]:
        # First batch: start from random encoder outputs rather than all-zero centroids. A batch has fewer vectors
        # than bins, so the picks are spread with a little noise (duplicates would never win), and they start at
        # the re-seeding usage: codes that attract nothing are soon replaced by vectors of later batches.
        pick = torch.randint(0, inputs.shape[0], (bins,), generator=generator).to(inputs.device)
        spread = 0.1 * inputs.std() * torch.randn(bins, inputs.shape[1], generator=generator).to(inputs)
        usage = 2 * dead_threshold
        codebook.embedding_sum.copy_((inputs[pick] + spread) * usage)
        codebook.cluster_usage.fill_(usage)
        codebook._initialized.fill_(1.0)
        codebook.refresh()
        return
    counts = torch.bincount(codes, minlength=bins).to(inputs.dtype)
    sums = torch.zeros_like(codebook.embedding_sum).index_add_(0, codes, inputs)
    codebook.cluster_usage.mul_(decay).add_(counts, alpha=1 - decay)
    codebook.embedding_sum.mul_(decay).add_(sums, alpha=1 - decay)
    dead = codebook.cluster_usage < dead_threshold
    n_dead = int(dead.sum())
    if n_dead and inputs.shape[0]:
        # drawn on the (CPU) training generator, then moved: works for models on any device
        pick = torch.randint(0, inputs.shape[0], (n_dead,), generator=generator).to(inputs.device)
        codebook.embedding_sum[dead] = inputs[pick] * (2 * dead_threshold)
        codebook.cluster_usage[dead] = 2 * dead_threshold
    codebook._initialized.fill_(1.0)
    codebook.refresh()


def _quantize_train(rvq: ResidualVectorQuantizer, latent: torch.Tensor, n_q: int, cfg: TrainConfig,
                    generator: torch.Generator, update: bool, bypass: bool = False, n_update: int = 0):
    """Straight-through residual quantization of [B, C, T] with ``n_q`` codebooks (``bypass``: unquantized).
    The EMA codebooks of the first ``max(n_q, n_update)`` levels learn from this batch: with quantizer dropout
    the later codebooks would otherwise learn only from the few batches that happen to use them.
    Returns (projected-back output [B, C, T], commitment loss, codes [B, n_q, T])."""
    b, _, t = latent.shape
    x = F.conv1d(latent, rvq.input_proj.weight).transpose(1, 2).reshape(b * t, -1)
    if bypass:
        out = F.conv1d(x.view(b, t, -1).transpose(1, 2), rvq.output_proj.weight)
        return out, x.new_zeros(()), torch.zeros(b, n_q, t, dtype=torch.long, device=x.device)
    residual, quantized, commit, codes = x, torch.zeros_like(x), x.new_zeros(()), []
    levels = max(n_q, n_update) if update else n_q
    for level, codebook in enumerate(rvq.codebooks[:levels]):
        with torch.no_grad():
            c = codebook.encode(residual.detach())
            q = codebook.decode(c)
        if update:
            _ema_update(codebook, residual.detach(), c, cfg.ema_decay, cfg.dead_code_threshold, generator)
        if level < n_q:
            commit = commit + F.mse_loss(residual, q)
            quantized = quantized + q
            codes.append(c.view(b, t))
        residual = residual - q
    # Straight-through: the forward value is the sum of code vectors, the gradient reaches x unchanged.
    quantized = x + (quantized - x).detach()
    out = F.conv1d(quantized.view(b, t, -1).transpose(1, 2), rvq.output_proj.weight)
    codes_out = torch.stack(codes, dim=1) if codes else torch.zeros(b, 0, t, dtype=torch.long, device=x.device)
    return out, commit / max(n_q, 1), codes_out


def forward_train(mimi: Mimi, pcm: torch.Tensor, n_q: int, cfg: TrainConfig, generator: torch.Generator,
                  update_codebooks: bool = True, bypass: bool = False, with_first: bool = False):
    """pcm [B, 1, T] (T a multiple of the frame) -> (reconstruction [B, 1, T], commitment loss, codes), and with
    ``with_first`` the first codebook's output [B, D, frames] (what transcript distillation reads) after them."""
    x = mimi.encoder_transformer(mimi.encoder(pcm))
    if mimi.downsample is not None:
        x = mimi.downsample.conv(x)
    q = mimi.quantizer
    semantic, commit_s, codes_s = _quantize_train(q.rvq_first, x, 1, cfg, generator, update_codebooks, bypass)
    out, commit, codes = semantic, commit_s, codes_s
    rest_levels = min(cfg.max_codebooks, mimi.total_codebooks) - 1
    if n_q > 1:
        acoustic, commit_a, codes_a = _quantize_train(q.rvq_rest, x, n_q - 1, cfg, generator, update_codebooks,
                                                      bypass, n_update=rest_levels)
        out, commit, codes = semantic + acoustic, commit_s + commit_a, torch.cat([codes_s, codes_a], dim=1)
    elif update_codebooks and not bypass and rest_levels > 0:
        # one codebook in use: the acoustic codebooks still learn from this batch (their output is unused)
        with torch.no_grad():
            _quantize_train(q.rvq_rest, x, 0, cfg, generator, True, n_update=rest_levels)
    if mimi.upsample is not None:
        out = mimi.upsample.convtr(out)
    reconstruction = mimi.decoder(mimi.decoder_transformer(out))
    return (reconstruction, commit, codes, semantic) if with_first else (reconstruction, commit, codes)


# -------------------------------------------------------------------------------------------------- losses
class CodecTrainer:
    """One optimiser step per batch; checkpoints hold everything needed to continue exactly."""

    def __init__(self, mimi: Mimi, cfg: Optional[TrainConfig] = None, seed: int = 0):
        self.mimi = mimi.train()
        self.cfg = cfg or TrainConfig()
        self.mel = MultiScaleMelLoss(mimi.sample_rate, self.cfg.mel_scales).to(mimi.device)
        self.optimizer = torch.optim.AdamW([p for p in mimi.parameters() if p.requires_grad],
                                           lr=self.cfg.learning_rate, betas=self.cfg.betas,
                                           weight_decay=self.cfg.weight_decay)
        self.generator = torch.Generator().manual_seed(seed)
        self.step = 0
        self.discriminator = self.discriminator_optimizer = None
        if self.cfg.adversarial:
            self.discriminator = MultiPeriodDiscriminator().to(mimi.device)
            self.discriminator_optimizer = torch.optim.AdamW(self.discriminator.parameters(),
                                                             lr=self.cfg.discriminator_lr, betas=self.cfg.betas)
        self.transcript_head = self.transcript_optimizer = None
        if self.cfg.transcript_weight > 0:
            dim = mimi.quantizer.rvq_first.output_proj.weight.shape[0]
            with torch.random.fork_rng(devices=[]):  # its initialisation leaves the caller's RNG alone
                torch.manual_seed(seed)
                self.transcript_head = TranscriptHead(dim).to(mimi.device)
            self.transcript_optimizer = torch.optim.AdamW(self.transcript_head.parameters(),
                                                          lr=self.cfg.transcript_lr, betas=self.cfg.betas)

    def train_step(self, pcm: torch.Tensor, texts: Optional[Sequence[str]] = None) -> Dict[str, float]:
        """One step on crops ``pcm`` [B, 1, T]; ``texts``: each crop's words, needed with transcript distillation."""
        cfg = self.cfg
        if self.transcript_head is not None and (texts is None or len(texts) != pcm.shape[0]):
            raise ValueError("transcript_weight > 0: train_step needs the words of each crop (texts)")
        low, high = cfg.min_codebooks, min(cfg.max_codebooks, self.mimi.total_codebooks)
        n_q = int(torch.randint(low, high + 1, (1,), generator=self.generator))  # quantizer dropout
        warming_up = self.step < cfg.warmup_unquantized_steps
        estimate, commit, _, first = forward_train(self.mimi, pcm, high if warming_up else n_q, cfg,
                                                   self.generator, bypass=warming_up, with_first=True)
        mel = self.mel(estimate, pcm, cfg.linear_mel_weight)
        wave = F.l1_loss(estimate, pcm)
        loss = cfg.mel_weight * mel + cfg.waveform_weight * wave + cfg.commitment_weight * commit
        transcript = None
        if self.transcript_head is not None:
            transcript = transcript_loss(self.transcript_head, first, texts)
            loss = loss + cfg.transcript_weight * transcript
        adversarial = self.discriminator is not None and not warming_up
        if adversarial:
            gan = self._adversarial_terms(estimate, pcm)
            loss = loss + cfg.adversarial_weight * gan["adversarial"] + cfg.feature_matching_weight * gan[
                "feature_matching"]
        optimizers = [o for o in (self.optimizer, self.transcript_optimizer) if o is not None]
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr_at(self.step)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.mimi.parameters(), cfg.grad_clip)
        if self.transcript_head is not None:
            torch.nn.utils.clip_grad_norm_(self.transcript_head.parameters(), cfg.grad_clip)
        for optimizer in optimizers:
            optimizer.step()
        self.step += 1
        logged = {"loss": loss.item(), "mel": mel.item(), "waveform": wave.item(), "commitment": commit.item(),
                  "codebooks": 0 if warming_up else n_q, "grad_norm": float(norm), "lr": cfg.lr_at(self.step - 1)}
        if adversarial:
            logged.update({name: float(value.detach()) for name, value in gan.items()})
        if transcript is not None:
            logged["transcript"] = transcript.item()
        return logged

    def _adversarial_terms(self, estimate: torch.Tensor, pcm: torch.Tensor) -> Dict[str, torch.Tensor]:
        """One discriminator update on (real, decoded), then the generator's adversarial and feature-matching
        terms against the updated discriminator (gradients flow into the codec only through ``estimate``)."""
        d = self.discriminator
        d_loss = discriminator_loss(d(pcm), d(estimate.detach()))
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        torch.nn.utils.clip_grad_norm_(d.parameters(), self.cfg.grad_clip)
        self.discriminator_optimizer.step()
        d.requires_grad_(False)  # the generator's terms must not accumulate gradients in the discriminator
        try:
            with torch.no_grad():
                real = d(pcm)
            fake = d(estimate)
            return {"adversarial": generator_loss(fake), "feature_matching": feature_matching_loss(real, fake),
                    "discriminator": d_loss.detach()}
        finally:
            d.requires_grad_(True)

    @torch.no_grad()
    def evaluate(self, pcm: torch.Tensor, n_q: int = 8, texts: Optional[Sequence[str]] = None) -> Dict[str, float]:
        """Held-out losses on ``pcm``; with transcript distillation and ``texts``, also its loss and the head's
        character error rate (how readable the first codebook is)."""
        self.mimi.eval()
        head = self.transcript_head
        if head is not None:
            head.eval()
        try:
            # During the unquantized warm-up the codebooks are not started yet: measure what is being trained.
            estimate, commit, _, first = forward_train(self.mimi, pcm, n_q, self.cfg, self.generator,
                                                       update_codebooks=False, with_first=True,
                                                       bypass=self.step < self.cfg.warmup_unquantized_steps)
            out = {"mel": float(self.mel(estimate, pcm)), "waveform": float(F.l1_loss(estimate, pcm)),
                   "commitment": float(commit)}
            if head is not None and texts is not None:
                out["transcript"] = float(transcript_loss(head, first, texts))
                out["transcript_cer"] = character_error_rate(texts, greedy_transcripts(head, first))
            return out
        finally:
            self.mimi.train()
            if head is not None:
                head.train()

    # ------------------------------------------------------------------------------------------ checkpoints
    def save(self, folder: str, extra: Optional[dict] = None) -> None:
        """``codec.safetensors`` (official key layout; loads with Mimi.from_checkpoint), ``config.json``,
        ``trainer.pt`` (optimizer, step, random state) in ``folder``: a checkpoint set (``write_checkpoint_set``)."""
        state = {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                 "train_config": asdict(self.cfg), "extra": extra or {}}
        if self.discriminator is not None:
            state["discriminator"] = self.discriminator.state_dict()
            state["discriminator_optimizer"] = self.discriminator_optimizer.state_dict()
        if self.transcript_head is not None:  # training-only, like the discriminator: never in the codec's file
            state["transcript_head"] = self.transcript_head.state_dict()
            state["transcript_optimizer"] = self.transcript_optimizer.state_dict()
        os.makedirs(folder, exist_ok=True)
        write_json(os.path.join(folder, "config.json"), self.mimi.config.to_official_dict())
        write_checkpoint_set(folder, "codec.safetensors", self.mimi.state_dict(), state, self.step)

    def load(self, folder: str) -> dict:
        tensors, state = read_checkpoint_set(folder, "codec.safetensors")
        check_and_load(self.mimi, tensors, "Mimi", source=folder, assign=False)
        self.mimi.refresh_derived()
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        self.generator.set_state(state["generator"])
        # The warm-up belongs to how the run started (none for a fine-tune of a trained codec), not to this call:
        # a resumed fine-tune must not go back to bypassing its quantizer.
        saved = state.get("train_config", {})
        if "warmup_unquantized_steps" in saved:
            self.cfg.warmup_unquantized_steps = saved["warmup_unquantized_steps"]
        # A run that adds the discriminator to a checkpoint made without one starts it fresh.
        if self.discriminator is not None and "discriminator" in state:
            self.discriminator.load_state_dict(state["discriminator"])
            self.discriminator_optimizer.load_state_dict(state["discriminator_optimizer"])
        if self.transcript_head is not None and "transcript_head" in state:  # else it starts fresh
            self.transcript_head.load_state_dict(state["transcript_head"])
            self.transcript_optimizer.load_state_dict(state["transcript_optimizer"])
        return state.get("extra", {})


def fit(trainer: CodecTrainer, next_batch: Callable[[], Batch], end: int, save: Callable[[], None],
        save_every: int, log: Callable[[dict], None] = lambda record: None,
        eval_batch: Optional[Batch] = None, eval_every: int = 0,
        stop_requested: Callable[[], bool] = lambda: False) -> None:
    """Train until ``trainer.step`` reaches ``end``: one optimiser step per ``next_batch()``, held-out losses on
    ``eval_batch`` every ``eval_every`` steps (at the codebook count inference uses, at most what is trained), one
    ``log(record)`` per step, ``save()`` every ``save_every`` steps, at the end, and when ``stop_requested()``
    says so between two steps (Ctrl-C: what is saved is always a whole step). A batch is crops [B, 1, T], or
    (crops, each crop's words) for transcript distillation."""
    n_q_eval = min(trainer.mimi.num_codebooks, trainer.cfg.max_codebooks)
    while trainer.step < end:
        pcm, texts = _split(next_batch())
        record = {"step": trainer.step + 1, **trainer.train_step(pcm, texts)}
        if eval_batch is not None and eval_every and trainer.step % eval_every == 0:
            pcm, texts = _split(eval_batch)
            record["heldout"] = trainer.evaluate(pcm, n_q=n_q_eval, texts=texts)
        log(record)
        stopping = stop_requested()
        if trainer.step % save_every == 0 or trainer.step == end or stopping:
            save()
        if stopping:
            return


def _split(batch: Batch) -> Tuple[torch.Tensor, Optional[Sequence[str]]]:
    return batch if isinstance(batch, tuple) else (batch, None)
