"""LM configs and checkpoints: the official keyword layout, the 7B manifest, both key forms, strict errors."""

import json

import pytest
import torch
from helpers import FIXTURES, LM_SMALL, LM_SMALL_CONFIG, MIMI_SMALL
from safetensors.torch import load_file, save_file

from codec import CheckpointError
from duplex.model.config import LMConfig, LMConfigError
from duplex.model.lm import MoshiLM


def test_7b_preset_is_the_published_config():
    cfg = LMConfig.from_dict(json.loads((FIXTURES / "moshi7b_config.json").read_text()))
    assert cfg == LMConfig.moshi_7b()
    assert (cfg.hidden_dim, cfg.depformer_hidden_dim, cfg.num_streams, cfg.max_delay) == (11264, 2816, 17, 1)


def test_official_loader_quirks():
    data = json.loads((FIXTURES / "moshi7b_config.json").read_text())
    data.update(depformer_causal=True, depformer_context=8, moshi_name="model.safetensors",
                lm_gen_config={"temp": 0.6}, lora=False)
    cfg = LMConfig.from_dict(data)
    # Kyutai's LoRA keys are kept with the repository's keys (and written back as they were)
    assert cfg.repo_extras == {"moshi_name": "model.safetensors", "lm_gen_config": {"temp": 0.6}, "lora": False}
    assert cfg.depformer_context == 8  # kept for the record, unused: the depth transformer has no window
    assert LMConfig.from_dict(cfg.to_dict()) == cfg
    assert LMConfig.gated_hidden(64, 256) == 168  # the 21 * dim / 8 rule when dim_feedforward == 4 * dim


@pytest.mark.parametrize("change, words", [
    ({"bogus": 1}, "unknown key(s) ['bogus']"),
    ({"demux_second_text_stream": True}, "demux_second_text_stream=True is not supported"),
    ({"norm": "layer_norm"}, "norm 'layer_norm'"),
    ({"delays": [0, 1]}, "delays has 2 entries, expected 1 + n_q = 17"),
    ({"gating": "gelu"}, "silu"),
])
def test_bad_configs(change, words):
    data = json.loads(LM_SMALL_CONFIG.read_text())
    data.update(change)
    with pytest.raises(LMConfigError) as e:
        LMConfig.from_dict(data)
    assert words in str(e.value)


def test_presets_and_config_files(tmp_path):
    assert LMConfig.preset("small").dim == 512
    with pytest.raises(LMConfigError, match="unknown LM preset"):
        LMConfig.preset("huge")
    with pytest.raises(LMConfigError, match="not found"):
        LMConfig.load(str(tmp_path / "missing.json"))
    assert LMConfig.load("small") == LMConfig.preset("small")  # preset names load too
    with pytest.raises(LMConfigError, match="neither a file nor a preset"):
        LMConfig.load("huge")
    (tmp_path / "small").write_text(json.dumps(LMConfig.preset("small").to_dict() | {"dim": 256}))
    assert LMConfig.load(str(tmp_path / "small")).dim == 256  # a file wins over a preset of the same name


def test_manifest_of_the_published_7b_matches_the_preset():
    manifest = json.loads((FIXTURES / "manifest_moshi7b_official.json").read_text())
    with torch.device("meta"):
        lm = MoshiLM()
    state = lm.state_dict()
    assert set(state) == set(manifest) and len(state) == 355
    for key, (shape, _dtype) in manifest.items():
        assert list(state[key].shape) == shape, key
    assert sum(p.numel() for p in lm.parameters()) == 7_687_729_152
    assert all(p.is_meta for p in lm.parameters())


def _module_form(tensors, dep_q):
    out = {}
    for key, value in tensors.items():
        if key.endswith("self_attn.in_proj_weight") or key.endswith("self_attn.out_proj.weight"):
            sets = dep_q if key.startswith("depformer.") else 1
            name = "in_projs" if "in_proj" in key else "out_projs"
            prefix = key.rsplit(".self_attn.", 1)[0]
            for i, chunk in enumerate(value.chunk(sets, dim=0)):
                out[f"{prefix}.self_attn.{name}.{i}.weight"] = chunk.clone()
        else:
            out[key] = value
    return out


def test_module_form_loads(tmp_path, small_lm, lm_io):
    tensors = load_file(str(LM_SMALL))
    module = _module_form(tensors, small_lm.config.dep_q)
    assert "depformer.layers.0.self_attn.in_projs.7.weight" in module and len(module) > len(tensors)
    save_file(module, str(tmp_path / "module.safetensors"))
    lm = MoshiLM.from_checkpoint(tmp_path / "module.safetensors", config=LM_SMALL_CONFIG, dtype=torch.float32)
    for (name, a), b in zip(lm.state_dict().items(), small_lm.state_dict().values()):
        assert torch.equal(a, b), name


def test_load_assigns_the_file_tensors_and_casts(monkeypatch):
    import duplex.model.lm as lm_module

    seen = {}
    original = lm_module.read_tensors

    def spy(*args, **kwargs):
        seen.update(original(*args, **kwargs))
        return seen

    monkeypatch.setattr(lm_module, "read_tensors", spy)
    lm = MoshiLM.from_checkpoint(LM_SMALL, config=LM_SMALL_CONFIG, dtype=torch.float32)
    # no second copy: the loaded tensor is the parameter
    assert lm.text_linear.weight.data_ptr() == seen["text_linear.weight"].data_ptr()
    bf16 = MoshiLM.from_checkpoint(LM_SMALL, config=LM_SMALL_CONFIG)  # default dtype
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())


def test_checkpoint_errors(tmp_path):
    tensors = load_file(str(LM_SMALL))
    del tensors["out_norm.alpha"]
    tensors["extra.weight"] = torch.zeros(2)
    tensors["linears.0.weight"] = torch.zeros(64, 31)
    save_file(tensors, str(tmp_path / "broken.safetensors"))
    with pytest.raises(CheckpointError) as e:
        MoshiLM.from_checkpoint(tmp_path / "broken.safetensors", config=LM_SMALL_CONFIG)
    message = str(e.value)
    assert "missing keys (1)" in message and "out_norm.alpha" in message
    assert "unexpected keys (1)" in message and "extra.weight" in message
    assert "mis-shaped keys (1)" in message and "linears.0.weight: file [64, 31], model [64, 32]" in message


def test_another_architecture_is_refused():
    with pytest.raises(CheckpointError, match="is not a Moshi LM checkpoint"):
        MoshiLM.from_checkpoint(MIMI_SMALL, config=LM_SMALL_CONFIG)
    with pytest.raises(CheckpointError, match="mis-shaped keys"):
        MoshiLM.from_checkpoint(LM_SMALL)  # the 7B config against the small file


@pytest.mark.parametrize("dtype", [torch.int8, torch.long, "bfloat16"])
def test_dtype_must_be_floating_point(dtype):
    with pytest.raises(TypeError, match="dtype must be a floating-point torch dtype"):
        MoshiLM.from_checkpoint(LM_SMALL, config=LM_SMALL_CONFIG, dtype=dtype)
    with pytest.raises(TypeError, match="dtype must be a floating-point torch dtype"):
        MoshiLM.random(LM_SMALL_CONFIG, dtype=dtype)
