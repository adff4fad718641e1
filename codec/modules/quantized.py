"""Low-bit weights and KV rings (docs/quantization.md): weight-only int8/fp8 linear layers and the fp8 KV ring's
encoding. (Number formats, not the codec's residual vector quantizer, in ``codec.modules.quantizer``.)

A quantized weight [out, in] is stored as two tensors on its module: the codes under the weight's own name
(``int8``, or ``float8_e4m3fn``) and ``<name>_scb``, the float32 absolute maximum of each row. That is the layout of
Kyutai's q8 checkpoints (bitsandbytes' ``int8_vectorwise_quant``: ``code = round(w * 127 / absmax)``, so
``w ~ code * absmax / 127``), used here for fp8 too with 448 (e4m3's largest value) in place of 127. A third,
non-persistent tensor ``<name>_scale`` holds ``absmax / qmax`` in the dtype the kernel takes, computed once at load.

``weight_of(module, name)`` gives what the forward code multiplies by: the plain parameter, or a
``QuantizedWeight`` view of the three tensors that ``fast_linear`` (``codec.modules.linear``) dispatches on. Row
slices and row concatenations of a ``QuantizedWeight`` are quantized weights too (the depth transformer packs one
weight set per step in one matrix).

Kernels, all PyTorch's own (why not torchao, and the measurements: docs/quantization.md):
* int8 on CPU: ``torch._weight_int8pack_mm``, PyTorch's weight-only int8 product, with bfloat16 activations (2.9x
  faster than the float32 product at 7B shapes; with float32 activations the same kernel is 4x slower).
* int8 on CUDA: the codes converted for cuBLAS's product, then the row scales (PyTorch's CUDA int8 kernel is one
  thread per output reading the weight rows uncoalesced). This saves memory, not time: a fused dequantizing product
  needs torch.compile (the GPU step's issue).
* fp8 on a GPU with fp8 matrix units (compute capability 8.9+) in bfloat16: ``torch._scaled_mm`` with per-row
  scales, the activations coded per row to e4m3 on the fly (so one slot's codes never depend on another's);
  elsewhere weight-only, the codes converted for the product.
Where gradients are needed the dequantized weight is used (frozen base weights).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .linear import fast_linear

FP8 = torch.float8_e4m3fn
QMAX = {torch.int8: 127.0, FP8: 448.0}
MODES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
SCB = "_scb"
SCALE = "_scale"


def mode_of(dtype: torch.dtype) -> str:
    return {v: k for k, v in MODES.items()}[dtype]


class QuantizedWeight:
    """A view of a quantized weight: ``codes`` [out, in] (int8 or float8_e4m3fn), ``scb`` float32 [out] (row
    absolute maxima), ``scale`` [out] (``scb / qmax`` in the kernel's dtype). Not a tensor: only what the forward
    code does with a weight (``fast_linear``, row slices, ``shape``, ``dequantize``)."""

    __slots__ = ("codes", "scb", "scale")

    def __init__(self, codes: torch.Tensor, scb: torch.Tensor, scale: torch.Tensor):
        self.codes, self.scb, self.scale = codes, scb, scale

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def __getitem__(self, rows: slice) -> "QuantizedWeight":
        return QuantizedWeight(self.codes[rows], self.scb[rows], self.scale[rows])

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.codes.float() * (self.scb / QMAX[self.codes.dtype])[:, None]).to(dtype)

    def linear(self, x: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        inner = self.codes.shape[1]
        if torch.is_grad_enabled() and x.requires_grad:  # frozen base weights under training: autograd-able path
            y = F.linear(rows, self.dequantize(x.dtype))
        elif self.codes.dtype == torch.int8:
            if rows.device.type == "cpu" and rows.dtype in (torch.float32, torch.bfloat16) and inner % 16 == 0:
                # PyTorch's weight-only int8 kernel, with bfloat16 activations (module docstring; it takes inner
                # sizes in multiples of 16: others crash the process in torch 2.11)
                activations = aligned(rows.to(torch.bfloat16))  # a misaligned view crashes the kernel (below)
                y = torch._weight_int8pack_mm(activations, self.codes, self.scale).to(rows.dtype)
            else:  # CUDA: PyTorch's int8 kernel is one thread per output reading uncoalesced rows; cuBLAS is faster
                scale = self.scb / QMAX[torch.int8] if rows.dtype == torch.float32 else self.scale.to(rows.dtype)
                y = F.linear(rows, self.codes.to(rows.dtype)) * scale
        elif (rows.device.type == "cuda" and rows.dtype == torch.bfloat16 and inner % 16 == 0
              and self.codes.shape[0] % 16 == 0 and fp8_matmul_works(rows.device)):
            # fp8 matrix units (compute capability 8.9+): the activations coded per row to e4m3 on the fly, one
            # scaled product (cuBLASLt) with both row scales (a row's code never depends on another slot's)
            codes, scale = fp8_encode(rows, torch.float32)
            y = torch._scaled_mm(codes, self.codes.t(), scale, self.scale.view(1, -1), out_dtype=rows.dtype)
        else:  # fp8 weights elsewhere: weight-only, the codes converted for the product
            y = F.linear(rows, self.codes.to(rows.dtype)) * self.scale.to(rows.dtype)
        y = y.view(*x.shape[:-1], y.shape[-1])
        return y if bias is None else y + bias


_FP8_WORKS: dict = {}


# torch._weight_int8pack_mm on CPU (torch 2.11) crashes the process from 4 rows on when its codes are not 16-byte
# aligned or its activations not 32-byte aligned (tensors a safetensors file was read into sit at the file's
# offsets; a row view of an activation at any offset). Codes are aligned once at load (``refresh_scales``), the
# activations of a bfloat16 model per call where they are a misaligned view (new tensors always are aligned).
_ALIGN = 64


def aligned(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a copy of it at a 64-byte aligned address (what PyTorch's allocator gives every new tensor)."""
    return t if t.data_ptr() % _ALIGN == 0 else t.clone(memory_format=torch.contiguous_format)


def fp8_matmul_works(device: torch.device) -> bool:
    """Whether ``torch._scaled_mm`` with per-row scales runs on ``device`` (a GPU with fp8 matrix units): tried once
    per device on a tiny product, never inside a CUDA graph capture (an error there would spoil it; until it has
    been tried, a capturing caller takes the weight-only product)."""
    key = str(device)
    if key not in _FP8_WORKS:
        if torch.cuda.is_current_stream_capturing():
            return False
        try:
            a = torch.ones(1, 32, device=device).to(FP8)
            b = torch.ones(16, 32, device=device).to(FP8)
            ones = torch.ones(1, 1, device=device)
            out = torch._scaled_mm(a, b.t(), ones, torch.ones(1, 16, device=device), out_dtype=torch.bfloat16)
            _FP8_WORKS[key] = bool(torch.allclose(out.float().cpu(), torch.full((1, 16), 32.0)))
        except (RuntimeError, NotImplementedError, TypeError):
            _FP8_WORKS[key] = False
    return _FP8_WORKS[key]


ADAPTERS = "_lora"  # a weight NAME's adapters (LoRA, duplex.model.lora) are the submodule NAME_lora of its module


def weight_of(module: nn.Module, name: str = "weight"):
    """``module``'s weight ``name``: the parameter itself, a ``QuantizedWeight`` when it was quantized, and either
    seen through its adapters (a view with ``linear``) when it has some (``duplex.model.lora``)."""
    buffers = module._buffers
    if name + SCB in buffers:
        weight = QuantizedWeight(buffers[name], buffers[name + SCB], buffers[name + SCALE])
    else:
        weight = getattr(module, name)
    adapters = module._modules.get(name + ADAPTERS)
    return weight if adapters is None else adapters.view(weight)


def dense(weight, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """A plain tensor of ``weight`` (dequantized, or merged with its adapters, in ``dtype`` (default float32) when
    it is a view)."""
    return weight if isinstance(weight, torch.Tensor) else weight.dequantize(dtype or torch.float32)


class RowStack:
    """Weight views stacked along their rows where they cannot be one tensor (adapted weights): the product is each
    one's product, side by side."""

    __slots__ = ("parts",)

    def __init__(self, parts: Sequence):
        self.parts = list(parts)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((sum(p.shape[0] for p in self.parts), self.parts[0].shape[1]))

    @property
    def device(self) -> torch.device:
        return self.parts[0].device

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.cat([dense(p, dtype) for p in self.parts])

    def linear(self, x: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        y = torch.cat([fast_linear(x, p) for p in self.parts], dim=-1)
        return y if bias is None else y + bias


def cat_rows(weights: Sequence):
    """Weights stacked along their rows (``torch.cat(..., dim=0)`` for plain and quantized ones alike; a
    ``RowStack`` of adapted ones)."""
    if all(isinstance(w, QuantizedWeight) for w in weights):
        return QuantizedWeight(torch.cat([w.codes for w in weights]), torch.cat([w.scb for w in weights]),
                               torch.cat([w.scale for w in weights]))
    if all(isinstance(w, torch.Tensor) for w in weights):
        return torch.cat(list(weights), dim=0)
    return RowStack(weights)


def quantize_rows(weight: torch.Tensor, dtype: torch.dtype) -> "tuple[torch.Tensor, torch.Tensor]":
    """(codes, scb) of ``weight`` [out, in]. int8 as bitsandbytes' ``int8_vectorwise_quant`` computes it from the
    float16 weight Kyutai's exporter gives it (so a q8 file written here holds the bytes Kyutai's would); fp8: the
    row scaled to e4m3's range, rounded to nearest even by the cast."""
    w = weight.detach().to(torch.float16).float() if dtype == torch.int8 else weight.detach().float()
    scb = w.abs().amax(dim=1)
    safe = torch.where(scb > 0, scb, torch.ones_like(scb))
    scaled = w * (QMAX[dtype] / safe)[:, None]
    if dtype == torch.int8:
        codes = torch.round(scaled).clamp_(-127, 127).to(torch.int8)
    else:
        codes = scaled.clamp_(-448, 448).to(dtype)
    return codes, scb


def kernel_scale(scb: torch.Tensor, codes_dtype: torch.dtype, compute_dtype: torch.dtype) -> torch.Tensor:
    """``scb / qmax`` in the dtype the kernel multiplies with: bfloat16 for int8 with float32 activations (the CPU
    kernel's), float32 for fp8 (the scaled product's), else the compute dtype."""
    scale = scb.float() / QMAX[codes_dtype]
    if codes_dtype == FP8:
        return scale
    return scale.to(torch.bfloat16 if compute_dtype == torch.float32 else compute_dtype)


def set_quantized(module: nn.Module, name: str, codes: torch.Tensor, scb: torch.Tensor,
                  compute_dtype: torch.dtype) -> None:
    """Replace ``module``'s parameter ``name`` by ``codes`` and ``scb`` (persistent buffers: they are what a
    quantized file holds) and the kernel's scale (non-persistent)."""
    if name in module._parameters:
        del module._parameters[name]
    module.register_buffer(name, codes)
    module.register_buffer(name + SCB, scb.float())
    module.register_buffer(name + SCALE, kernel_scale(scb, codes.dtype, compute_dtype), persistent=False)


def refresh_scales(model: nn.Module, compute_dtype: torch.dtype) -> None:
    """Recompute every ``_scale`` from its ``_scb`` (after loading a file or moving the model), and put codes read
    from a file at aligned addresses (``aligned``: the CPU int8 kernel needs it)."""
    for module in model.modules():
        for key in list(module._buffers):
            if key.endswith(SCB):
                name = key[:-len(SCB)]
                if module._buffers[name].device.type == "cpu":
                    module._buffers[name] = aligned(module._buffers[name])
                module._buffers[name + SCALE] = kernel_scale(module._buffers[key], module._buffers[name].dtype,
                                                             compute_dtype)


# ----------------------------------------------------------------------------------------- the fp8 KV ring


def fp8_encode(x: torch.Tensor, scale_dtype: torch.dtype) -> "tuple[torch.Tensor, torch.Tensor]":
    """(codes, scale) of vectors ``x`` [..., d]: each vector scaled by its own absolute maximum to e4m3's range
    (no calibration; a key or value of any size keeps its 3 significant bits). ``x ~ codes * scale``."""
    amax = x.detach().abs().amax(dim=-1, keepdim=True).float()
    scale = torch.where(amax > 0, amax / QMAX[FP8], torch.ones_like(amax))
    codes = (x.float() / scale).clamp_(-448, 448).to(FP8)
    return codes, scale.to(scale_dtype)


def fp8_decode(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return codes.to(dtype) * scale.to(dtype)


def fp8_roundtrip(x: torch.Tensor) -> torch.Tensor:
    """What a vector reads back from the fp8 ring (the offline, teacher-forced view of the same rounding)."""
    codes, scale = fp8_encode(x, x.dtype)
    return fp8_decode(codes, scale, x.dtype)
