"""LoRA adapters in Kyutai's layout (docs/lora.md; the facts: docs/lora-facts.md).

Kyutai's ``moshi`` wraps every ``nn.Linear`` of the LM in a ``LoRALinear``: ``y = x W^T + scaling * (x A^T) B^T``
with A [rank, in], B [out, rank] and ``scaling`` the raw ``lora_scaling`` (not alpha / rank). Its attention layers
hold one linear per depth step (``in_projs.{k}``, ``out_projs.{k}``), each with its own adapter; duplex keeps the
published packed weights (one matrix, a row block per step), so an adapter here is stored per weight with a step
axis: A [n, steps, rank, in], B [n, steps, out / steps, rank], for n adapters at once.

Adapters are data beside the weights, never a change of them: ``weight_of`` (``codec.modules.quantized``) gives the
forward code an ``AdaptedWeight`` view that adds the adapter's product to the base product (plain or quantized
weights alike). Several adapters share one base model: index 0 of the bank is "no adapter" (zeros), and
``MoshiLM.route_adapters(rows)`` gives each batch row (each engine slot) its adapter, so one batched step serves
several personas. With ``rows`` None (one adapter: training, a generator) every row runs adapter 1, as Kyutai's
``LoRALinear`` computes it, operation for operation.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from codec.io.checkpoint import read_tensors
from codec.modules.linear import fast_linear
from codec.modules.quantized import dense
from codec.modules.transformer import Attention

from ..errors import LoRAError
from .depformer import DepthAttention

LORA = "_lora"  # the adapter bank of weight NAME is the submodule NAME_lora of the weight's module

# Kyutai's module-form adapter keys (what moshi-finetune writes) and the stacked forms its attention hook splits.
_MODULE_FORM = re.compile(r"^(?P<prefix>.*?)\.?(?P<kind>in_projs|out_projs)\.(?P<step>\d+)\.lora_(?P<ab>[AB])\.weight$")
_STACKED_FORM = re.compile(r"^(?P<prefix>.*?)\.?(?P<kind>in_proj|out_proj)\.lora_(?P<ab>[AB])\.weight$")
_PLAIN_FORM = re.compile(r"^(?P<prefix>.*)\.lora_(?P<ab>[AB])\.weight$")


@dataclass
class LoRAFile:
    """One adapter as read from a file: for each adapted weight (module path, weight name) its A [steps, rank, in]
    and B [steps, out, rank]; ``extra``: base tensors the file replaces (moshi-finetune's ``ft_embed`` writes the
    embedding tables); ``rank``, ``scaling``, ``name`` (for people: the file)."""

    pairs: Dict[Tuple[str, str], Tuple[torch.Tensor, torch.Tensor]]
    rank: int
    scaling: float
    name: str = ""
    extra: Dict[str, torch.Tensor] = field(default_factory=dict)


class Adapters(nn.Module):
    """The adapter bank of one weight [out, in] with ``steps`` row blocks: A [n, steps, rank, in], B [n, steps,
    out / steps, rank], ``scaling`` [n]; adapter 0 is none (zeros). ``rows`` (set by ``MoshiLM.route_adapters``, not
    state): the adapter index of each batch row, or None for adapter 1 on every row."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, scaling: torch.Tensor, first: int = 1):
        super().__init__()
        self.A = nn.Parameter(a, requires_grad=False)
        self.B = nn.Parameter(b, requires_grad=False)
        self.register_buffer("scaling", scaling, persistent=False)
        self.scales: List[float] = [float(s) for s in scaling.tolist()]
        self.rows: Optional[torch.Tensor] = None
        # The adapter rows None runs: 1 in a bank with the "none" entry; 0 in a training bank, which holds only the
        # adapter being trained (no zero entry to carry gradients and optimizer moments for)
        self.first = first

    @property
    def steps(self) -> int:
        return self.A.shape[1]

    def view(self, base):
        return AdaptedWeight(base, self, 0, self.steps)


class AdaptedWeight:
    """A weight plus its adapters (steps ``first`` .. ``first + steps`` of the bank), as ``fast_linear`` takes it."""

    __slots__ = ("base", "bank", "first", "count")

    def __init__(self, base, bank: Adapters, first: int, count: int):
        self.base, self.bank, self.first, self.count = base, bank, first, count

    @property
    def shape(self) -> torch.Size:
        return self.base.shape

    @property
    def device(self) -> torch.device:
        return self.base.device

    def __getitem__(self, rows: slice) -> "AdaptedWeight":
        """A row block of whole steps (the depth transformer's per-step weights)."""
        per_step = self.base.shape[0] // self.count
        start, stop, _ = rows.indices(self.base.shape[0])
        if start % per_step or (stop - start) % per_step:
            raise ValueError(f"rows {start}:{stop} of an adapted weight must be whole steps of {per_step} rows")
        return AdaptedWeight(self.base[rows], self.bank, self.first + start // per_step, (stop - start) // per_step)

    def _ab(self):
        a = self.bank.A[:, self.first:self.first + self.count]
        b = self.bank.B[:, self.first:self.first + self.count]
        return a, b

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The merged weight ``W + scaling * B @ A`` per step (adapter 1; what fusing computes)."""
        a, b = self._ab()
        w = dense(self.base, dtype)
        i = self.bank.first
        delta = torch.matmul(b[i].to(dtype), a[i].to(dtype)) * self.bank.scales[i]  # [steps, out, in]
        return w + delta.reshape(w.shape)

    def linear(self, x: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        y = fast_linear(x, self.base, bias)
        a, b = self._ab()
        rows = self.bank.rows
        if rows is None:  # one adapter for every row: Kyutai's LoRALinear, operation for operation
            i = self.bank.first
            if self.count == 1:
                return y + F.linear(F.linear(x, a[i, 0]), b[i, 0]) * self.bank.scales[i]
            hidden = torch.einsum("...i,sri->...sr", x, a[i])
            delta = torch.einsum("...sr,sor->...so", hidden, b[i]) * self.bank.scales[i]
            return y + delta.reshape(y.shape)
        # One adapter per batch row (engine slots): gather each row's A and B; adapter 0 adds exact zeros.
        n = rows.shape[0]
        xs = x.reshape(n, -1, x.shape[-1])  # [rows, T, in]
        a_rows, b_rows = a.index_select(0, rows), b.index_select(0, rows)  # [rows, steps, r, in], [rows, steps, o, r]
        hidden = torch.einsum("nti,nsri->ntsr", xs, a_rows)
        delta = torch.einsum("ntsr,nsor->ntso", hidden, b_rows) * self.bank.scaling.index_select(0, rows)[:, None,
                                                                                                        None, None]
        return y + delta.reshape(y.shape)


def adapted_weights(lm) -> Dict[str, Tuple[nn.Module, str, int]]:
    """Kyutai's module path of every linear it adapts -> (duplex module, weight name, steps): its temporal attention
    (``in_projs.0`` / ``out_projs.0``), its depth attention (``in_projs.{k}`` / ``out_projs.{k}``: one weight with a
    row block per step here), feed-forwards, heads, depth inputs, low-rank embedding projections."""
    out = {}
    names = dict(lm.named_modules())
    for path, module in names.items():
        if isinstance(module, (Attention, DepthAttention)):
            steps = module.steps if isinstance(module, DepthAttention) else 1
            out[f"{path}.in_projs"] = (module, "in_proj_weight", steps)
            out[f"{path}.out_projs"] = (module.out_proj, "weight", steps)
        elif isinstance(module, nn.Linear) and not path.endswith(".out_proj"):
            out[path] = (module, "weight", 1)
    return out


def read_lora(path: "str | os.PathLike", rank: Optional[int] = None, scaling: Optional[float] = None,
              targets: Optional[Dict[str, Tuple[nn.Module, str, int]]] = None) -> LoRAFile:
    """An adapter file in Kyutai's layout (moshi-finetune's ``lora.safetensors``; module form or the stacked
    ``in_proj`` / ``out_proj`` forms), with ``rank`` and ``scaling`` from its ``config.json`` when not given
    (Kyutai's defaults otherwise: 128 and 2.0). ``targets`` (``adapted_weights(lm)``) checks every key names a weight
    of that model, with the step counts to stack."""
    path = os.fspath(path)
    if rank is None or scaling is None:  # the config moshi-finetune writes beside it; else the file tells the rank
        config = lora_config_beside(path)
        rank = rank if rank is not None else config.get("lora_rank")
        scaling = scaling if scaling is not None else float(config.get("lora_scaling", 2.0))
    try:
        tensors = read_tensors(path)
    except Exception as e:  # a missing or broken file: one line
        raise LoRAError(f"{path}: not a readable adapter file ({e})") from None
    halves: Dict[str, Dict[str, Dict[int, torch.Tensor]]] = {}
    extra = {}
    for key, value in tensors.items():
        m = _MODULE_FORM.match(key)
        if m:
            halves.setdefault(f"{m['prefix']}.{m['kind']}", {}).setdefault(m["ab"], {})[int(m["step"])] = value
            continue
        m = _STACKED_FORM.match(key)
        if m:  # [steps * rank, in] / [steps * out, rank]: split per step below, when the steps are known
            halves.setdefault(f"{m['prefix']}.{m['kind']}s", {}).setdefault(m["ab"], {})[-1] = value
            continue
        m = _PLAIN_FORM.match(key)
        if m:
            halves.setdefault(m["prefix"], {}).setdefault(m["ab"], {})[0] = value
            continue
        if "lora" in key:
            raise LoRAError(f"{path}: {key} is not an adapter key in Kyutai's layout")
        extra[key] = value  # a base tensor the adapter replaces (ft_embed: embedding tables)
    pairs = {}
    for name, ab in sorted(halves.items()):
        if set(ab) != {"A", "B"}:
            raise LoRAError(f"{path}: {name} has lora_{''.join(ab)} without its pair")
        target = None if targets is None else targets.get(name)
        if targets is not None and target is None:
            raise LoRAError(f"{path}: {name} is not a linear layer of this model (another model's adapter?)")
        steps = target[2] if target else max(len(ab["A"]), 1)
        a, b = (_stacked(ab[h], steps, path, name, h) for h in "AB")
        rank = a.shape[1] if rank is None else int(rank)
        if a.shape[1] != rank or b.shape[2] != rank:
            raise LoRAError(f"{path}: {name} has rank {a.shape[1]}, its config says lora_rank {rank}")
        pairs[name] = (a, b)
    if not pairs:
        raise LoRAError(f"{path}: no adapter (lora_A / lora_B) keys")
    return LoRAFile(pairs, rank, scaling, name=lora_name(path), extra=extra)


def lora_name(path: "str | os.PathLike") -> str:
    """The name an adapter file goes by (what a session picks, what ``/api/stats`` shows): the file's stem, or for
    moshi-finetune's ``lora.safetensors`` its folder's name; moshi-finetune's checkpoint layout
    (``RUN/checkpoints/checkpoint_000500/consolidated/lora.safetensors``) is named after its run (``RUN``), since
    every one of its folders is called ``consolidated``, and ``duplex train lm --lora``'s ``RUN/best/lora.safetensors``
    after its run too. Known from the path alone, before the file is read."""
    path = os.path.abspath(os.fspath(path))
    if os.path.basename(path) != "lora.safetensors":
        return os.path.splitext(os.path.basename(path))[0]
    folder = os.path.dirname(path)
    if os.path.basename(folder) == "best":  # duplex train lm --lora's best held-out adapter: RUN/best/
        return os.path.basename(os.path.dirname(folder)) or "best"
    if os.path.basename(folder) != "consolidated":
        return os.path.basename(folder)
    checkpoint = os.path.dirname(folder)
    checkpoints = os.path.dirname(checkpoint)
    if re.fullmatch(r"checkpoint_\d+", os.path.basename(checkpoint)) and os.path.basename(checkpoints) == "checkpoints":
        return os.path.basename(os.path.dirname(checkpoints)) or os.path.basename(checkpoint)
    return os.path.basename(checkpoint) or "consolidated"


def _stacked(parts: Dict[int, torch.Tensor], steps: int, path: str, name: str, half: str) -> torch.Tensor:
    """[steps, ...] from the per-step tensors (or from one stacked tensor, key -1)."""
    if -1 in parts:
        whole = parts[-1]
        if whole.shape[0] % steps:
            raise LoRAError(f"{path}: {name} lora_{half} has {whole.shape[0]} rows, not a multiple of {steps} steps")
        return whole.reshape(steps, whole.shape[0] // steps, whole.shape[1])
    if sorted(parts) != list(range(steps)):
        raise LoRAError(f"{path}: {name} has adapters for steps {sorted(parts)}, expected 0..{steps - 1}")
    return torch.stack([parts[k] for k in range(steps)])


def lora_config_beside(path: "str | os.PathLike") -> dict:
    """The ``config.json`` beside an adapter file (moshi-finetune writes one), or {}."""
    beside = os.path.join(os.path.dirname(os.fspath(path)) or ".", "config.json")
    if not os.path.isfile(beside):
        return {}
    try:
        with open(beside, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ------------------------------------------------------------------------------------------ on the model
def attach(lm, lora: LoRAFile, training: bool = False) -> int:
    """Add ``lora`` to ``lm``'s adapter banks (created on the first one); returns its index (1, 2, ...). Every linear
    Kyutai adapts must have its pair (as Kyutai's loader requires); banks of several adapters are padded to the
    largest rank with zeros (which add exact zeros). ``extra`` base tensors (ft_embed) can only come with the
    first adapter, and replace the model's (Kyutai's loader does the same). ``training``: the model's only adapter,
    in banks without the "none" entry (``Adapters.first``), so its gradients and optimizer state are the adapter's
    size; such a model cannot take another adapter or route rows."""
    targets = adapted_weights(lm)
    missing = sorted(set(targets) - set(lora.pairs))
    unknown = sorted(set(lora.pairs) - set(targets))
    if missing or unknown:
        what = (f"no adapter for {len(missing)} of its {len(targets)} linear layers, e.g. {missing[0]}" if missing
                else f"{unknown[0]} is not a linear layer of this model")
        raise LoRAError(f"adapter {lora.name}: {what} (an adapter for another model?)")
    n = len(adapter_names(lm))
    label = lora.name or f"adapter {n + 1}"
    if label in adapter_names(lm) or label == "none":  # sessions pick adapters by name; "none" is the base model
        raise LoRAError(f"adapter {label!r}: " + ("'none' names the base model" if label == "none" else
                        "the model already has an adapter of that name") + " (rename its file or folder)")
    if lora.extra:
        if n:
            raise LoRAError(f"adapter {lora.name} also replaces {len(lora.extra)} base tensors (moshi-finetune's "
                            "ft_embed, e.g. the embedding tables): it cannot share a model with other adapters")
        state = lm.state_dict()
        bad = [k for k in lora.extra if k not in state or state[k].shape != lora.extra[k].shape]
        if bad:
            raise LoRAError(f"adapter {lora.name}: {bad[0]} does not match this model's tensor")
    dtype, device = lm.dtype, lm.device
    for path, (module, name, steps) in targets.items():
        a, b = (t.to(device=device, dtype=dtype) for t in lora.pairs[path])
        if a.shape[0] != steps or a.shape[2] != getattr(module, name).shape[1] or \
                b.shape[1] * steps != getattr(module, name).shape[0]:
            raise LoRAError(f"adapter {lora.name}: {path} has shapes {list(a.shape)} / {list(b.shape)}, which do "
                            f"not fit the weight {list(getattr(module, name).shape)} (an adapter for another model?)")
        bank = module._modules.get(name + LORA)
        if bank is not None and bank.first == 0:
            raise LoRAError("this model's adapter is being trained: it takes no other adapter")
        if training:
            if n:
                raise LoRAError("an adapter to train must be the model's only one")
            module.add_module(name + LORA, Adapters(a[None], b[None], torch.tensor([lora.scaling], device=device,
                                                                                   dtype=dtype), first=0))
            continue
        if bank is None:
            zeros_a, zeros_b = torch.zeros_like(a), torch.zeros_like(b)
            bank = Adapters(torch.stack([zeros_a, a]), torch.stack([zeros_b, b]),
                            torch.tensor([0.0, lora.scaling], device=device, dtype=dtype))
            module.add_module(name + LORA, bank)
            continue
        rank = max(bank.A.shape[2], a.shape[1])
        grown_a = _pad_rank(bank.A.data, rank, dim=2)
        grown_b = _pad_rank(bank.B.data, rank, dim=3)
        new = Adapters(torch.cat([grown_a, _pad_rank(a[None], rank, dim=2)]),
                       torch.cat([grown_b, _pad_rank(b[None], rank, dim=3)]),
                       torch.cat([bank.scaling, torch.tensor([lora.scaling], device=device, dtype=dtype)]))
        new.rows = bank.rows
        module.add_module(name + LORA, new)  # replaces the smaller bank
    if lora.extra:
        with torch.no_grad():
            for key, value in lora.extra.items():
                lm.get_parameter(key).copy_(value)
    lm._adapter_names = adapter_names(lm) + [label]
    return n + 1


def _pad_rank(t: torch.Tensor, rank: int, dim: int) -> torch.Tensor:
    if t.shape[dim] == rank:
        return t
    pad = list(t.shape)
    pad[dim] = rank - t.shape[dim]
    return torch.cat([t, torch.zeros(pad, device=t.device, dtype=t.dtype)], dim=dim)


def adapter_names(lm) -> List[str]:
    """The adapters on ``lm``, in index order (index i + 1 is names[i]; 0 is none)."""
    return list(getattr(lm, "_adapter_names", []))


def banks(lm):
    for module in lm.modules():
        if isinstance(module, Adapters):
            yield module


def route(lm, rows: Optional[torch.Tensor]) -> None:
    """Give each batch row its adapter: ``rows`` int64 [batch] (0: none), kept by reference (the engine writes it
    per slot); None: adapter 1 on every row."""
    for bank in banks(lm):
        if bank.first == 0 and rows is not None:

            raise LoRAError("a model whose adapter is being trained has no per-row adapters")
        bank.rows = rows


def fuse(lm) -> None:
    """Merge ``lm``'s one adapter into its weights, as Kyutai's ``fuse_lora`` does: ``W + scaling * (B @ A)`` in
    the model's dtype, per step block, then drop the banks. Weights must not be quantized (fuse first, then
    quantize)."""
    names = adapter_names(lm)
    if len(names) != 1:
        raise LoRAError(f"fusing needs exactly one adapter on the model, it has {len(names)}")
    if lm.quantization != "none":
        raise LoRAError(f"an adapter cannot be fused into {lm.quantization} weights: fuse it first, then quantize")
    with torch.no_grad():
        for path, (module, name, steps) in adapted_weights(lm).items():
            bank = module._modules.pop(name + LORA)
            weight = getattr(module, name)
            per_step = weight.shape[0] // steps
            for k in range(steps):
                block = weight[k * per_step:(k + 1) * per_step]
                i = bank.first
                block.copy_(block + bank.scales[i] * (bank.B[i, k] @ bank.A[i, k]))
    lm._adapter_names = []


def trainable(lm) -> List[nn.Parameter]:
    """The parameters LoRA training updates: every bank's A and B (a training bank's: ``attach(training=True)``),
    with gradients on; the base model's parameters get none."""
    params = []
    for p in lm.parameters():
        p.requires_grad_(False)
    for bank in banks(lm):
        bank.A.requires_grad_(True)
        bank.B.requires_grad_(True)
        params += [bank.A, bank.B]
    return params


def adapter_state(lm, index: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Adapter ``index`` (default the first: 1, or a training bank's only one) in Kyutai's module form
    (moshi-finetune's ``lora.safetensors`` keys): per step ``{path}.{k}.lora_A.weight`` for the attention
    projections, ``{path}.lora_A.weight`` for the other linears."""
    out = {}
    for path, (module, name, steps) in adapted_weights(lm).items():
        bank = module._modules[name + LORA]
        index = bank.first if index is None else index
        for k in range(steps):
            key = f"{path}.{k}" if path.endswith((".in_projs", ".out_projs")) else path
            out[f"{key}.lora_A.weight"] = bank.A[index, k].detach().contiguous()
            out[f"{key}.lora_B.weight"] = bank.B[index, k].detach().contiguous()
    return out
