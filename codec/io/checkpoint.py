"""Reading published checkpoints strictly (docs/kyutai-compat.md §1.9 and §2.10.1).

Both the file form (packed attention ``in_proj_weight`` / ``out_proj.weight``, legacy codebook names, folded or
unfolded weight norm) and the in-memory module form (``in_projs.{i}.weight``) are normalised to one canonical
layout, the file form, which is also what the model's ``state_dict()`` produces. Loading is strict: every
missing, unexpected or mis-shaped key is reported in one error.
"""

from __future__ import annotations

import os
import re
from typing import Mapping, Optional, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError
from .files import readable_file, write_atomically

_LEGACY_CODEBOOK = {"inited": "_initialized", "cluster_size": "cluster_usage",
                    "embed_avg": "embedding_sum", "embed_sum": "embedding_sum"}
_PLAIN_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_MODULE_FORM = re.compile(r"^(?P<prefix>.*)\.(?P<kind>in_projs|out_projs)\.(?P<index>\d+)\.weight(?P<scb>_scb)?$")


def read_tensors(path: "str | os.PathLike", containers: Sequence[Sequence[str]] = (("model",),)) -> dict:
    """All tensors of a ``.safetensors`` file, or of a torch pickle (looked up under one of ``containers``)."""
    path = readable_file(path, "checkpoint", CheckpointError)
    kind = checkpoint_format(path)
    if kind == "safetensors":
        try:
            return load_file(path, device="cpu")
        except Exception as e:  # safetensors raises several exception types for truncated/garbled headers
            raise CheckpointError(f"checkpoint {path} is not a readable safetensors file ({type(e).__name__}: {e})") from None
    if kind is None:  # torch.load would unpickle text into errors such as "IndexError: pop from empty list"
        raise CheckpointError(f"checkpoint {path} is neither a safetensors file nor a readable torch checkpoint")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the first line only: torch appends paragraphs of advice about weights_only
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"checkpoint {path} is neither a safetensors file nor a readable torch checkpoint "
                              f"({type(e).__name__}: {reason})") from None
    for chain in containers:
        inner = data
        for key in chain:
            inner = inner.get(key) if isinstance(inner, Mapping) else None
        if isinstance(inner, Mapping):
            data = inner
            break
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"checkpoint {path} does not contain a state dict of tensors")
    return dict(data)


def checkpoint_format(path: "str | os.PathLike") -> Optional[str]:
    """What a file holds by its first bytes, whatever its name: ``"safetensors"`` (an 8-byte header length, then
    the JSON header's ``{``), ``"torch"`` (a zip archive, or a legacy pickle's protocol byte) or None. A path that
    is not a readable regular file is a CheckpointError (``files.readable_file``: a named pipe would block here)."""
    with open(readable_file(path, "checkpoint", CheckpointError), "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"
    return None


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: "str | os.PathLike",
                      metadata: Optional[Mapping[str, str]] = None) -> None:
    """safetensors' ``save_file``, written atomically with normal permissions (``files.write_atomically``)."""
    tensors = dict(tensors)
    write_atomically(path, lambda temporary: save_file(tensors, temporary,
                                                       metadata=dict(metadata) if metadata else None))


def _fold_weight_norm(tensors: dict) -> dict:
    """Replace weight-norm pairs (``weight_g``/``weight_v`` or the parametrization names) by ``weight``."""
    out = dict(tensors)
    for key in list(tensors):
        for g_suffix, v_suffix in ((".weight_g", ".weight_v"),
                                   (".parametrizations.weight.original0", ".parametrizations.weight.original1")):
            if key.endswith(g_suffix):
                base = key[: -len(g_suffix)]
                v_key = base + v_suffix
                if v_key in tensors:
                    g, v = tensors[key].float(), tensors[v_key].float()
                    norm = v.norm(dim=tuple(range(1, v.dim())), keepdim=True)
                    out[base + ".weight"] = g * v / norm
                    del out[key], out[v_key]
    return out


def normalize_keys(tensors: Mapping[str, torch.Tensor]) -> dict:
    """Map any accepted naming to the canonical (file) form."""
    tensors = _fold_weight_norm(dict(tensors))
    out: dict = {}
    packed: dict = {}
    for key, value in tensors.items():
        m = _MODULE_FORM.match(key)
        if m:
            name = "in_proj_weight" if m["kind"] == "in_projs" else "out_proj.weight"
            packed.setdefault(f"{m['prefix']}.{name}{m['scb'] or ''}", {})[int(m["index"])] = value
            continue
        head, _, last = key.rpartition(".")
        if head.endswith("._codebook") and last in _LEGACY_CODEBOOK:
            key = f"{head}.{_LEGACY_CODEBOOK[last]}"
        elif key.endswith(".self_attn.in_proj.weight"):
            key = key[: -len("in_proj.weight")] + "in_proj_weight"
        out[key] = value
    for key, parts in packed.items():
        if sorted(parts) != list(range(len(parts))):
            raise CheckpointError(f"{key}: weight sets {sorted(parts)} are not numbered 0..{len(parts) - 1}")
        out[key] = torch.cat([parts[i] for i in range(len(parts))], dim=0)
    return out


def _listing(title: str, items: list, limit: int) -> str:
    shown = "\n    ".join(items[:limit])
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"\n  {title} ({len(items)}):\n    {shown}{more}"


def check_and_load(model: nn.Module, tensors: Mapping[str, torch.Tensor], what: str, source: str = "",
                   dtype: Optional[torch.dtype] = None, assign: bool = True) -> None:
    """Strictly load canonical-form ``tensors`` into ``model`` (which may live on the meta device).

    Floating tensors are cast to ``dtype`` (default: the dtype of the parameter they replace) and assigned, so a
    model built on the meta device never holds two copies of its weights. ``assign=False`` copies into the
    existing tensors instead (an optimizer holding them keeps working: resuming training).
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mis_shaped = sorted(f"{k}: file {list(tensors[k].shape)}, model {list(expected[k].shape)}"
                        for k in set(expected) & set(tensors) if tuple(tensors[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or mis_shaped:
        where = f" {source}" if source else ""
        matched = len(set(expected) & set(tensors))
        if matched < len(expected) // 2:
            head = (f"checkpoint{where} is not a {what} checkpoint: only {matched} of the {len(expected)} expected "
                    f"keys are present")
        else:
            head = f"checkpoint{where} does not match the {what} model"
        limit = 5 if matched < len(expected) // 2 else 10  # another model's file: a few names say enough
        raise CheckpointError(head
                              + (_listing("missing keys", missing, limit) if missing else "")
                              + (_listing("unexpected keys", unexpected, limit) if unexpected else "")
                              + (_listing("mis-shaped keys", mis_shaped, limit) if mis_shaped else ""))
    broken = sorted(k for k, v in tensors.items() if v.is_floating_point() and not _finite(v))
    if broken:  # a diverged training run, a damaged file: it would only ever produce NaN audio or tokens
        where = f" {source}" if source else ""
        raise CheckpointError(f"checkpoint{where} holds non-finite values (NaN or inf) in {len(broken)} of "
                              f"{len(tensors)} tensors, e.g. {', '.join(broken[:3])}")
    cast = {}
    for key, value in tensors.items():
        # Quantized codes (int8, float8) and their float32 row maxima (``*_scb``) keep the model's own dtypes.
        plain = expected[key].dtype in _PLAIN_FLOATS and not key.endswith("_scb")
        target = dtype if dtype is not None and plain else expected[key].dtype
        cast[key] = value.to(target) if value.is_floating_point() and expected[key].is_floating_point() else value
    model.load_state_dict(cast, strict=True, assign=assign)


def _finite(value: torch.Tensor) -> bool:
    if value.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):  # no isfinite kernel for float8
        value = value.float()
    return bool(torch.isfinite(value).all())


def write_checkpoint_set(folder: str, weights_name: str, weights: Mapping[str, torch.Tensor], state: dict,
                         step: int, state_name: str = "trainer.pt") -> None:
    """A training checkpoint: the weights (safetensors, stamped with ``step``) and the trainer's state (a torch
    file holding ``step``). Both are written whole to temporary files before either is renamed into place, and
    the two renames follow each other at once, so a save cut short while writing (a kill, an exception) leaves the
    previous pair as it was. The weights are renamed first: ``state_name`` is what marks a folder as holding a run,
    so a first save cut short between the renames leaves no run behind, and the stamps let ``read_checkpoint_set``
    tell such a pair (weights of one step, optimizer of another) from a whole one."""
    os.makedirs(folder, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in weights.items()}

    def write_both(state_temporary: str) -> None:
        torch.save({**state, "step": step}, state_temporary)
        # the weights' own write_atomically writes them whole and renames them; the state's rename comes next
        write_safetensors(tensors, os.path.join(folder, weights_name), metadata={"step": str(step)})

    write_atomically(os.path.join(folder, state_name), write_both)


def read_checkpoint_set(folder: str, weights_name: str, state_name: str = "trainer.pt") -> "tuple[dict, dict]":
    """(weights, state) of a checkpoint written by ``write_checkpoint_set``; a CheckpointError names a missing or
    broken file, and a pair from two different steps."""
    weights_path, state_path = os.path.join(folder, weights_name), os.path.join(folder, state_name)
    tensors = read_tensors(weights_path)
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=False)
    except Exception as e:  # missing, truncated, not a torch file
        raise CheckpointError(f"{state_path}: cannot read the trainer state ({type(e).__name__}: {e})") from None
    with safe_open(weights_path, "pt") as f:
        saved_step = (f.metadata() or {}).get("step")
    if saved_step is not None and saved_step != str(state.get("step")):
        raise CheckpointError(f"{folder}: {weights_name} is from step {saved_step} but {state_name} from step "
                              f"{state.get('step')} (a save was cut short): resuming would pair weights with another "
                              f"step's optimizer; start a new run from {weights_name}, or restore both files")
    return tensors, state
