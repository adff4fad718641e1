"""LoRA adapters in Kyutai's layout on duplex's LM, against the vectors made with Kyutai's code and moshi-finetune's
writer (tests/fixtures/make_lora_vectors.py): unfused, fused, the stacked form, per-row routing."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from duplex.errors import LoRAError
from duplex.model import lora
from duplex.model.lm import MoshiLM
from tests.helpers import FIXTURES, LM_SMALL, LM_SMALL_CONFIG

ADAPTER = FIXTURES / "lora_small" / "lora.safetensors"


@pytest.fixture(scope="module")
def io():
    return load_file(FIXTURES / "lora_small_io.safetensors")


def base(quantize=None) -> MoshiLM:
    return MoshiLM.from_checkpoint(LM_SMALL, config=LM_SMALL_CONFIG, dtype=torch.float32, quantize=quantize)


def run(lm, user, steps=30):
    gen = lm.generator(user.shape[0], greedy=True)
    return torch.stack([gen.step(user[:, :, s]) for s in range(steps)], dim=-1)


def test_an_adapter_gives_kyutais_tokens_unfused_fused_and_stacked(io):
    user = io["gen_user_tokens"]
    lm = base()
    assert lm.add_adapter(ADAPTER) == 1 and lm.adapters == ["lora_small"]  # rank and scaling from its config.json
    assert torch.equal(run(lm, user), io["lora_out"])
    with torch.no_grad():
        fwd = lm.forward_train(io["fwd_codes"])
    mask, text = io["lora_fwd_mask"], io["lora_fwd_text_mask"]
    assert (fwd.logits[mask] - io["lora_fwd_logits"][mask]).abs().max() < 1e-4
    assert (fwd.text_logits[text] - io["lora_fwd_text_logits"][text]).abs().max() < 1e-4
    assert torch.equal(run(lm.fuse_adapter_(), user), io["fused_out"]) and lm.adapters == []
    stacked = base()
    stacked.add_adapter(FIXTURES / "lora_small_packed.safetensors", rank=4, scaling=2.0)
    assert torch.equal(run(stacked, user), io["packed_out"])


def test_rows_routed_to_different_adapters_get_what_each_gets_alone(io):
    user = io["gen_user_tokens"]
    lm = base()
    lm.add_adapter(ADAPTER)
    halved = lora.read_lora(ADAPTER, scaling=1.0, targets=lora.adapted_weights(lm))
    halved.name = "halved"
    assert lm.add_adapter(halved) == 2 and lm.adapters == ["lora_small", "halved"]
    lm.route_adapters(torch.tensor([1, 0]))
    out = run(lm, user)
    assert torch.equal(out[0], io["lora_out"][0]) and torch.equal(out[1], io["base_out"][1])
    lm.route_adapters(torch.tensor([2, 2]))
    alone = base()
    alone.add_adapter(ADAPTER, scaling=1.0)
    assert torch.equal(run(lm, user), run(alone, user))
    assert not torch.equal(run(alone, user), io["lora_out"])  # the scaling really is applied


def test_adapters_on_quantized_weights_and_written_back_in_kyutais_layout(io, tmp_path):
    lm = base(quantize="int8")
    lm.add_adapter(ADAPTER)
    out = run(lm, io["gen_user_tokens"], steps=10)
    assert out.shape == (2, 9, 10)
    with pytest.raises(LoRAError, match="cannot be fused into int8 weights"):
        lm.fuse_adapter_()
    written = lora.adapter_state(lm)
    stored = load_file(ADAPTER)
    assert sorted(written) == sorted(stored)
    assert all(torch.equal(written[k], stored[k].float()) for k in stored)


def test_bad_adapters_are_refused_in_one_line(tmp_path):
    stored = load_file(ADAPTER)
    partial = dict(stored)
    del partial["text_linear.lora_A.weight"], partial["text_linear.lora_B.weight"]
    cases = {
        "partial.safetensors": (partial, "no adapter for 1 of its 61 linear layers, e.g. text_linear"),
        "half.safetensors": ({k: v for k, v in stored.items() if k != "text_linear.lora_B.weight"},
                             "text_linear has lora_A without its pair"),
        "other.safetensors": ({**stored, "decoder.lora_A.weight": stored["text_linear.lora_A.weight"].clone(),
                               "decoder.lora_B.weight": stored["text_linear.lora_B.weight"].clone()},
                              "decoder is not a linear layer of this model"),
        "empty.safetensors": ({"emb.0.weight": torch.zeros(65, 64)}, "no adapter"),
    }
    for name, (tensors, words) in cases.items():
        save_file(tensors, tmp_path / name)
        with pytest.raises(LoRAError, match=words) as e:
            base().add_adapter(tmp_path / name, rank=4, scaling=2.0)
        assert "\n" not in str(e.value)
    with pytest.raises(LoRAError, match="rank 4, its config says lora_rank 8"):
        base().add_adapter(ADAPTER, rank=8)
    with pytest.raises(LoRAError, match="not a readable adapter file"):
        base().add_adapter(tmp_path / "missing.safetensors", rank=4, scaling=2.0)
    embed = {**stored, "emb.0.weight": torch.zeros(65, 64)}  # moshi-finetune's ft_embed adds embedding tables
    save_file(embed, tmp_path / "embed.safetensors")
    lm = base()
    lm.add_adapter(ADAPTER)
    with pytest.raises(LoRAError, match="cannot share a model with other adapters"):
        lm.add_adapter(tmp_path / "embed.safetensors", rank=4, scaling=2.0)
    alone = base()
    alone.add_adapter(tmp_path / "embed.safetensors", rank=4, scaling=2.0)
    assert torch.equal(alone.emb[0].weight, torch.zeros(65, 64))  # replaced, as Kyutai's loader replaces it
