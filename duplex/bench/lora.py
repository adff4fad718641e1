"""``duplex bench lora``: LoRA training steps on a random model (issue 26, deliverable 5: "run a few real steps with
random 7B weights and record memory and step time"), as ``duplex train lm --lora`` takes them: the base frozen in
the device's dtype (bfloat16 on CUDA), its linear weights int8, fp8 or unquantized, one fresh adapter in float32
(``training.lm.add_training_adapter``), gradient checkpointing, AdamW, bf16 autocast on CUDA (``LMTrainer``), on
batches of random codes. Reports the step time (median and largest after the warm-up steps), frames per second,
the peak memory (``torch.cuda.max_memory_allocated`` and ``max_memory_reserved``, on CUDA) and beside it the memory
docs/training.md computes from the shapes for the same configuration (``lora_memory``).

The random model is built directly in its final form on the device (``random_lm``): a quantized 7B never exists in
float32 or bfloat16 anywhere, so an int8 7B builds in seconds on a GPU (8 GB) and a reduced one in seconds on a CPU.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Dict, List, Optional, Union

import torch

from codec.modules.quantized import MODES, SCB, refresh_scales
from codec.utils.stats import describe_device, percentile

from ..model import lora as model_lora
from ..model.config import LMConfig
from ..model.lm import MoshiLM, default_dtype
from .memory import weight_bytes

WEIGHTS = ("int8", "fp8", "none")  # the base's linear weights
STEPS, WARMUP = 5, 1
RANK, SCALING = 64, 2.0  # moshi-finetune's LoraArgs
SEGMENT_SECONDS = 10.0
LR = 1e-4  # moshi-finetune's default (the value does not change the step's time or memory)
FRAME_RATE = 12.5
GB = 1e9  # docs/training.md's memory table is in GB
# docs/training.md, "Memory (Moshi 7B), computed from the shapes": what the computed figure assumes beside the shapes.
CONTEXT_BYTES = 1.5e9  # the CUDA context and allocator slack (assumed; outside max_memory_allocated)
# The activations of one frame with checkpointing on, beyond the layer inputs checkpointing keeps: the heads'
# logits, one layer's recomputation, autocast copies; measured on the CPU at the 7B's widths (1 temporal and 1 depth
# layer: 0.65 MB per frame), scaled by the heads' width (text + audio vocabulary) for other shapes.
WORKING_BYTES_PER_FRAME_7B = 0.65e6
HEADS_7B = 32000 + 8 * 2048


def random_lm(config: Union[str, LMConfig, None] = "moshi_7b", weights: str = "int8",
              device: Union[str, torch.device] = "cpu", dtype: Optional[torch.dtype] = None,
              seed: int = 0) -> MoshiLM:
    """A random LM of ``config``'s shapes with its linear weights in ``weights`` (``"int8"``, ``"fp8"``, ``"none"``),
    the rest in ``dtype`` (default: the device's, ``default_dtype``), built directly in that form on ``device``:
    quantized weights are random codes (uniform over the format's range) with row maxima of sqrt(3 / in), which
    keep activations O(1) as ``MoshiLM.random`` does; never a full-precision copy of them. ``"none"``:
    ``MoshiLM.random``. Deterministic in ``seed`` for a device type."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights {weights!r}: expected one of {', '.join(WEIGHTS)}")
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    cfg = LMConfig.load(config)
    if weights == "none":
        return MoshiLM.random(cfg, seed=seed, device=device, dtype=dtype)
    with torch.device("meta"):
        lm = MoshiLM(cfg)
    lm._quantized_layout(weights)
    generator, meta, state = torch.Generator(device=device).manual_seed(seed), lm.state_dict(), {}
    codes_dtype = MODES[weights]
    for name, t in meta.items():
        if t.dtype == torch.int8:
            state[name] = torch.randint(-127, 128, t.shape, dtype=torch.int8, device=device, generator=generator)
        elif t.dtype == codes_dtype:  # fp8: uniform in e4m3's range, rounded by the cast
            state[name] = torch.empty(t.shape, dtype=torch.bfloat16, device=device).uniform_(
                -448, 448, generator=generator).to(codes_dtype)
        elif name.endswith(SCB):  # codes uniform in +-qmax: a row maximum of sqrt(3 / in) gives unit-variance outputs
            state[name] = torch.full(t.shape, math.sqrt(3 / meta[name[:-len(SCB)]].shape[1]), device=device)
        elif name.endswith("alpha") or (name.startswith("depformer_norms.") and name.endswith("weight")):
            state[name] = torch.ones(t.shape, dtype=dtype, device=device)
        elif name.startswith("depformer_norms."):  # a layer norm's bias
            state[name] = torch.zeros(t.shape, dtype=dtype, device=device)
        else:  # embedding tables: unit variance
            state[name] = torch.empty(t.shape, dtype=dtype, device=device).uniform_(-1.7, 1.7, generator=generator)
    lm.load_state_dict(state, assign=True)
    refresh_scales(lm, dtype)
    lm._rebuild_buffers()
    return lm.eval()


def adapter_parameters(cfg: LMConfig, rank: int) -> int:
    """The parameters of one adapter of ``rank`` on every linear layer Kyutai adapts (A [rank, in] + B [out, rank]
    per linear, per step for the depth transformer's): 3,030,272 x rank for Moshi 7B."""
    with torch.device("meta"):
        lm = MoshiLM(cfg)
    total = 0
    for module, name, steps in model_lora.adapted_weights(lm).values():
        out, inner = getattr(module, name).shape
        total += steps * rank * inner + rank * out
    return total


def _linear_numel_by_part(lm: MoshiLM) -> Dict[str, int]:
    """The linear weights' element counts of each temporal and depth layer (``transformer.layers.N``,
    ``depformer.layers.N``) and of the output heads (``heads``: the text head and the audio heads)."""
    names = {id(m): n for n, m in lm.named_modules()}
    parts: Dict[str, int] = {}
    for module, name in lm.linear_weights():
        path = names[id(module)]
        if path.startswith(("transformer.layers.", "depformer.layers.")):
            part = ".".join(path.split(".")[:3])
        elif path == "text_linear" or path.startswith("linears."):
            part = "heads"
        else:
            continue
        parts[part] = parts.get(part, 0) + getattr(module, name).numel()
    return parts


def lora_memory(config: Union[str, LMConfig, None], weights: str, rank: int, batch_size: int, frames: int,
                dtype: torch.dtype = torch.bfloat16, device_type: str = "cuda") -> dict:
    """The memory of a LoRA training step as docs/training.md computes it from the shapes ("Memory (Moshi 7B)"),
    in bytes: ``base`` (the frozen model as it is held: ``bench.memory.weight_bytes``), ``adapter_state`` (float32
    weights, gradients and AdamW's two moments: 16 bytes per adapter parameter), ``transient`` (a quantized base:
    the largest layer's weights dequantized to float32 for the backward pass, plus the text and audio heads'),
    ``activations`` (checkpointing on: per frame of each segment the inputs every layer keeps in the compute dtype
    and the working memory measured at the 7B's widths, ``WORKING_BYTES_PER_FRAME_7B``), ``allocated`` (their sum:
    what ``max_memory_allocated`` should come to), ``context`` (assumed) and ``card`` (allocated + context)."""
    cfg = LMConfig.load(config)
    with torch.device("meta"):
        lm = MoshiLM(cfg).to(dtype)
    base = weight_bytes(lm, weights, device_type)["resident"]
    adapter_state = 16 * adapter_parameters(cfg, rank)
    parts = _linear_numel_by_part(lm)
    layers = [n for part, n in parts.items() if part != "heads"]
    transient = 0 if weights == "none" else 4 * (max(layers) + parts.get("heads", 0))
    item = dtype.itemsize
    # the layer inputs checkpointing keeps (the first of each transformer is in the working memory measured)
    kept = ((cfg.num_layers - 1) * cfg.dim + (cfg.depformer_num_layers - 1) * cfg.dep_q * cfg.depformer_dim) * item
    working = WORKING_BYTES_PER_FRAME_7B * (cfg.text_card + cfg.dep_q * cfg.card) / HEADS_7B
    per_frame = kept + working
    activations = round(per_frame * batch_size * frames)
    allocated = base + adapter_state + transient + activations
    return {"base": base, "adapter_state": adapter_state, "transient": transient, "activations": activations,
            "activation_bytes_per_frame": round(per_frame), "allocated": allocated, "context": int(CONTEXT_BYTES),
            "card": allocated + int(CONTEXT_BYTES)}


def random_codes(cfg: LMConfig, batch_size: int, frames: int, generator: torch.Generator) -> torch.Tensor:
    """A batch of segments [B, 1 + n_q, T] as the dataset gives them: text tokens, then every audio codebook."""
    codes = torch.randint(0, cfg.card, (batch_size, 1 + cfg.n_q, frames), generator=generator)
    codes[:, 0] = torch.randint(0, cfg.text_card, (batch_size, frames), generator=generator)
    return codes


def _fingerprint(lm: MoshiLM) -> List[float]:
    """A sum per frozen tensor (parameters and quantized codes, not the adapter): equal before and after training
    when the base was not changed."""
    trained = {id(p) for p in lm.parameters() if p.requires_grad}
    tensors = [p for p in lm.parameters() if id(p) not in trained] + [
        b for b in lm.buffers() if b.dtype in (torch.int8, torch.float8_e4m3fn)]
    with torch.no_grad():
        return [float(t.float().sum()) for t in tensors]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_lora(model: Union[str, LMConfig] = "moshi_7b", device: str = "cpu", weights: str = "int8",
               rank: int = RANK, scaling: float = SCALING, batch_size: int = 1,
               segment_seconds: float = SEGMENT_SECONDS, steps: int = STEPS, warmup: int = WARMUP,
               gradient_checkpointing: bool = True, seed: int = 0,
               progress: Optional[Callable[[str], None]] = None) -> dict:
    """``warmup`` + ``steps`` LoRA training steps (``LMTrainer.train_step``) on a random ``model`` (an LM preset,
    a config file or an ``LMConfig``) with its base's linear weights in ``weights``, on segments of
    ``segment_seconds`` of random codes; the report (one run: ``runs[0]``). On CUDA an out-of-memory error is a
    result (the run's ``error``), not an exception."""
    # Training code only when a run starts: ``duplex --help`` and the inference modules never import it.
    from ..training.lm import LMTrainer, LMTrainingOptions, add_training_adapter  # noqa: PLC0415

    dev = torch.device(device)
    say = progress or (lambda text: None)
    cfg = LMConfig.load(model)
    dtype = default_dtype(dev)
    frames = max(1, round(segment_seconds * FRAME_RATE))
    name = model if isinstance(model, str) else "custom"
    run = {"model": name, "weights": weights, "dtype": str(dtype).replace("torch.", ""), "rank": rank,
           "scaling": scaling, "batch_size": batch_size, "segment_seconds": segment_seconds, "frames": frames,
           "gradient_checkpointing": gradient_checkpointing, "steps": steps, "warmup": warmup,
           "computed": lora_memory(cfg, weights, rank, batch_size, frames, dtype, dev.type)}
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    try:
        started = time.perf_counter()
        say(f"building a random {name} ({weights} base, {run['dtype']}) on {dev}")
        lm = random_lm(cfg, weights, dev, dtype, seed)
        params = add_training_adapter(lm, rank, scaling, seed)
        _sync(dev)
        run["build_s"] = round(time.perf_counter() - started, 2)
        run["trainable_parameters"] = sum(p.numel() for p in params)
        run["frozen_parameters"] = sum(p.numel() for p in lm.parameters() if not p.requires_grad) + sum(
            b.numel() for b in lm.buffers() if b.dtype in (torch.int8, torch.float8_e4m3fn))
        before = _fingerprint(lm)
        options = LMTrainingOptions(data="", out="", lora=True, lora_rank=rank, lora_scaling=scaling, lr=LR,
                                    steps=warmup + steps, warmup=0.0,
                                    gradient_checkpointing=gradient_checkpointing)
        trainer = LMTrainer(lm, options)
        generator = torch.Generator().manual_seed(seed)
        if cuda:
            run["memory"] = {"after_build_bytes": torch.cuda.memory_allocated(dev)}
            torch.cuda.reset_peak_memory_stats(dev)
        times, losses = [], []
        for i in range(warmup + steps):
            batch = random_codes(cfg, batch_size, frames, generator).to(dev)
            _sync(dev)
            t0 = time.perf_counter()
            record = trainer.train_step(batch)
            _sync(dev)
            ms = (time.perf_counter() - t0) * 1000
            losses.append(record["loss"])
            if i >= warmup:
                times.append(ms)
            say(f"step {i + 1}/{warmup + steps}{' (warm-up)' if i < warmup else ''}: {ms:.0f} ms, loss "
                f"{record['loss']:.3f}")
        if cuda:
            run["memory"].update(peak_allocated_bytes=torch.cuda.max_memory_allocated(dev),
                                 peak_reserved_bytes=torch.cuda.max_memory_reserved(dev))
        p50 = percentile(times, 50)
        run.update(step_ms={"p50": round(p50, 2), "max": round(max(times), 2), "all": [round(t, 2) for t in times]},
                   frames_per_s=round(batch_size * frames / (p50 / 1000), 1),
                   audio_seconds_per_s=round(batch_size * frames / FRAME_RATE / (p50 / 1000), 2),
                   losses=[round(v, 4) for v in losses], loss_finite=all(math.isfinite(v) for v in losses),
                   adapter_trained=all(bool(p.detach().abs().sum() > 0) for p in params),
                   base_unchanged=_fingerprint(lm) == before
                   and all(p.grad is None for p in lm.parameters() if not p.requires_grad))
        del trainer, lm, params
    except torch.cuda.OutOfMemoryError:
        run["error"] = "out of memory"
        run.setdefault("memory", {})["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(dev)
    if cuda:
        torch.cuda.empty_cache()
    return {"benchmark": "LoRA training step (duplex train lm --lora's step on random codes)",
            "device": str(dev), "hardware": describe_device(dev), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"), "runs": [run]}


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _gb(n: float) -> str:
    return f"{n / GB:.1f}"


def describe_run(run: dict) -> List[str]:
    """A run in a few lines (what the command prints, and the summary's cell)."""
    base = f"{run['weights']} base, {run['dtype']}" if run["weights"] != "none" else f"{run['dtype']} base"
    what = (f"{run['model']} (random weights), {base}, rank {run['rank']}, batch "
            f"{run['batch_size']} x {run['segment_seconds']:g} s ({run['frames']} frames), gradient checkpointing "
            + ("on" if run["gradient_checkpointing"] else "off"))
    c = run["computed"]
    computed = (f"computed {_gb(c['allocated'])} GB (base {_gb(c['base'])} + adapter state "
                f"{_gb(c['adapter_state'])} + transient {_gb(c['transient'])} + activations {_gb(c['activations'])})"
                f" + {_gb(c['context'])} GB CUDA context = {_gb(c['card'])} GB on the card")
    memory = run.get("memory", {})
    if "error" in run:
        return [what, f"{run['error']}" + (f" (peak {_gb(memory['peak_allocated_bytes'])} GB allocated)"
                                          if "peak_allocated_bytes" in memory else ""), computed]
    lines = [what,
             f"step: p50 {run['step_ms']['p50']:.1f} ms, max {run['step_ms']['max']:.1f} ms ({_count(run['steps'], 'step')} "
             f"after {_count(run['warmup'], 'warm-up step')}); {run['frames_per_s']:.1f} frames/s ({run['audio_seconds_per_s']:.2f} "
             "s of audio per second)",
             f"loss {run['losses'][0]:.3f} -> {run['losses'][-1]:.3f} ({'finite' if run['loss_finite'] else 'NOT finite'}"
             f"); base {'unchanged' if run['base_unchanged'] else 'CHANGED'}; {run['trainable_parameters']:,} "
             f"trainable, {run['frozen_parameters']:,} frozen parameters; built in {run['build_s']:.1f} s"]
    if "peak_allocated_bytes" in memory:
        lines.append(f"memory: peak {_gb(memory['peak_allocated_bytes'])} GB allocated, "
                     f"{_gb(memory['peak_reserved_bytes'])} GB reserved; {computed}")
    else:
        lines.append(f"memory: not measured (no CUDA); {computed}")
    return lines


def format_report(report: dict) -> str:
    lines = [f"duplex bench lora -- {report['date']}, {report['hardware']}, torch {report['torch']}"]
    for run in report["runs"]:
        lines += [""] + describe_run(run)
    return "\n".join(lines)
