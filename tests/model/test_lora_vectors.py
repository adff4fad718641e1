"""The LoRA reference vectors (tests/fixtures/lora_small*, made by tests/fixtures/make_lora_vectors.py): an adapter
written by moshi-finetune's own checkpoint writer for the small LM, and Kyutai's greedy tokens without it, with it
unfused, fused, and in the stacked key form. Checked for consistency here, and reproduced with Kyutai's
implementation (PyPI moshi 0.2.13) where it is installed, so the vectors stay what Kyutai's code gives."""

import json

import pytest
import torch
from helpers import FIXTURES, LM_SMALL, LM_SMALL_CONFIG, kyutai_greedy
from safetensors import safe_open
from safetensors.torch import load_file

ADAPTER_DIR = FIXTURES / "lora_small"
ADAPTER = ADAPTER_DIR / "lora.safetensors"
PACKED = FIXTURES / "lora_small_packed.safetensors"
IO = FIXTURES / "lora_small_io.safetensors"


@pytest.fixture(scope="module")
def io():
    return load_file(str(IO))


def adapted_modules(cfg: dict) -> dict:
    """Every nn.Linear of Kyutai's LMModel for this config (what moshi-finetune adapts): name -> (in, out)."""
    dim, ddim, dep_q = cfg["dim"], cfg["depformer_dim"], cfg["dep_q"]
    hidden = 2 * int(cfg["hidden_scale"] * dim) // 3
    dhidden = 2 * cfg["depformer_dim_feedforward"] // 3
    out = {"text_linear": (dim, cfg["text_card"])}
    for i in range(cfg["num_layers"]):
        p = f"transformer.layers.{i}."
        out.update({p + "self_attn.in_projs.0": (dim, 3 * dim), p + "self_attn.out_projs.0": (dim, dim),
                    p + "gating.linear_in": (dim, 2 * hidden), p + "gating.linear_out": (hidden, dim)})
    for k in range(dep_q):
        out.update({f"depformer_in.{k}": (dim, ddim), f"linears.{k}": (ddim, cfg["card"])})
        for i in range(cfg["depformer_num_layers"]):
            p = f"depformer.layers.{i}."
            out.update({p + f"self_attn.in_projs.{k}": (ddim, 3 * ddim), p + f"self_attn.out_projs.{k}": (ddim, ddim),
                        p + f"gating.{k}.linear_in": (ddim, 2 * dhidden),
                        p + f"gating.{k}.linear_out": (dhidden, ddim)})
    return out


def test_the_folder_is_moshi_finetunes_layout():
    assert sorted(p.name for p in ADAPTER_DIR.iterdir()) == ["config.json", "lora.safetensors"]
    config = json.loads((ADAPTER_DIR / "config.json").read_text())
    base = json.loads(LM_SMALL_CONFIG.read_text())
    assert config == {**base, "lora": True, "lora_rank": 4, "lora_scaling": 2.0}
    for path in (ADAPTER, PACKED, IO):
        assert path.stat().st_size < 200_000


def test_the_adapter_covers_every_linear_with_a_and_b():
    config = json.loads((ADAPTER_DIR / "config.json").read_text())
    rank, modules = config["lora_rank"], adapted_modules(config)
    assert len(modules) == 89
    with safe_open(str(ADAPTER), "pt") as f:
        keys = set(f.keys())
        assert keys == {f"{m}.lora_{ab}.weight" for m in modules for ab in "AB"}
        for name, (fan_in, fan_out) in modules.items():
            a, b = f.get_tensor(f"{name}.lora_A.weight"), f.get_tensor(f"{name}.lora_B.weight")
            assert a.dtype == b.dtype == torch.bfloat16
            assert a.shape == (rank, fan_in) and b.shape == (fan_out, rank)
            assert a.abs().max() <= fan_in ** -0.5 and b.abs().sum() > 0  # kaiming_uniform(a=sqrt 5)'s range; B trained


def test_the_stacked_file_is_the_module_form_concatenated():
    """in_projs.{0..N-1}.lora_A.weight -> in_proj.lora_A.weight (dim 0), as the published weights stack them."""
    module, packed = load_file(str(ADAPTER)), load_file(str(PACKED))
    expected, stacks = {}, {}
    for key, value in module.items():
        head, sep, rest = key.partition(".self_attn.")
        if sep and rest.split(".")[0] in ("in_projs", "out_projs"):
            kind, step, tail = rest.split(".", 2)
            stacks.setdefault(f"{head}.self_attn.{kind[:-1]}.{tail}", {})[int(step)] = value
        else:
            expected[key] = value
    for key, parts in stacks.items():
        expected[key] = torch.cat([parts[i] for i in sorted(parts)])
    assert packed.keys() == expected.keys()
    assert all(torch.equal(packed[k], expected[k]) for k in packed)


def test_the_tokens_are_consistent(io):
    user = io["gen_user_tokens"]
    assert user.shape == (2, 8, 30) and 0 <= user.min() and user.max() < 64
    for name in ("base_out", "lora_out", "fused_out", "packed_out"):
        out = io[name]
        assert out.shape == (2, 9, 30)
        assert (out[:, :, 0] == -2).all() and (out[:, :, 1:] >= 0).all()  # the text stream's delay is 1 frame
        assert out[:, 0].max() < 100 and out[:, 1:].max() < 64
    assert torch.equal(io["fused_out"], io["lora_out"]) and torch.equal(io["packed_out"], io["lora_out"])
    changed = (io["base_out"] != io["lora_out"])[:, :, 1:].float().mean()
    assert changed > 0.3, "the adapter must matter"
    assert io["fwd_codes"].shape == (2, 17, 12)
    assert io["lora_fwd_logits"].shape == (2, 8, 12, 64) and io["lora_fwd_text_logits"].shape == (2, 1, 12, 100)
    assert io["lora_fwd_mask"].any() and io["lora_fwd_text_mask"].any()


@pytest.fixture
def kyutai():
    """Kyutai's loader and LMGen, on one thread (the model is tiny; conftest restores the thread count)."""
    loaders = pytest.importorskip("moshi.models.loaders")
    lm_module = pytest.importorskip("moshi.models.lm")
    pytest.importorskip("moshi.modules.lora")
    if "fuse_lora" not in loaders.get_moshi_lm.__code__.co_varnames:
        pytest.skip("not Kyutai's moshi with LoRA support")
    torch.set_num_threads(1)
    return loaders, lm_module.LMGen


@pytest.mark.parametrize("case", ["base_out", "lora_out", "fused_out", "packed_out"])
def test_kyutais_implementation_gives_the_recorded_tokens(kyutai, io, case):
    loaders, lmgen_cls = kyutai
    torch.manual_seed(0)
    config = json.loads((LM_SMALL_CONFIG if case == "base_out" else ADAPTER_DIR / "config.json").read_text())
    weights = {"base_out": None, "lora_out": ADAPTER, "fused_out": ADAPTER, "packed_out": PACKED}[case]
    lm = loaders.get_moshi_lm(str(LM_SMALL), lm_kwargs=config, device="cpu", dtype=torch.float32,
                              lora_weights=None if weights is None else str(weights), fuse_lora=case == "fused_out")
    assert torch.equal(kyutai_greedy(lmgen_cls, lm, io["gen_user_tokens"]), io[case])


def test_kyutais_checkpoint_info_applies_the_folder_as_moshi_server_does(kyutai, io):
    """`python -m moshi.server --lora-weight DIR/lora.safetensors --config-path DIR/config.json` (README of
    moshi-finetune); the server fuses by default. Also the forward pass of the unfused model."""
    loaders, lmgen_cls = kyutai
    info = loaders.CheckpointInfo.from_hf_repo("kyutai/unused", moshi_weights=str(LM_SMALL), mimi_weights="unused",
                                               tokenizer="unused", config_path=str(ADAPTER_DIR / "config.json"),
                                               lora_weights=str(ADAPTER))
    fused = info.get_moshi(device="cpu", dtype=torch.float32, fuse_lora=True)
    assert torch.equal(kyutai_greedy(lmgen_cls, fused, io["gen_user_tokens"][:, :, :12]), io["lora_out"][:, :, :12])
    lm = info.get_moshi(device="cpu", dtype=torch.float32)
    from moshi.utils.compile import no_compile  # noqa: PLC0415 - Kyutai's package is optional

    with torch.no_grad(), no_compile():
        out = lm(io["fwd_codes"])
    assert torch.equal(out.mask, io["lora_fwd_mask"]) and torch.equal(out.text_mask, io["lora_fwd_text_mask"])
    torch.testing.assert_close(out.logits[out.mask], io["lora_fwd_logits"][out.mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.text_logits[out.text_mask], io["lora_fwd_text_logits"][out.text_mask],
                               atol=1e-5, rtol=0)


def test_the_vectors_tell_the_scaling_convention_apart(kyutai, io):
    """`lora_scaling` multiplies B(A(x)) as it stands (2.0 here), not alpha / rank (0.5): the recorded tokens catch
    an implementation that divides by the rank."""
    loaders, lmgen_cls = kyutai
    config = dict(json.loads((ADAPTER_DIR / "config.json").read_text()), lora_scaling=0.5)
    lm = loaders.get_moshi_lm(str(LM_SMALL), lm_kwargs=config, device="cpu", dtype=torch.float32,
                              lora_weights=str(ADAPTER))
    assert not torch.equal(kyutai_greedy(lmgen_cls, lm, io["gen_user_tokens"][:, :, :12]), io["lora_out"][:, :, :12])
