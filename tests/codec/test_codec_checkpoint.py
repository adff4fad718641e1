"""Configs and checkpoints: the official layout, all accepted key forms, strict errors."""

import json

import pytest
import torch
from helpers import FIXTURES, MIMI_SMALL, MIMI_SMALL_CONFIG
from safetensors.torch import load_file, save_file

from codec import CheckpointError, ConfigError, Mimi, MimiConfig


# ------------------------------------------------------------------------------------------------- config
def test_official_preset_is_the_published_config():
    published = MimiConfig.from_dict(json.loads((FIXTURES / "mimi_official_config.json").read_text()))
    assert published == MimiConfig.official()
    cfg = MimiConfig.official()
    assert (cfg.frame_size, cfg.encoder_frame_rate, cfg.resample_stride) == (1920, 25.0, 2)


def test_config_from_dict_path_and_object_agree():
    data = json.loads(MIMI_SMALL_CONFIG.read_text())
    a, b = MimiConfig.load(data), MimiConfig.load(str(MIMI_SMALL_CONFIG))
    assert a == b == MimiConfig.load(a)
    assert MimiConfig.from_dict(a.to_dict()) == a


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d.update(bogus=1), "unknown key(s) ['bogus']"),
    (lambda d: d["seanet"].update(lstm_layers=2), "'seanet': unknown key(s) ['lstm_layers']"),
    (lambda d: d.pop("quantizer"), "missing section 'quantizer'"),
    (lambda d: d["seanet"].update(causal=False), "seanet.causal"),
    (lambda d: d["transformer"].update(norm="rms_norm"), "transformer.norm 'rms_norm'"),
    (lambda d: d["transformer"].update(gating="silu"), "transformer.gating"),
    (lambda d: d.update(channels=2), "mono"),
    (lambda d: d.update(frame_rate=11.0), "frame_rate"),
])
def test_bad_configs_name_the_problem(mutate, words):
    data = json.loads(MIMI_SMALL_CONFIG.read_text())
    mutate(data)
    with pytest.raises(ConfigError) as e:
        MimiConfig.from_dict(data)
    assert words in str(e.value)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        MimiConfig.load(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        MimiConfig.load(str(bad))


# ------------------------------------------------------------------------------------------------ manifest
def test_manifest_of_the_published_checkpoint_matches_the_official_build():
    """Every key, shape and dtype of the real Mimi file is what the official config builds (no memory used)."""
    manifest = json.loads((FIXTURES / "manifest_mimi_official.json").read_text())
    with torch.device("meta"):
        model = Mimi()
    state = model.state_dict()
    assert all(t.is_meta for t in state.values())
    assert set(state) == set(manifest)
    assert len(state) == 318
    for key, (shape, dtype) in manifest.items():
        assert list(state[key].shape) == shape, key
        assert str(state[key].dtype) == dtype, key
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for name, b in model.named_buffers() if name in state)
    assert params == 79_308_609
    assert buffers == 16_842_784
    assert sum(p.numel() for p in model.encoder.parameters()) == 12_628_256
    assert sum(p.numel() for p in model.decoder.parameters()) == 14_724_641
    assert sum(p.numel() for p in model.encoder_transformer.parameters()) == 25_190_400
    assert model.upsample.convtr.weight.shape == (512, 1, 4)  # depthwise, as published


# --------------------------------------------------------------------------------------------- key forms
@pytest.fixture(scope="module")
def reference_tensors():
    return load_file(str(MIMI_SMALL))


def _roundtrip_codes(path, small_mimi, pcm, **kwargs):
    model = Mimi.from_checkpoint(path, config=str(MIMI_SMALL_CONFIG), **kwargs)
    return model.encode(pcm), model.decode(small_mimi.encode(pcm))


def test_module_form_loads(tmp_path, reference_tensors, small_mimi, mimi_io):
    module_form = {}
    for key, value in reference_tensors.items():
        key = key.replace("self_attn.in_proj_weight", "self_attn.in_projs.0.weight")
        key = key.replace("self_attn.out_proj.weight", "self_attn.out_projs.0.weight")
        module_form[key] = value
    assert any("in_projs.0" in k for k in module_form)
    save_file(module_form, str(tmp_path / "module.safetensors"))
    codes, _ = _roundtrip_codes(tmp_path / "module.safetensors", small_mimi, mimi_io["pcm"])
    assert torch.equal(codes, mimi_io["codes_batch_nq8"])


def test_legacy_codebook_names_load(tmp_path, reference_tensors, mimi_io, small_mimi):
    legacy = {}
    for key, value in reference_tensors.items():
        key = key.replace("._initialized", ".inited").replace(".cluster_usage", ".cluster_size")
        legacy[key.replace(".embedding_sum", ".embed_avg")] = value
    assert any(k.endswith(".embed_avg") for k in legacy)
    save_file(legacy, str(tmp_path / "legacy.safetensors"))
    codes, _ = _roundtrip_codes(tmp_path / "legacy.safetensors", small_mimi, mimi_io["pcm"])
    assert torch.equal(codes, mimi_io["codes_batch_nq8"])


def test_weight_norm_pairs_are_folded(tmp_path, reference_tensors, small_mimi, mimi_io):
    tensors = dict(reference_tensors)
    w = tensors.pop("encoder.model.0.conv.conv.weight")
    g = w.norm(dim=(1, 2), keepdim=True) * 2.0
    tensors["encoder.model.0.conv.conv.weight_g"] = g
    tensors["encoder.model.0.conv.conv.weight_v"] = w * 2.0  # any scale of v gives the same weight
    save_file(tensors, str(tmp_path / "wn.safetensors"))
    model = Mimi.from_checkpoint(tmp_path / "wn.safetensors", config=str(MIMI_SMALL_CONFIG))
    torch.testing.assert_close(model.encoder.model[0].weight, 2.0 * w, rtol=1e-6, atol=1e-7)


def test_torch_pickle_with_model_entry_and_fp16_load(tmp_path, reference_tensors, mimi_io):
    half = {k: v.half() if v.is_floating_point() else v for k, v in reference_tensors.items()}
    torch.save({"model": half}, tmp_path / "mimi.pt")
    model = Mimi.from_checkpoint(tmp_path / "mimi.pt", config=str(MIMI_SMALL_CONFIG))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.encode(mimi_io["pcm"]).shape == (2, 8, 12)


# ------------------------------------------------------------------------------------------------ errors
def test_missing_unexpected_and_misshaped_keys_are_listed_together(tmp_path, reference_tensors):
    tensors = dict(reference_tensors)
    del tensors["decoder.model.14.conv.conv.bias"]
    tensors["quantizer.extra.weight"] = torch.zeros(3)
    tensors["downsample.conv.conv.conv.weight"] = torch.zeros(32, 32, 3)
    save_file(tensors, str(tmp_path / "broken.safetensors"))
    with pytest.raises(CheckpointError) as e:
        Mimi.from_checkpoint(tmp_path / "broken.safetensors", config=str(MIMI_SMALL_CONFIG))
    message = str(e.value)
    assert "missing keys (1)" in message and "decoder.model.14.conv.conv.bias" in message
    assert "unexpected keys (1)" in message and "quantizer.extra.weight" in message
    assert "mis-shaped keys (1)" in message and "file [32, 32, 3], model [32, 32, 4]" in message


def test_wrong_config_for_the_file_is_a_shape_error():
    with pytest.raises(CheckpointError, match="mis-shaped keys"):
        Mimi.from_checkpoint(MIMI_SMALL)  # official config, small file


def test_a_non_mimi_checkpoint_is_named_as_such(tmp_path):
    save_file({"emb.0.weight": torch.zeros(65, 64), "text_emb.weight": torch.zeros(101, 64)},
              str(tmp_path / "lm.safetensors"))
    with pytest.raises(CheckpointError, match="is not a Mimi checkpoint: only 0 of the 318 expected keys"):
        Mimi.from_checkpoint(tmp_path / "lm.safetensors")


def test_another_models_file_is_named_in_a_few_lines(tmp_path):
    """An LM file given as the codec: the first line says so, then a few names of each kind and the counts."""
    from helpers import LM_SMALL

    with pytest.raises(CheckpointError) as e:
        Mimi.from_checkpoint(LM_SMALL, config=str(MIMI_SMALL_CONFIG))
    lines = str(e.value).splitlines()
    assert "is not a Mimi checkpoint" in lines[0] and len(lines) <= 16
    assert any(line.strip().startswith("... and") and "more" in line for line in lines)


def test_non_finite_weights_are_refused(tmp_path, reference_tensors):
    tensors = dict(reference_tensors)
    tensors["decoder.model.14.conv.conv.bias"] = torch.full_like(tensors["decoder.model.14.conv.conv.bias"],
                                                                 float("nan"))
    save_file(tensors, str(tmp_path / "nan.safetensors"))
    with pytest.raises(CheckpointError, match=r"holds non-finite values \(NaN or inf\) in 1 of .* tensors, e.g. "
                                              r"decoder.model.14.conv.conv.bias"):
        Mimi.from_checkpoint(tmp_path / "nan.safetensors", config=str(MIMI_SMALL_CONFIG))


def test_unreadable_files(tmp_path):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(MIMI_SMALL.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        Mimi.from_checkpoint(truncated, config=str(MIMI_SMALL_CONFIG))
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="neither a safetensors file nor a readable torch checkpoint"):
        Mimi.from_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        Mimi.from_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="is a folder"):
        Mimi.from_checkpoint(tmp_path)


def test_write_safetensors_is_atomic_and_keeps_normal_permissions(tmp_path):
    import os

    from safetensors.torch import load_file

    from codec.io.checkpoint import write_safetensors
    from codec.io.files import umask as _umask

    path = tmp_path / "t.safetensors"
    write_safetensors({"a": torch.arange(3)}, path, metadata={"k": "v"})
    assert torch.equal(load_file(path)["a"], torch.arange(3))
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()  # like any new file, whatever safetensors does
    os.chmod(path, 0o600)  # a file the user restricted stays restricted
    write_safetensors({"a": torch.arange(4)}, path)
    assert path.stat().st_mode & 0o777 == 0o600 and len(load_file(path)["a"]) == 4
    with pytest.raises(Exception):  # safetensors refuses non-contiguous tensors
        write_safetensors({"a": torch.zeros(3, 2).t()}, path)
    assert len(load_file(path)["a"]) == 4 and [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]
