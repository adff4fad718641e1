"""GPU memory of the engine, computed from the shapes (``duplex bench memory``; docs/quantization.md, "Memory and
speed"): the LM's weights in each format, the codec's, the engine's fixed state, what one more session adds (its KV
ring, token cache, codec state, inputs and sampling settings), and how many sessions fit on GPUs of common sizes.
On a CUDA device the figures are checked against ``torch.cuda.max_memory_allocated``.

Nothing here allocates the model: the LM, the codec and whole engines are built on PyTorch's meta device (shapes and
dtypes, no storage), so a 7B is computed on any machine in a second. Weight bytes are summed over the LM's tensors
as the format stores them (``MoshiLM.linear_weights`` as codes + row maxima + kernel scales, everything else in the
compute dtype); the ring bytes come from the attention shapes; the rest of a session's state is the difference
between meta engines of one and two slots, so whatever state the engine holds is counted, as it holds it.
"""

from __future__ import annotations

import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from codec import SHIPPED_CONFIG, Mimi
from codec.modules.quantized import MODES, SCALE

from ..model.config import LMConfig
from ..model.lm import MoshiLM
from ..runtime.checkpoints import SHIPPED_LM_CONFIG
from ..runtime.engine import Engine, SamplingOptions
from ..runtime.quantization import dtype_name
from .latency import DEFAULT_SEED
from .variants import Variant

GIB = 1 << 30
MIB = 1 << 20
# GPU sizes the table answers for, as the cards are sold (GB), and the memory counted for each (GiB): the nominal
# size, which is what nvidia-smi reports for most of them (an A100 80 GB: 81,920 MiB), except the H200 ("141 GB"),
# whose total nvidia-smi gave on 2026-12-04 (143,771 MiB). Cards with ECC carved out show somewhat less (an L40S:
# 46,068 MiB of 48 GiB); the reserve covers part of that.
CARDS = (("16 GB", 16.0), ("24 GB", 24.0), ("48 GB", 48.0), ("80 GB", 80.0), ("141 GB", 143771 / 1024))
# What the computed figures leave out, kept free on every card: the CUDA context and the loaded kernels (PyTorch's
# CUDA and cuBLAS modules; about 0.5-1 GiB on Hopper with lazy loading, outside the caching allocator and so outside
# max_memory_allocated too), cuBLAS workspaces, the activations of one frame step and CUDA graphs' memory pools, and
# the allocator's rounding and fragmentation. Kyutai's implementation on the H200 (2026-12-04) peaked 0.3 GB above
# its weights + rings + codec at one session and 1.1 GB above at 64, with the same 7B shapes; 2 GiB covers those
# activations and the context with room.
RESERVE_GIB = 2.0
CONFIGS = ("moshi_7b", "personaplex_7b", "shipped")  # what --config names besides other presets and JSON files
WEIGHT_FORMATS = ("none", "int8", "fp8")
RING_DTYPES = ("auto", "fp8")  # auto: the compute dtype (bfloat16 on a GPU)
MEASURE_FRAMES = 4  # frames stepped when measuring on CUDA (the first captures the CUDA graphs)

# The engine's state by where it lives (the first attribute of its path in the engine).
CATEGORIES = {"generator_state.layers": "kv ring", "generator_state": "token cache", "encoder_state": "codec encoder",
              "decoder_state": "codec decoder", "scratch.depth": "depth cache",
              "scratch.depformer_in": "depth input weights"}
OTHER = "inputs, sampling"
# Engine attributes that are not device state: the models (counted as weights) and the host-side staging buffers
# (always in host memory, pinned on CUDA; on the meta device they are the only tensors left on the CPU).
NOT_STATE = ("lm", "mimi", "tokenizer", "_pcm_host", "_active_host", "last_tokens")


def meta_models(config: str = "moshi_7b", dtype: torch.dtype = torch.bfloat16,
                codec_config=None) -> Tuple[MoshiLM, Mimi, str]:
    """(LM in ``dtype``, codec in float32, name) on the meta device. ``config``: 'shipped' (the shipped LM and its
    codec), an LM preset (with the official Mimi, as Kyutai's 7B models use) or an LM config JSON; ``codec_config``
    another codec config."""
    if config == "shipped":
        cfg, codec_config = LMConfig.load(SHIPPED_LM_CONFIG), codec_config or SHIPPED_CONFIG
    else:
        cfg = LMConfig.load(config)
    with torch.device("meta"):
        lm = MoshiLM(cfg).to(dtype)
        mimi = Mimi(codec_config, num_codebooks=max(cfg.model_codebooks, cfg.user_codebooks))
    lm._rebuild_buffers()
    return lm.eval(), mimi.eval(), config if isinstance(config, str) else "custom"


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def scale_dtype(weights: str, compute: torch.dtype, device_type: str) -> torch.dtype:
    """The dtype of a quantized weight's kernel scales (``codec.modules.quantized.kernel_scale``)."""
    if weights == "int8" and compute == torch.float32 and device_type == "cpu":
        return torch.bfloat16
    return compute


def weight_bytes(lm: MoshiLM, weights: str, device_type: str = "cuda") -> Dict[str, int]:
    """The LM's bytes with its linear weights in ``weights`` (none, int8, fp8), from its shapes (``lm``
    unquantized, on any device). ``linear``: the linear weights (codes + float32 row maxima when quantized);
    ``scales``: their kernel scales (not in a file); ``other``: embeddings, norms and every other parameter and
    buffer, in their own dtypes; ``file``: what ``save`` writes (``state_dict``); ``resident``: on the device."""
    if lm.quantization != "none":
        raise ValueError("weight_bytes takes the unquantized model (its shapes)")
    compute = lm.dtype
    linear_ids, linear, scales = set(), 0, 0
    for module, name in lm.linear_weights():
        w = getattr(module, name)
        linear_ids.add(id(w))
        out, inner = w.shape
        if weights == "none":
            linear += _bytes(w)
        else:
            codes = MODES[weights]
            linear += out * inner * codes.itemsize + out * torch.float32.itemsize
            scales += out * scale_dtype(weights, compute, device_type).itemsize
    other = sum(_bytes(p) for p in lm.parameters() if id(p) not in linear_ids)
    persistent = non_persistent = 0
    for module in lm.modules():
        for name, b in module._buffers.items():
            if b is None:
                continue
            if name in module._non_persistent_buffers_set:
                non_persistent += _bytes(b)
            else:
                persistent += _bytes(b)
    return {"linear": linear, "scales": scales, "other": other + persistent + non_persistent,
            "file": linear + other + persistent, "resident": linear + scales + other + persistent + non_persistent}


def quantize_meta(lm: MoshiLM, weights: str, device_type: str = "cuda") -> MoshiLM:
    """``lm.quantize_(weights)`` on the meta device, with the kernel scales in the dtype they take on
    ``device_type`` (``scale_dtype``; the meta device is neither CPU nor CUDA)."""
    lm.quantize_(weights)
    dtype = scale_dtype(weights, lm.dtype, device_type)
    for module, name in lm.linear_weights():
        scale = module._buffers[name + SCALE]
        module._buffers[name + SCALE] = torch.empty(scale.shape, dtype=dtype, device=scale.device)
    return lm


def module_bytes(model: nn.Module) -> int:
    """Parameters and buffers of ``model`` (the codec: float32)."""
    return sum(_bytes(t) for t in model.parameters()) + sum(_bytes(t) for t in model.buffers())


def ring_bytes(lm: MoshiLM, kv_dtype: Optional[torch.dtype] = None) -> int:
    """One session's KV rings: keys and values of every temporal layer, ``context`` positions + the one write slot
    past the ring (``Attention.new_state``), in ``kv_dtype`` (None: the compute dtype); the fp8 ring also keeps one
    scale per stored vector in the compute dtype."""
    compute = lm.dtype
    kv_dtype = kv_dtype or compute
    total = 0
    for layer in lm.layers:
        attn = layer.self_attn
        vectors = attn.num_kv_heads * (lm.config.context + 1)
        total += 2 * vectors * attn.head_dim * kv_dtype.itemsize
        if kv_dtype == MODES["fp8"]:
            total += 2 * vectors * compute.itemsize
    return total


def _tensors(obj, path: str, device: torch.device, seen: set) -> Iterable[Tuple[str, int]]:
    """(path, bytes) of every tensor on ``device`` reachable from ``obj`` through dicts, sequences and duplex's own
    objects (modules excluded: the weights are counted apart), each storage once."""
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        if obj.device == device and storage._cdata not in seen:
            seen.add(storage._cdata)
            yield path, storage.nbytes()
        return
    if isinstance(obj, nn.Module) or obj is None:
        return
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    elif type(obj).__module__.split(".")[0] in ("duplex", "codec"):
        names = list(getattr(obj, "__dict__", {})) + list(getattr(type(obj), "__slots__", ()))
        items = ((name, getattr(obj, name, None)) for name in names)
    else:
        return
    for key, value in items:
        yield from _tensors(value, f"{path}.{key}" if path else str(key), device, seen)


def category(path: str) -> str:
    for prefix in sorted(CATEGORIES, key=len, reverse=True):
        if path == prefix or path.startswith(prefix + "."):
            return CATEGORIES[prefix]
    return OTHER


def state_bytes(engine: Engine) -> Dict[str, int]:
    """The engine's state on its device by ``category`` (``CATEGORIES``; host buffers not counted: ``NOT_STATE``)."""
    out: Dict[str, int] = {}
    for path, nbytes in _tensors({k: v for k, v in vars(engine).items() if k not in NOT_STATE}, "",
                                 engine.device, set()):
        out[category(path)] = out.get(category(path), 0) + nbytes
    return out


def engine_state(lm: MoshiLM, mimi: Mimi,
                 kv_dtype: Optional[torch.dtype] = None) -> Tuple[Dict[str, int], Dict[str, int]]:
    """(fixed, per session) state bytes by category: meta engines of one and two slots, their difference per
    session (``lm`` and ``mimi`` on the meta device, or on any device for small models)."""
    one = state_bytes(Engine(lm, mimi, slots=1, cuda_graphs=False, kv_dtype=kv_dtype))
    two = state_bytes(Engine(lm, mimi, slots=2, cuda_graphs=False, kv_dtype=kv_dtype))
    per = {k: two.get(k, 0) - one.get(k, 0) for k in two}
    fixed = {k: one.get(k, 0) - per.get(k, 0) for k in one}
    return {k: v for k, v in fixed.items() if v}, {k: v for k, v in per.items() if v}


def sessions_fit(card_bytes: float, fixed_bytes: int, per_session_bytes: int, reserve_bytes: float) -> int:
    """Sessions that fit beside the fixed bytes and the reserve (0 when the model alone does not fit)."""
    free = card_bytes - reserve_bytes - fixed_bytes
    return max(0, int(free // per_session_bytes))


def memory_row(config: str, weights: str, ring: str, dtype: torch.dtype = torch.bfloat16,
               device_type: str = "cuda", codec_config=None, reserve_gib: float = RESERVE_GIB,
               cards: Sequence[Tuple[str, float]] = CARDS) -> dict:
    """The computed memory of one engine variant: weights, codec, fixed state, one session's bytes by part, and
    the sessions that fit per card (``CARDS``) after ``reserve_gib``."""
    variant = Variant(weights, ring)
    lm, mimi, _ = meta_models(config, dtype, codec_config)
    w = weight_bytes(lm, weights, device_type)
    ring_alone = ring_bytes(lm, variant.kv_dtype)
    if variant.quantize:  # on meta: the engine's own copies of weights (the stacked depth inputs)
        quantize_meta(lm, variant.quantize, device_type)
    fixed, per = engine_state(lm, mimi, variant.kv_dtype)
    if per.get("kv ring") != ring_alone:  # the two ways of counting must agree (tested; a guard for new state)
        raise AssertionError(f"ring bytes {per.get('kv ring')} from the engine, {ring_alone} from the shapes")
    base = w["resident"] + module_bytes(mimi) + sum(fixed.values())
    session = sum(per.values())
    return {
        "variant": variant.name, "weights": weights, "kv": ring, "ring": dtype_name(variant.kv_dtype or dtype),
        "weight_bytes": w, "codec_bytes": module_bytes(mimi), "fixed_state_bytes": fixed,
        "session_bytes": per, "base_bytes": base, "per_session_bytes": session,
        "sessions_fit": {name: sessions_fit(gib * GIB, base, session, reserve_gib * GIB) for name, gib in cards},
    }


def memory_table(config: str = "moshi_7b", dtype: torch.dtype = torch.bfloat16, device_type: str = "cuda",
                 formats: Sequence[str] = WEIGHT_FORMATS, rings: Sequence[str] = RING_DTYPES, codec_config=None,
                 reserve_gib: float = RESERVE_GIB) -> dict:
    """``memory_row`` for every weight format x ring dtype, as a JSON-ready report."""
    lm, _, name = meta_models(config, dtype, codec_config)
    rows = [memory_row(config, weights, ring, dtype, device_type, codec_config, reserve_gib)
            for weights in formats for ring in rings]
    return {
        "benchmark": "engine GPU memory, computed from the shapes",
        "config": name, "lm_parameters": sum(p.numel() for p in lm.parameters()), "context": lm.config.context,
        "dtype": str(dtype).replace("torch.", ""), "device_type": device_type,
        "cards_gib": dict(CARDS), "reserve_gib": reserve_gib, "date": time.strftime("%Y-%m-%d"),
        "rows": rows, "measured": [],
    }


def computed_bytes(row: dict, batch: int) -> int:
    """What an engine of ``batch`` slots holds by the computation (weights, codec, state; no activations)."""
    return row["base_bytes"] + batch * row["per_session_bytes"]


@torch.no_grad()
def measure_cuda(report: dict, batches: Sequence[int], device: str = "cuda", config: Optional[str] = None,
                 frames: int = MEASURE_FRAMES, progress=None) -> List[dict]:
    """Build each row's engine on ``device`` (random weights of the report's config; 'shipped': the shipped
    files) for every batch size, step ``frames`` frames with CUDA graphs, and record ``memory_allocated`` once built
    and ``max_memory_allocated`` (the models included: all that is allocated), beside the computed bytes. A
    combination that does not fit is recorded as out of memory."""
    dev = torch.device(device)
    config = config or report["config"]
    dtype = getattr(torch, report["dtype"])
    out = []
    for weights in dict.fromkeys(r["weights"] for r in report["rows"]):
        quantize = Variant(weights).quantize
        if config == "shipped":
            from ..runtime.checkpoints import ModelFiles  # noqa: PLC0415 - only to measure the shipped model

            lm, mimi, _ = ModelFiles.default().load(dev, dtype, quantize=quantize)
        else:
            lm = MoshiLM.random(LMConfig.load(config), seed=DEFAULT_SEED, device=dev, dtype=dtype)
            if quantize:
                lm.quantize_(quantize)
            mimi = Mimi.random(None, seed=DEFAULT_SEED, device=dev)
        for row in (r for r in report["rows"] if r["weights"] == weights):
            for batch in batches:
                if progress is not None:
                    progress(f"{row['variant']} batch {batch}")
                out.append(_measure_one(lm, mimi, row, batch, frames))
        del lm, mimi
        torch.cuda.empty_cache()
    report["measured"] = out
    return out


def _measure_one(lm: MoshiLM, mimi: Mimi, row: dict, batch: int, frames: int) -> dict:
    dev = lm.device
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    models = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    result = {"variant": row["variant"], "weights": row["weights"], "ring": row["ring"], "batch_size": batch,
              "computed_bytes": computed_bytes(row, batch), "models_bytes": models,
              "computed_models_bytes": row["weight_bytes"]["resident"] + row["codec_bytes"]}
    engine = None
    try:
        engine = Engine(lm, mimi, slots=batch, cuda_graphs=True, sampling=SamplingOptions(),
                        kv_dtype=Variant(row["weights"], row["kv"]).kv_dtype)
        result["allocated_after_build_bytes"] = torch.cuda.memory_allocated(dev)
        slots = [engine.open(seed=i) for i in range(batch)]
        pcm = (0.05 * np.random.default_rng(0).standard_normal((batch, engine.frame_size))).astype(np.float32)
        for _ in range(frames):
            engine.step({s: pcm[s] for s in slots})
        torch.cuda.synchronize(dev)
        result["peak_bytes"] = torch.cuda.max_memory_allocated(dev)
    except torch.cuda.OutOfMemoryError:
        result["error"] = "out of memory"
    del engine
    torch.cuda.empty_cache()
    return result


def from_latency(report: dict, latency_report: dict) -> List[dict]:
    """The measurements of a ``bench latency`` report on CUDA (each run's ``memory``) beside the computed bytes of
    the same weights and ring, as ``measure_cuda`` records them (into ``report["measured"]``)."""
    rows = {(r["weights"], r["ring"]): r for r in report["rows"]}
    out = []
    for run in latency_report["runs"]:
        q = run.get("quantization", {})
        row = rows.get((q.get("weights"), q.get("kv")))
        if row is None or ("memory" not in run and "error" not in run):
            continue
        batch = run["batch_size"]
        result = {"variant": row["variant"], "weights": row["weights"], "ring": row["ring"], "batch_size": batch,
                  "mode": run["mode"], "computed_bytes": computed_bytes(row, batch)}
        if "memory" in run:
            result["allocated_after_build_bytes"] = run["memory"]["allocated_after_build_bytes"]
            result["peak_bytes"] = run["memory"]["peak_bytes"]
        else:
            result["error"] = run["error"]
        out.append(result)
    report["measured"] = out
    return out


def _gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def _checked(report: dict, row: dict) -> str:
    """The check column: the largest batch measured for this row, peak against computed."""
    done = [m for m in report["measured"] if m["variant"] == row["variant"] and "peak_bytes" in m]
    if not done:
        if any(m["variant"] == row["variant"] for m in report["measured"]):
            return "out of memory"
        return report.get("not_measured", "not measured (no GPU)")
    m = max(done, key=lambda m: m["batch_size"])
    return f"peak {_gib(m['peak_bytes'])} GiB, computed {_gib(m['computed_bytes'])} (batch {m['batch_size']})"


def format_table(report: dict) -> str:
    """The computed table (one row per weight format x ring; GiB, or MiB for a model under 1 GiB), what its
    columns hold, and the measurements beside the computed bytes when there are any."""
    cards = list(report["cards_gib"])
    unit, name = (GIB, "GiB") if max(r["base_bytes"] for r in report["rows"]) >= GIB else (MIB, "MiB")
    lines = [f"# {report['benchmark']} -- {report['config']} ({report['lm_parameters'] / 1e9:.2f} G LM parameters, "
             f"context {report['context']}), LM in {report['dtype']}, codec float32; {report['date']}",
             f"{'weights':>7} {'ring':>8} {'weights':>8} {'codec+':>7} {'session':>8} {'ring':>7} {'other':>6}  "
             + " ".join(f"{c:>6}" for c in cards) + "  checked on a GPU",
             f"{'':>7} {'':>8} {name:>8} {'fixed':>7} {name:>8} {name:>7} {'MiB':>6}  "
             + " ".join(f"{'':>6}" for _ in cards)]
    for row in report["rows"]:
        ring = row["session_bytes"].get("kv ring", 0)
        lines.append(f"{row['weights']:>7} {row['ring']:>8} {row['weight_bytes']['resident'] / unit:>8.2f} "
                     f"{(row['codec_bytes'] + sum(row['fixed_state_bytes'].values())) / unit:>7.2f} "
                     f"{row['per_session_bytes'] / unit:>8.3f} {ring / unit:>7.3f} "
                     f"{(row['per_session_bytes'] - ring) / MIB:>6.1f}  "
                     + " ".join(f"{row['sessions_fit'][c]:>6}" for c in cards) + f"  {_checked(report, row)}")
    first = report["rows"][0]
    parts = ", ".join(f"{k} {v / MIB:.2f} MiB" for k, v in first["session_bytes"].items() if k != "kv ring")
    lines.append(f"weights: the LM on the GPU (codes, float32 row maxima and kernel scales for int8/fp8; embeddings "
                 f"and norms in {report['dtype']}); codec+fixed: the codec's weights and the engine's state shared "
                 f"by all sessions; session: what each session adds, its KV rings ({report['context']} positions, "
                 f"keys and values, every layer) and other state ({parts})")
    lines.append(f"sessions that fit: (card - {report['reserve_gib']:g} GiB reserve for the CUDA context, "
                 "activations and CUDA graph pools - weights - codec+fixed) / session; cards counted as "
                 + ", ".join(f"{c} = {g:.1f} GiB" for c, g in report["cards_gib"].items()))
    if report["measured"]:
        lines.append("measured (torch.cuda): weights ring batch | computed GiB | allocated once built | peak "
                     "(max_memory_allocated) | peak - computed (activations)")
        for m in report["measured"]:
            head = f"  {m['weights']:>5} {m['ring']:>8} {m['batch_size']:>5} | {_gib(m['computed_bytes']):>7}"
            if "error" in m:
                lines.append(f"{head} | {m['error']}")
                continue
            lines.append(f"{head} | {_gib(m['allocated_after_build_bytes']):>7} | {_gib(m['peak_bytes']):>7} | "
                         f"{(m['peak_bytes'] - m['computed_bytes']) / GIB:+.2f}")
    return "\n".join(lines)
