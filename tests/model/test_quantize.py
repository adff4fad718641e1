"""Quantized LM weights and the fp8 KV ring (docs/quantization.md): formats, files, loading, the kernels' arithmetic,
the teacher-forced view of the fp8 ring."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from codec.errors import CheckpointError
from codec.io.checkpoint import read_tensors
from codec.modules.quantized import (
    FP8,
    QuantizedWeight,
    cat_rows,
    dense,
    fp8_decode,
    fp8_encode,
    fp8_roundtrip,
    quantize_rows,
    weight_of,
)
from codec.modules.rope import rope_frequencies, rope_tables
from codec.modules.transformer import Attention, ring_step_tables
from duplex.model.lm import MoshiLM
from tests.helpers import LM_SMALL, LM_SMALL_CONFIG


def small_lm(quantize=None) -> MoshiLM:
    return MoshiLM.from_checkpoint(LM_SMALL, config=LM_SMALL_CONFIG, dtype=torch.float32, quantize=quantize)


def codes_for(cfg, steps: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, cfg.card, (1, cfg.num_streams, steps), generator=g)
    codes[:, 0] = torch.randint(0, cfg.text_card, (1, steps), generator=g)
    return codes


@pytest.mark.parametrize("dtype, qmax", [(torch.int8, 127), (FP8, 448)])
def test_rows_are_coded_against_their_own_maximum(dtype, qmax):
    w = torch.randn(24, 64) * torch.logspace(-3, 1, 24)[:, None]  # rows of very different sizes
    w[5] = 0  # an all-zero row must not divide by zero
    codes, scb = quantize_rows(w, dtype)
    assert codes.dtype == dtype and scb.dtype == torch.float32 and scb.shape == (24,)
    assert torch.equal(scb, w.to(torch.float16).float().abs().amax(1) if dtype == torch.int8 else w.abs().amax(1))
    back = QuantizedWeight(codes, scb, scb / qmax).dequantize()
    assert torch.equal(back[5], torch.zeros(64))
    error = (back - w).abs().amax(1) / w.abs().amax(1).clamp(min=1e-30)
    # int8: half a step of 1/127 (plus float16's rounding of the weight first); e4m3: 3 mantissa bits, 1/16 at most
    assert float(error[torch.arange(24) != 5].max()) <= (0.5 / 127 + 1e-3 if dtype == torch.int8 else 1 / 16)


@pytest.mark.parametrize("mode", ["int8", "fp8"])
@pytest.mark.parametrize("inner", [64, 132])  # 64: PyTorch's int8 kernel; 132: the dequantized product
def test_quantized_product_is_the_product_with_the_dequantized_weight(mode, inner):
    torch.manual_seed(0)
    w = torch.randn(96, inner) / inner ** 0.5
    codes, scb = quantize_rows(w, torch.int8 if mode == "int8" else FP8)
    qmax = 127 if mode == "int8" else 448
    # The kernel's scale dtype on CPU for float32 activations (bfloat16 for int8: the bfloat16 kernel)
    scale = (scb / qmax).to(torch.bfloat16 if mode == "int8" else torch.float32)
    q = QuantizedWeight(codes, scb, scale)
    x = torch.randn(3, 5, inner)
    got = q.linear(x)
    want = F.linear(x, q.dequantize())
    assert got.shape == (3, 5, 96) and got.dtype == torch.float32
    # int8 on CPU runs with bfloat16 activations and scales (docs/quantization.md): a few bfloat16 roundings
    tolerance = 2e-2 if mode == "int8" else 1e-5
    assert float((got - want).abs().max()) <= tolerance * float(want.abs().max())
    # Row slices and row concatenations are quantized weights with the same rows
    assert torch.allclose(q[10:20].linear(x), got[..., 10:20], atol=1e-5)
    assert torch.allclose(cat_rows([q[:40], q[40:]]).linear(x), got, atol=1e-5)
    with torch.enable_grad():  # frozen base weights under training: differentiable in x
        xg = x.clone().requires_grad_(True)
        q.linear(xg).sum().backward()
        assert xg.grad is not None and torch.isfinite(xg.grad).all()


@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_quantize_replaces_the_linear_weights_only(mode):
    lm = small_lm()
    plain = {k: v.clone() for k, v in lm.state_dict().items()}
    lm.quantize_(mode)
    assert lm.quantization == mode and lm.dtype == torch.float32
    state = lm.state_dict()
    linear = {f"{prefix}.{name}" for prefix, module in lm.named_modules() for m2, name in lm.linear_weights()
              if m2 is module}
    assert linear and all(key.endswith(("in_proj_weight", ".weight")) for key in linear)
    for key, value in plain.items():
        if key in linear:
            assert state[key].dtype == (torch.int8 if mode == "int8" else FP8) and key + "_scb" in state
        else:  # embeddings and norms stay as they were
            assert torch.equal(state[key], value), key
    assert not any(k.endswith("_scale") for k in state)  # the kernel's scales are not part of a file
    assert isinstance(weight_of(lm.text_linear), QuantizedWeight)
    assert isinstance(weight_of(lm.emb[0]), torch.Tensor)
    assert isinstance(dense(weight_of(lm.text_linear)), torch.Tensor)
    with pytest.raises(ValueError, match="already quantized"):
        lm.quantize_(mode)
    with pytest.raises(ValueError, match="expected one of"):
        small_lm().quantize_("int4")


@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_a_quantized_model_saves_and_loads_as_it_is(tmp_path, mode):
    lm = small_lm().quantize_(mode)
    path = lm.save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config.get("quantize", False) is (mode == "int8")  # what Kyutai's exporter writes for its q8 files
    stored = read_tensors(path)
    assert stored["text_linear.weight_scb"].dtype == torch.float32
    back = MoshiLM.from_checkpoint(path, config=tmp_path / "config.json", dtype=torch.float32)
    assert back.quantization == mode
    for (k, a), (k2, b) in zip(lm.state_dict().items(), back.state_dict().items()):
        assert k == k2 and a.dtype == b.dtype and torch.equal(a.float(), b.float()), k
    # The same as quantizing at load from the full-precision file
    at_load = small_lm(quantize=mode)
    assert all(torch.equal(a.float(), b.float()) for a, b in zip(at_load.state_dict().values(),
                                                                 back.state_dict().values()))
    # A quantized file loads only as it is
    other = "fp8" if mode == "int8" else "int8"
    with pytest.raises(CheckpointError, match=f"holds {mode} weights: it cannot be loaded as {other}"):
        MoshiLM.from_checkpoint(path, config=tmp_path / "config.json", dtype=torch.float32, quantize=other)
    with pytest.raises(CheckpointError, match="cannot be loaded unquantized"):
        MoshiLM.from_checkpoint(path, config=tmp_path / "config.json", dtype=torch.float32, quantize="none")
    with pytest.raises(ValueError, match="quantize='int4'"):
        MoshiLM.from_checkpoint(path, config=tmp_path / "config.json", quantize="int4")


def test_kyutai_module_form_q8_keys_load(tmp_path):
    """Kyutai's q8 files name the per-step attention projections as modules (``in_projs.N.weight`` and
    ``in_projs.N.weight_scb``): normalised to duplex's packed form, codes and scales stay row-aligned."""
    from safetensors.torch import save_file

    lm = small_lm().quantize_("int8")
    state = {k: v.contiguous() for k, v in lm.state_dict().items()}
    steps = lm.config.dep_q
    kyutai = {}
    for key, value in state.items():
        for packed, module in (("in_proj_weight", "in_projs"), ("out_proj.weight", "out_projs")):
            for suffix in ("", "_scb"):
                if key.endswith("." + packed + suffix):
                    prefix = key[: -len(packed + suffix) - 1]
                    parts = steps if prefix.startswith("depformer.") else 1
                    for i, chunk in enumerate(value.chunk(parts, dim=0)):
                        kyutai[f"{prefix}.{module}.{i}.weight{suffix}"] = chunk.contiguous()
                    break
            else:
                continue
            break
        else:
            kyutai[key] = value
    assert any(".in_projs.7.weight_scb" in k for k in kyutai)
    save_file(kyutai, tmp_path / "model.q8.safetensors")
    back = MoshiLM.from_checkpoint(tmp_path / "model.q8.safetensors", config=LM_SMALL_CONFIG, dtype=torch.float32)
    assert back.quantization == "int8"
    assert all(torch.equal(a, b) for a, b in zip(state.values(), back.state_dict().values()))


def test_teacher_forced_view_of_the_fp8_ring_is_the_streaming_ring():
    """Attention stepped over the fp8 ring equals the offline forward with keys and values rounded as the ring
    stores them (so ``forward_train(kv_dtype=fp8)`` measures what a streaming session computes)."""
    torch.manual_seed(0)
    context, steps, heads, dim = 6, 15, 4, 32
    attn = Attention(dim, heads, context).eval()
    freqs = rope_frequencies(dim // heads, 10000.0)
    x = torch.randn(2, steps, dim)
    with torch.no_grad():
        offline = attn(x, rope_tables(torch.arange(steps).expand(2, steps), freqs), kv_dtype=FP8)
        plain = attn(x, rope_tables(torch.arange(steps).expand(2, steps), freqs))
        state = attn.new_state(2, 1, context, dtype=torch.float32, kv_dtype=FP8)
        assert state["k"].dtype == FP8 and state["k_scale"].shape == (2, heads, context + 1, 1)
        offset = torch.zeros(2, dtype=torch.long)
        out = []
        for t in range(steps):
            tables = ring_step_tables(offset, 1, context, context, heads, dim // heads, freqs, None)
            out.append(attn.step(x[:, t:t + 1], state, tables))
            offset += 1
    streamed = torch.cat(out, dim=1)
    assert torch.allclose(streamed, offline, atol=1e-5)
    assert not torch.allclose(streamed, plain, atol=1e-5)  # the rounding is really there


def test_fp8_vectors_keep_three_significant_bits_at_any_size():
    x = torch.randn(3, 5, 64) * torch.logspace(-6, 4, 5)[None, :, None]
    codes, scale = fp8_encode(x, torch.float32)
    assert codes.dtype == FP8 and scale.shape == (3, 5, 1)
    back = fp8_decode(codes, scale, torch.float32)
    assert float(((back - x).abs() / x.abs().amax(-1, keepdim=True)).max()) <= 1 / 16
    assert torch.equal(fp8_roundtrip(torch.zeros(2, 8)), torch.zeros(2, 8))


def test_forward_train_with_quantized_weights_is_close_to_float():
    lm, q = small_lm(), small_lm(quantize="int8")
    codes = codes_for(lm.config)
    with torch.no_grad():
        ref, got = lm.forward_train(codes), q.forward_train(codes)
        ring = lm.forward_train(codes, kv_dtype=FP8)
    keep = ref.mask[..., None].expand_as(ref.logits)
    a, b, c = ref.logits[keep], got.logits[keep], ring.logits[keep]
    assert float((a - b).abs().max()) <= 0.05 * float(a.abs().max())
    assert float((a - c).abs().max()) <= 0.1 * float(a.abs().max()) and not torch.equal(a, c)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_cuda_products_are_the_products_with_the_dequantized_weight(mode):
    """On CUDA: int8 through cuBLAS on the converted codes; fp8 through the per-row scaled product where the GPU has
    fp8 matrix units (the activations coded per row, so bounded by e4m3's precision), else weight-only."""
    torch.manual_seed(0)
    w = torch.randn(256, 512, device="cuda") / 512 ** 0.5
    codes, scb = quantize_rows(w, torch.int8 if mode == "int8" else FP8)
    from codec.modules.quantized import kernel_scale

    q = QuantizedWeight(codes, scb, kernel_scale(scb, codes.dtype, torch.bfloat16))
    x = torch.randn(3, 512, device="cuda", dtype=torch.bfloat16)
    got = q.linear(x).float()
    want = F.linear(x.float(), q.dequantize())
    tolerance = 2e-2 if mode == "int8" else 8e-2  # bfloat16 output; e4m3 activations: 3 significant bits
    assert float((got - want).abs().max()) <= tolerance * float(want.abs().max())
    one = q.linear(x[:1]).float()  # a row's result does not depend on the other rows (slot isolation)
    assert torch.equal(one, q.linear(x).float()[:1]) or float((one - got[:1]).abs().max()) <= 1e-2 * float(
        want.abs().max())
