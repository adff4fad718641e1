"""``duplex train lm``: train (or fine-tune) a Moshi-architecture LM on a dataset in Kyutai's fine-tuning layout.

``LMTrainer`` has the shape of the codec's ``CodecTrainer`` (``train_step`` / ``evaluate`` / ``save`` / ``load``
through the run folder); ``fit`` is the loop and ``train_lm`` the wiring. What a step does: teacher-forced ``forward_train`` on segments [B, 17, T], ``lm_loss`` (Kyutai's weights), AdamW
with Kyutai's defaults, a one-cycle cosine schedule, gradient clipping; held-out losses every N steps; a run folder
that resumes exactly (the data position is part of the saved state, the rest of the loop is deterministic); the
exported model (``model.safetensors`` in Kyutai's key layout, ``config.json`` in its keyword layout, and the
tokenizer) rewritten at every checkpoint, so a stopped run always leaves a usable model.

With ``lora`` (moshi-finetune's way, docs/lora-facts.md): the base (``init``) is frozen, optionally quantized, and
one fresh adapter on every linear layer Kyutai adapts is trained (A kaiming-uniform, B zeros, moshi-finetune's
initialisation); the checkpoint holds the adapter's float32 banks, the export is moshi-finetune's layout
(``lora.safetensors`` in Kyutai's module-form keys + the base's ``config.json`` with ``lora``, ``lora_rank``,
``lora_scaling``), which Kyutai's ``get_moshi_lm(base, lora_weights=...)`` and duplex's ``--lora`` load.
"""

from __future__ import annotations

import filecmp
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import torch

from codec.io.checkpoint import check_and_load, normalize_keys, write_safetensors
from codec.io.files import write_atomically, write_json

from ..data.lm_dataset import SegmentSource, check_one_codec, codes_frame_rate, load_conversations
from ..errors import DatasetError, TokenizerError, UsageError
from ..model import lora
from ..model.config import LMConfig, lm_config_beside
from ..model.layers import ZERO_TOKEN
from ..model.lm import MoshiLM, default_dtype
from ..model.tokenizer import TextTokenizer
from .lm_loss import LossWeights, lm_loss
from .run import RunFolder

WEIGHTS = "lm.safetensors"  # the float32 training weights of the checkpoint set
EXPORT = "model.safetensors"
EXPORT_CONFIG = "config.json"
EXPORT_TOKENIZER = "tokenizer.model"
BEST = "best"  # the export at the lowest held-out loss so far (a run that overfits keeps its best model)
EXPORT_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# LoRA runs
LORA_WEIGHTS = "lora-train.safetensors"  # the float32 adapter banks of the checkpoint set (the base never changes)
LORA_EXPORT = "lora.safetensors"  # moshi-finetune's adapter file: Kyutai's module-form keys, --export-dtype
BASE = "base.json"  # which base a LoRA run adapts (and how it was loaded): what --resume loads again
QUANTIZE = ("int8", "fp8")
# What a run is planned with: --resume refuses other values (a resumed run must go on as it began). The rest may
# change: --stop-at, --save-every, --eval-every, --export-dtype, --autocast (noted), --threads, --device, the
# --data paths; the config, the tokenizer and a LoRA run's base and adapter shape come from the run.
RUN_SHAPING = ("steps", "seed", "batch_size", "segment_seconds", "segments", "lr", "warmup", "weight_decay",
               "grad_clip", "semantic_weight", "text_padding_weight", "user_acoustic_dropout")
AUTOCAST = ("auto", "bfloat16", "off")  # LMTrainingOptions.autocast


@dataclass
class LMTrainingOptions:
    data: Union[str, Sequence[str]]  # a dataset folder, or several trained on as one (their files together)
    out: str
    tokenizer: Optional[str] = None  # default: the (first) dataset folder's tokenizer.model
    config: Optional[str] = None  # preset or JSON (default: "default", or the one beside --init)
    init: Optional[str] = None  # the model to start from: a checkpoint, "default" (shipped), or a HF repo (cached)
    lora: bool = False  # train one LoRA adapter on the frozen --init (moshi-finetune's defaults below)
    lora_rank: int = 64
    lora_scaling: float = 2.0
    quantize: Optional[str] = None  # LoRA: the frozen base's linear weights in int8 or fp8 (a 7B on a 24 GB card)
    gradient_checkpointing: Optional[bool] = None  # None: on with --lora (as moshi-finetune), off otherwise
    steps: int = 2000  # what the schedule is planned for
    stop_at: Optional[int] = None
    batch_size: int = 8
    segment_seconds: float = 10.0
    segments: str = "random"  # random crops, or Kyutai's consecutive cut
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup: float = 0.05  # share of the steps
    grad_clip: float = 1.0
    semantic_weight: float = 100.0
    text_padding_weight: float = 0.5
    # The share of training segments whose user acoustic codebooks (all the user's but the first) are left out of the
    # input (ZERO_TOKEN: no embedding), so the model must also follow the user from the semantic codebook alone,
    # which a transcript-distilled codec makes carry the words; with all 8 it can learn each training voice's sound
    # by heart instead (docs/training.md, "Are the user's words in the codes?"). 0: off, Kyutai's training.
    user_acoustic_dropout: float = 0.0
    export_dtype: str = "bfloat16"
    # "auto": bfloat16 autocast on CUDA (as Kyutai trains), float32 on the CPU; "bfloat16": autocast on the CPU too
    # (1.45x a step for the 384 x 6 shape on the 2-vCPU Zen 4, which has AVX512-BF16: docs/training.md, "Stage 3");
    # "off": float32 (a half-precision LoRA base computes in its own dtype in any mode)
    autocast: str = "auto"
    seed: int = 0
    resume: bool = False
    save_every: int = 250
    eval_every: int = 100


def one_cycle_lr(step: int, total: int, peak: float, warmup: float = 0.05) -> float:
    """The learning rate of optimiser step ``step`` (0-based) of a one-cycle cosine schedule, as torch's
    ``OneCycleLR`` (``anneal_strategy="cos"``, ``div_factor=25``, ``final_div_factor=1e4``) computes it: a cosine
    rise from peak/25 to the peak over the warm-up, then a cosine fall to peak/25/1e4 at the last step."""
    start, end = peak / 25, peak / 25 / 1e4
    rise = float(warmup * total) - 1
    if rise > 0 and step <= rise:
        pct, low, high = step / rise, start, peak
    else:
        fall = total - 1 - max(rise, 0)
        pct, low, high = (step - max(rise, 0)) / max(fall, 1), peak, end
    return high + (low - high) * (math.cos(math.pi * min(pct, 1.0)) + 1) / 2


@dataclass
class Base:
    """The model a run starts from (``--init``): its LM file, its config (a file, a preset name, or None when none
    was found), its tokenizer when its files name one, and what to call it."""

    lm: str
    config: "str | LMConfig | None"
    tokenizer: Optional[str]
    what: str


def resolve_init(init: str) -> Base:
    """``--init``: ``default`` (the shipped model: ``ModelFiles.default()``), an LM checkpoint file (its config
    beside it, ``lm_config_beside``), or a Hugging Face repository in the local cache (``owner/name``:
    ``ModelFiles.from_hf_cache``, never downloaded)."""
    from ..runtime.checkpoints import ModelFiles  # noqa: PLC0415 - the runtime's file rules, only for --init

    if init == "default":
        files = ModelFiles.default()
        return Base(files.lm, files.lm_config, files.tokenizer, "the default model")
    if os.path.isfile(init):
        return Base(init, lm_config_beside(init), None, init)
    if init.count("/") == 1 and not init.startswith((".", "/")) and not init.endswith(".safetensors") \
            and not os.path.exists(init):
        files = ModelFiles.from_hf_cache(init)
        return Base(files.lm, files.lm_config, files.tokenizer, init)
    raise UsageError(f"--init {init}: no such file (give an LM checkpoint, 'default' for the shipped model, or a "
                     "Hugging Face repository in the local cache, e.g. kyutai/moshiko-pytorch-bf16)")


def _resolve_config(options: LMTrainingOptions, run: RunFolder, base: Optional[Base]) -> "tuple[LMConfig, bool]":
    """(the LM's config, whether it is a preset that may be sized to the tokenizer)."""
    if options.resume:
        return LMConfig.load(run.file(EXPORT_CONFIG)), False
    if options.config is not None:
        return LMConfig.load(options.config), options.config in LMConfig.PRESETS and base is None
    if base is not None:
        if base.config is None:
            raise UsageError(f"{base.lm}: no config.json beside it; name the config it was made with (a preset "
                             "such as moshi_7b, or its JSON)")
        return LMConfig.load(base.config), False
    return LMConfig.load("default"), True


def _fit_vocabulary(config: LMConfig, tokenizer: TextTokenizer, resizable: bool) -> LMConfig:
    """The text vocabulary must hold the tokenizer's ids; a preset is sized to the tokenizer exactly."""
    if resizable and config.text_card != tokenizer.vocab_size:
        config.text_card = tokenizer.vocab_size
        config.validate()
    elif tokenizer.vocab_size > config.text_card:
        raise UsageError(f"the tokenizer has {tokenizer.vocab_size} pieces but the LM's text vocabulary "
                         f"(text_card) only {config.text_card}")
    if config.n_q % 2 or config.dep_q not in (config.n_q // 2, config.n_q):
        raise UsageError(f"n_q must be 2 x dep_q (the model's and the user's codebooks; or dep_q = n_q, as "
                         f"PersonaPlex, whose depth transformer predicts both), got n_q {config.n_q}, dep_q "
                         f"{config.dep_q}")
    return config


def export_model(model: MoshiLM, folder: str, tokenizer_path: str, dtype: torch.dtype) -> None:
    """The usable model: ``MoshiLM.save`` (Kyutai's layout) and the tokenizer beside it."""
    model.save(folder, dtype)
    _copy_tokenizer(tokenizer_path, folder)


def _copy_tokenizer(tokenizer_path: str, folder: str) -> None:
    """The tokenizer beside the export: copied whole (``write_atomically``), and only when it is missing or
    differs, since every save exports and a stop while rewriting it in place would leave a broken tokenizer."""
    target = os.path.join(folder, EXPORT_TOKENIZER)
    if os.path.abspath(tokenizer_path) == os.path.abspath(target):
        return
    if os.path.isfile(target) and filecmp.cmp(tokenizer_path, target, shallow=False):
        return
    write_atomically(target, lambda temporary: shutil.copyfile(tokenizer_path, temporary))


def lora_config(config: LMConfig, rank: int, scaling: float) -> dict:
    """The ``config.json`` moshi-finetune writes beside an adapter: the base's config plus ``lora``, ``lora_rank``,
    ``lora_scaling`` (what Kyutai's ``get_moshi_lm`` pops to wrap the linears)."""
    return {**config.to_dict(), "lora": True, "lora_rank": int(rank), "lora_scaling": float(scaling)}


def export_adapter(model: MoshiLM, folder: str, tokenizer_path: str, dtype: torch.dtype, rank: int,
                   scaling: float) -> None:
    """A LoRA run's export, moshi-finetune's layout: ``lora.safetensors`` (the adapter in Kyutai's module-form keys,
    ``dtype``, no metadata), ``config.json`` (``lora_config``) and the tokenizer."""
    os.makedirs(folder, exist_ok=True)
    state = {k: v.to(dtype).contiguous().cpu() for k, v in lora.adapter_state(model).items()}
    write_safetensors(state, os.path.join(folder, LORA_EXPORT))
    write_json(os.path.join(folder, EXPORT_CONFIG), lora_config(model.config, rank, scaling))
    _copy_tokenizer(tokenizer_path, folder)


def fresh_adapter(model: MoshiLM, rank: int, scaling: float, seed: int = 0) -> lora.LoRAFile:
    """A new adapter for every linear layer Kyutai adapts, initialised as moshi-finetune does: A [rank, in]
    ``kaiming_uniform_(a=sqrt(5))`` (uniform in +-1/sqrt(in)), B [out, rank] zeros, so the adapted model starts as
    the base. Each step of a per-step weight (the depth transformer's) gets its own A; float32, deterministic in
    ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    pairs = {}
    for path, (module, name, steps) in lora.adapted_weights(model).items():
        out, inner = getattr(module, name).shape
        a = torch.empty(steps, rank, inner)
        for k in range(steps):
            torch.nn.init.kaiming_uniform_(a[k], a=math.sqrt(5), generator=generator)
        pairs[path] = (a, torch.zeros(steps, out // steps, rank))
    return lora.LoRAFile(pairs, rank, scaling, name="trained")


def add_training_adapter(model: MoshiLM, rank: int, scaling: float, seed: int = 0) -> "list[torch.nn.Parameter]":
    """Make ``model`` a LoRA run's model: one fresh adapter (``fresh_adapter``) as its only, trainable one
    (``lora.attach(training=True)``), its banks in float32 (the weights AdamW updates), every base parameter frozen.
    Returns the trainable parameters."""
    lora.attach(model, fresh_adapter(model, rank, scaling, seed), training=True)
    params = lora.trainable(model)
    for p in params:
        p.data = p.data.float()
    return params


def drop_user_acoustic(codes: torch.Tensor, n_q: int, share: float, generator: torch.Generator) -> torch.Tensor:
    """``codes`` [B, K, T] with the user's acoustic codebooks (rows 2 + n_q/2 .. n_q: the user's codebooks but its
    first) set to ZERO_TOKEN in each segment drawn with probability ``share`` (a new tensor; ``codes`` is left as it
    is). ZERO_TOKEN embeds to nothing, as Kyutai's ``ScaledEmbedding`` does for -1, and where a depth transformer
    predicts the user's codebooks too (dep_q = n_q) those targets are masked out of the loss."""
    if share <= 0:
        return codes
    drop = torch.rand(codes.shape[0], generator=generator) < share
    if not bool(drop.any()):
        return codes
    out = codes.clone()
    rows = slice(2 + n_q // 2, 1 + n_q)
    out[drop.to(codes.device), rows] = ZERO_TOKEN
    return out


class LMTrainer:
    """One optimiser step per batch (AdamW with Kyutai's betas, the one-cycle schedule, gradient clipping), held-out
    losses, and checkpoints in a run folder that hold everything needed to continue exactly (the data position
    travels in ``save``'s ``extra``)."""

    def __init__(self, model: MoshiLM, options: LMTrainingOptions):
        self.model, self.options = model.train(), options
        self.weights = LossWeights(semantic=options.semantic_weight, text_padding=options.text_padding_weight)
        # What trains: every parameter, or with LoRA the adapters only (``lora.trainable`` froze the rest)
        self.lora = any(True for _ in lora.banks(model))
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.checkpointing = options.lora if options.gradient_checkpointing is None else options.gradient_checkpointing
        decay = [p for p in self.params if p.dim() >= 2]  # with LoRA the adapters (decayed, as moshi-finetune does)
        no_decay = [p for p in self.params if p.dim() < 2]  # the norms' gains: decaying them only hurts
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": options.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}],
                                           lr=options.lr, betas=(0.9, 0.95), eps=1e-8)
        self.step = 0

    def _autocast(self):
        """``options.autocast``: "auto", bfloat16 autocast on CUDA (as Kyutai trains) and on the CPU plain float32;
        "bfloat16", autocast on the CPU too; "off", float32. A bfloat16 or float16 (LoRA) base always autocasts to
        its dtype, so that its float32 adapters compute with it."""
        device = self.model.device.type
        mode = self.options.autocast
        if self.model.dtype != torch.float32:  # a half-precision (LoRA) base computes in its dtype, any mode
            return torch.autocast(device, dtype=self.model.dtype)
        if mode == "bfloat16" or (mode == "auto" and device == "cuda"):
            return torch.autocast(device, dtype=torch.bfloat16)
        return torch.autocast(device, enabled=False)

    def _losses(self, batch: torch.Tensor) -> Dict[str, torch.Tensor]:
        with self._autocast():
            out = self.model.forward_train(batch.to(self.model.device), checkpoint=self.checkpointing)
            return lm_loss(out, batch, self.weights)

    def train_step(self, batch: torch.Tensor) -> Dict[str, float]:
        """One optimiser step on segments [B, K, T]: the learning rate, the gradient norm and the losses."""
        o = self.options
        lr = one_cycle_lr(self.step, o.steps, o.lr, o.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if o.user_acoustic_dropout > 0:  # drawn from (seed, step) alone, so a resumed run draws the same
            generator = torch.Generator().manual_seed(o.seed * 1_000_003 + self.step)
            batch = drop_user_acoustic(batch, self.model.config.n_q, o.user_acoustic_dropout, generator)
        losses = self._losses(batch)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, o.grad_clip)
        if not bool(torch.isfinite(norm)):
            raise UsageError(f"the gradient became non-finite at step {self.step + 1} (lower the learning rate)")
        self.optimizer.step()
        self.step += 1
        return {"lr": lr, "grad_norm": float(norm), **{k: float(v.detach()) for k, v in losses.items()}}

    @torch.no_grad()
    def evaluate(self, batches: Iterable[torch.Tensor]) -> Dict[str, float]:
        """The mean losses per segment over ``batches``."""
        self.model.eval()
        try:
            totals, count = {}, 0
            for batch in batches:
                for k, v in self._losses(batch).items():
                    totals[k] = totals.get(k, 0.0) + float(v) * batch.shape[0]
                count += batch.shape[0]
            return {k: v / count for k, v in totals.items()}
        finally:
            self.model.train()

    def _trained(self) -> Dict[str, torch.Tensor]:
        """With LoRA, the adapter banks by parameter name (the base is not saved: it never changes)."""
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}

    def save(self, run: RunFolder, extra: Optional[dict] = None) -> None:
        """The checkpoint set ``lm.safetensors`` (float32) + ``trainer.pt`` (step, optimizer, ``extra``); with LoRA
        ``lora-train.safetensors`` (the adapter banks, float32) instead of the weights."""
        state = {"step": self.step, "optimizer": self.optimizer.state_dict(), **(extra or {})}
        if self.lora:
            weights = {k: v.detach().contiguous() for k, v in self._trained().items()}
            run.save_checkpoint(LORA_WEIGHTS, weights, state, self.step)
            return
        weights = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        run.save_checkpoint(WEIGHTS, weights, state, self.step)

    def load(self, run: RunFolder) -> dict:
        """Continue from the run's checkpoint; returns its whole state (``extra`` included)."""
        if self.lora:
            weights, state = run.load_checkpoint(LORA_WEIGHTS)
            trained = self._trained()
            if set(weights) != set(trained) or any(weights[k].shape != trained[k].shape for k in trained):
                raise UsageError(f"{run.file(LORA_WEIGHTS)}: its adapters do not fit this model (another base or "
                                 "rank?)")
            with torch.no_grad():
                for key, param in trained.items():
                    param.copy_(weights[key])
        else:
            weights, state = run.load_checkpoint(WEIGHTS)
            check_and_load(self.model, normalize_keys(weights), "LM", source=run.file(WEIGHTS), assign=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        return state


class BestModel:
    """The export at the lowest held-out loss so far, in its own folder with ``step.json`` (a run that overfits
    keeps its best model). A new best is written whole beside it (``best.new``) and then takes its place, so the
    folder never holds one step's weights under another's step.json (a stop while writing leaves the last one)."""

    def __init__(self, folder: str, resume: bool):
        self.folder = folder
        old = folder + ".old"
        if not os.path.isdir(folder) and os.path.isdir(old):  # stopped between the two renames of ``offer``
            os.replace(old, folder)
        self.loss = _best_heldout(folder) if resume else float("inf")

    def offer(self, step: int, heldout: dict, export: Callable[[str], None]) -> None:
        if heldout["loss"] < self.loss:
            self.loss = heldout["loss"]
            new, old = self.folder + ".new", self.folder + ".old"
            shutil.rmtree(new, ignore_errors=True)
            os.makedirs(new)
            export(new)
            write_json(os.path.join(new, "step.json"), {"step": step, "heldout": heldout})
            shutil.rmtree(old, ignore_errors=True)
            if os.path.isdir(self.folder):
                os.replace(self.folder, old)
            os.replace(new, self.folder)
            shutil.rmtree(old, ignore_errors=True)


def _best_heldout(folder: str) -> float:
    try:
        with open(os.path.join(folder, "step.json"), encoding="utf-8") as f:
            return float(json.load(f)["heldout"]["loss"])
    except (OSError, ValueError, KeyError, TypeError):
        return float("inf")


def fit(trainer: LMTrainer, run: RunFolder, next_batch: Callable[[], torch.Tensor], end: int,
        save: Callable[[], None], save_every: int, heldout: Optional[Callable[[], Iterable[torch.Tensor]]] = None,
        eval_every: int = 0, on_heldout: Callable[[int, dict], None] = lambda step, losses: None) -> None:
    """Train until ``trainer.step`` reaches ``end``, as ``codec.train.fit`` does: one logged record per step,
    held-out losses on ``heldout()`` every ``eval_every`` steps (shown, and given to ``on_heldout``), ``save()``
    every ``save_every`` steps, at the end, and when Ctrl-C asked the run to stop (always a whole step)."""
    progress = run.progress(end, trainer.step)
    while trainer.step < end:
        record = {"step": trainer.step + 1, **trainer.train_step(next_batch())}
        if heldout is not None and eval_every and trainer.step % eval_every == 0:
            record["heldout"] = trainer.evaluate(heldout())
            on_heldout(trainer.step, record["heldout"])
        run.log(record)
        progress(trainer.step, heldout=record.get("heldout"), loss=record["loss"], text=record["text"],
                 audio=record["audio"])
        stopping = run.stop_requested()
        if trainer.step % save_every == 0 or trainer.step == end or stopping:
            save()
        if stopping:
            return


def data_folders(options: LMTrainingOptions) -> List[Path]:
    """The dataset folders of ``options.data`` (one folder, or several)."""
    return [Path(options.data)] if isinstance(options.data, (str, os.PathLike)) else [Path(d) for d in options.data]


def _data(options: LMTrainingOptions, config: LMConfig, tokenizer: TextTokenizer, frame_rate: float):
    """(training files, held-out files, their segment sources); the held-out source is None without files."""
    frames = max(1, round(options.segment_seconds * frame_rate))
    per_channel = config.n_q // 2  # the model's codebooks, then the user's
    # Several datasets are one: their files together, in the order given (one folder: as it always was), each file
    # as likely as any other; the held-out losses are over every folder's held-out files (a fine-tune on a new
    # corpus beside its base's shows there what it forgets).
    train, heldout = [], []
    for data in data_folders(options):
        train += load_conversations(data / "train.jsonl", per_channel, frame_rate, card=config.card)
        if options.eval_every and (data / "heldout.jsonl").is_file():
            heldout += load_conversations(data / "heldout.jsonl", per_channel, frame_rate, card=config.card)
    note = check_one_codec(train + heldout)
    if note:
        print(note, file=sys.stderr)
    source = SegmentSource(train, tokenizer.encode, frames, frame_rate, options.segments, options.seed)
    held = SegmentSource(heldout, tokenizer.encode, frames, frame_rate, "consecutive") if heldout else None
    return train, heldout, source, held


def _model(options: LMTrainingOptions, config: LMConfig, device: torch.device, base: Optional[Base]
           ) -> "tuple[MoshiLM, str]":
    """The model to train and what it is, for people. Full training: float32 (random, or ``base``'s weights).
    LoRA: ``base`` frozen in the device's dtype (bfloat16 on CUDA, as Kyutai trains; float32 on the CPU), its linear
    weights quantized as ``options.quantize`` asks, one fresh adapter (``fresh_adapter``) in float32 (the weights
    AdamW updates; bf16 autocast computes with them on CUDA)."""
    if options.lora:
        dtype = default_dtype(device)
        model = MoshiLM.from_checkpoint(base.lm, config, device=device, dtype=dtype, quantize=options.quantize)
        add_training_adapter(model, options.lora_rank, options.lora_scaling, options.seed)
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad) + sum(
            b.numel() for b in model.buffers() if b.dtype in (torch.int8, torch.float8_e4m3fn))
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return model, (f"a LoRA adapter (rank {options.lora_rank}, scaling {options.lora_scaling}, "
                       f"{trained:,} parameters) on {base.what} ({frozen / 1e6:.1f} M frozen parameters, "
                       f"{model.quantization if model.quantization != 'none' else str(dtype).replace('torch.', '')})")
    if base is not None and not options.resume:
        model = MoshiLM.from_checkpoint(base.lm, config, device=device, dtype=torch.float32)
        if model.quantization != "none":  # its codes are not parameters: full fine-tuning would train only the rest
            raise UsageError(f"{base.lm} holds {model.quantization} weights, which full fine-tuning cannot "
                             "train: start from the full-precision file (or train a LoRA adapter: --lora)")
        return model, f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters from {base.what}"
    model = MoshiLM.random(config, seed=options.seed, device=device, dtype=torch.float32)
    return model, f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters" + (
        "" if options.resume else " from random weights")


def plot_losses(log_path: str, png: str) -> None:
    """Training and held-out losses against steps (text and audio separately)."""
    # no pyplot: the process's matplotlib backend is left alone
    from matplotlib.figure import Figure  # noqa: PLC0415 - slow to import, and only the plot needs it

    records = []
    with open(log_path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except ValueError:
                pass
    if not records:
        return
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, ("text", "audio")):
        steps = [r["step"] for r in records]
        values = [r[key] for r in records]
        window = max(1, len(values) // 100)
        smooth = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                  for i in range(len(values))]
        ax.plot(steps, values, color="0.8", linewidth=0.6, label="train (each step)")
        ax.plot(steps, smooth, color="C0", label=f"train (mean of {window})")
        held = [(r["step"], r["heldout"][key]) for r in records if "heldout" in r]
        if held:
            ax.plot(*zip(*held), "o-", color="C1", markersize=3, label="held-out")
        ax.set_xlabel("step")
        ax.set_ylabel(f"{key} loss (weighted cross-entropy)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=90)


def _lora_run(options: LMTrainingOptions, run: RunFolder) -> "tuple[LMTrainingOptions, Optional[Base]]":
    """The options and the base of this call: on resume, a LoRA run's base, rank, scaling and quantization are the
    run's (``base.json``), whatever this call says; a new run checks that the LoRA options go together."""
    if options.resume:
        try:
            with open(run.file(BASE), encoding="utf-8") as f:
                saved = json.load(f)
        except FileNotFoundError:
            if options.lora:
                raise UsageError(f"{options.out} holds a full training run, not a LoRA run: resume it without "
                                 "--lora") from None
            return options, None
        except (OSError, ValueError) as e:
            raise UsageError(f"{run.file(BASE)}: not readable ({e})") from None
        options = replace(options, lora=True, quantize=saved.get("quantize"), lora_rank=int(saved["lora_rank"]),
                          lora_scaling=float(saved["lora_scaling"]))
        return options, Base(saved["lm"], None, None, saved.get("what", saved["lm"]))
    if options.quantize not in (None, *QUANTIZE):
        raise UsageError(f"--quantize {options.quantize}: expected one of {', '.join(QUANTIZE)}")
    if options.lora and not options.init:
        raise UsageError("--lora adapts a model: name it with --init (an LM checkpoint, 'default' for the shipped "
                         "model, or a Hugging Face repository in the local cache)")
    if options.quantize and not options.lora:
        raise UsageError("--quantize freezes the base's weights in a format full fine-tuning cannot train: it goes "
                         "with --lora")
    return options, resolve_init(options.init) if options.init else None


def _and(items: List[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def check_resumed_options(options: LMTrainingOptions, saved: Optional[dict]) -> None:
    """A UsageError naming the run-shaping options (``RUN_SHAPING``) this call gives other values than the run was
    planned with (``saved``: the options its checkpoint holds); options an older run did not save are not checked.
    Taking this call's values would change the run silently: another --steps replans the learning-rate schedule
    (or ends the run at once), another --seed or --batch-size another data order."""
    saved = saved or {}
    differ = [name for name in RUN_SHAPING if name in saved and saved[name] != getattr(options, name)]
    if differ:
        def given(values) -> str:
            return _and([f"--{name.replace('_', '-')} {values(name)}" for name in differ])

        raise UsageError(f"--resume: this run was planned with {given(lambda name: saved[name])}; this call gives "
                         f"{given(lambda name: getattr(options, name))} (give the run's values to go on)")


def train_lm(options: LMTrainingOptions, device: torch.device) -> int:
    """Train (or resume) the run in ``options.out``; returns the step reached. After Ctrl-C the run stops at a
    step boundary, saves it, and raises KeyboardInterrupt."""
    if options.autocast not in AUTOCAST:
        raise UsageError(f"autocast must be one of {', '.join(AUTOCAST)}, got {options.autocast!r}")
    if not 0 <= options.user_acoustic_dropout <= 1:
        raise UsageError(f"user_acoustic_dropout is a share of the segments, from 0 to 1, got "
                         f"{options.user_acoustic_dropout}")
    folders = data_folders(options)
    if not folders:
        raise UsageError("no dataset folder given")
    for folder in folders:  # before the tokenizer, which would otherwise be the first thing found missing
        if not folder.is_dir():
            raise DatasetError(f"{folder}: no such dataset folder")
    data = folders[0]  # the tokenizer's default place, and the codes' frame rate (every file is checked against it)
    run = RunFolder(options.out, options.resume)
    options, base = _lora_run(options, run)
    if options.resume:
        tokenizer_path = run.file(EXPORT_TOKENIZER)
    else:  # the base model's own tokenizer where its files name one (the shipped model, a repository)
        tokenizer_path = options.tokenizer or (base and base.tokenizer) or str(data / EXPORT_TOKENIZER)
    if not os.path.isfile(tokenizer_path):
        raise TokenizerError(f"tokenizer not found: {tokenizer_path} (train one on the dataset's transcripts with "
                         "'duplex train tokenizer')")
    tokenizer = TextTokenizer(tokenizer_path)
    config, resizable = _resolve_config(options, run, base)
    config = _fit_vocabulary(config, tokenizer, resizable and options.init is None)
    frame_rate = codes_frame_rate(data / "train.jsonl")
    train, heldout, source, held = _data(options, config, tokenizer, frame_rate)
    model, what = _model(options, config, device, base)
    trainer, best = LMTrainer(model, options), BestModel(run.file(BEST), options.resume)
    if options.resume:
        state = trainer.load(run)
        check_resumed_options(options, state.get("options"))
        source.position = tuple(state["data_position"])
        print(f"resumed {options.out} at step {trainer.step} (with the run's training options"
              f"{', base and adapter shape' if options.lora else ''}; --stop-at, --save-every, --eval-every, "
              "--export-dtype and --autocast from this call)", file=sys.stderr)
        before = (state.get("options") or {}).get("autocast", "auto")
        if before != options.autocast:  # the precision is one to keep through a run: say when it changes
            print(f"note: --autocast {options.autocast} from here; the run's steps so far used {before}",
                  file=sys.stderr)
    dtype = EXPORT_DTYPES[options.export_dtype]
    sources = f", from {len(folders)} datasets" if len(folders) > 1 else ""
    print(f"training {what} on {sum(c.frames for c in train) / frame_rate / 3600:.2f} h ({len(train)} files, "
          f"{len(heldout)} held out{sources}), segments of {source.segment_frames} frames, {device}"
          f"{', gradient checkpointing' if trainer.checkpointing else ''}", file=sys.stderr)

    def export(folder: str) -> None:
        if options.lora:
            export_adapter(model, folder, tokenizer_path, dtype, options.lora_rank, options.lora_scaling)
        else:
            export_model(model, folder, tokenizer_path, dtype)

    def save() -> None:
        with run.saving():  # the export and the checkpoint together: a second Ctrl-C waits for both
            export(options.out)
            trainer.save(run, {"data_position": list(source.position), "options": asdict(options)})
        plot_losses(run.file("log.jsonl"), run.file("loss.png"))

    end = min(options.steps, options.stop_at) if options.stop_at else options.steps
    started = time.time()
    with run:
        run.open_log(trainer.step)
        if trainer.step == 0:
            if options.lora:  # what --resume loads again
                write_json(run.file(BASE), {"lm": os.path.abspath(base.lm), "what": base.what,
                                            "quantize": options.quantize, "lora_rank": options.lora_rank,
                                            "lora_scaling": options.lora_scaling})
            export(options.out)  # the config is there from the start
        fit(trainer, run, lambda: source.next_batch(options.batch_size), end, save, options.save_every,
            heldout=(lambda: held.all_segments(options.batch_size)) if held else None, eval_every=options.eval_every,
            on_heldout=lambda step, losses: best.offer(step, losses, export))
    written = run.file(LORA_EXPORT if options.lora else EXPORT)
    print(f"step {trainer.step} of {options.steps} after {time.time() - started:.0f} s -> {written} "
          f"(config {run.file(EXPORT_CONFIG)}, tokenizer {run.file(EXPORT_TOKENIZER)}, losses {run.file('loss.png')})",
          file=sys.stderr)
    run.raise_if_interrupted(trainer.step)
    return trainer.step
