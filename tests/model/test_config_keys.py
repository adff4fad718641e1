"""The newer keys of Kyutai's LMModel (docs/kyutai-compat.md, "Newer config keys"): supported ones against vectors
made with Kyutai's moshi 0.2.13 (tests/fixtures/make_config_keys.py), refused ones with a one-line message that
names the key and the checkpoint family."""

import json

import pytest
import torch
from helpers import FIXTURES

from duplex.errors import LMConfigError
from duplex.model.config import LMConfig
from duplex.model.lm import MoshiLM

KEYS = FIXTURES / "config_keys"
CASES = ["kv_repeat", "depformer_kv_repeat", "depformer_layer_norm_low_rank", "depformer_rms_norm", "all"]


def _load(name):
    from safetensors.torch import load_file

    lm = MoshiLM.from_checkpoint(KEYS / f"{name}.safetensors", config=KEYS / f"{name}.json", dtype=torch.float32)
    return lm, load_file(str(KEYS / f"{name}_io.safetensors"))


def _run(gen, user, steps=40):
    return torch.stack([gen.step(user[:, :, s]) for s in range(steps)], dim=-1)


@pytest.mark.parametrize("name", CASES)
def test_greedy_generation_identical(name):
    """40 greedy steps, batch of 2, a 16-step context (the KV ring wraps twice): the same tokens as Kyutai's LMGen."""
    lm, io = _load(name)
    assert torch.equal(_run(lm.generator(2, greedy=True), io["gen_user_tokens"]), io["gen_out"])


@pytest.mark.parametrize("name", [n for n in CASES if n not in ("depformer_rms_norm", "all")])
def test_forward_logits(name):
    """The training forward within 1e-4 of Kyutai's (the RMS-norm cases have none: Kyutai's RMSNorm asserts a 3-D
    input, and its training forward gives the per-codebook norms [B*T, D])."""
    lm, io = _load(name)
    out = lm.forward_train(io["codes"][:, :, :12])
    assert torch.equal(out.mask, io["fwd_mask"]) and torch.equal(out.text_mask, io["fwd_text_mask"])
    torch.testing.assert_close(out.logits[out.mask], io["fwd_logits"][out.mask], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.text_logits[out.text_mask], io["fwd_text_logits"][out.text_mask],
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", CASES)
def test_bfloat16_generation_runs(name):
    """bfloat16 (the default load dtype on CUDA) takes the other paths: the fused attention kernel with the grouped
    queries, the norms in their own dtypes. Exactness is a float32 property; here, valid tokens."""
    from safetensors.torch import load_file

    io = load_file(str(KEYS / f"{name}_io.safetensors"))
    lm = MoshiLM.from_checkpoint(KEYS / f"{name}.safetensors", config=KEYS / f"{name}.json", dtype=torch.bfloat16)
    out = _run(lm.generator(2, seed=1), io["gen_user_tokens"], 20)
    assert (out[:, :, 0] == -2).all() and (out[:, 1:, 1:] >= 0).all() and (out[:, 1:, 1:] < lm.config.card).all()
    assert (out[:, 0, 1:] >= 0).all() and (out[:, 0, 1:] < lm.config.text_card).all()


def test_grouped_heads_keep_only_kv_heads_in_the_ring():
    """kv_repeat 2: the KV ring and the depth cache hold half the heads (the memory grouped heads save)."""
    lm, io = _load("kv_repeat")
    gen = lm.generator(1, greedy=True)
    assert gen.state["layers"]["0"]["k"].shape[1] == lm.config.num_heads // 2
    assert gen.scratch["depth"]["layers"]["0"]["k"].shape[1] == lm.config.depformer_num_heads // 2


def test_slot_isolation_with_grouped_heads():
    """Slot 1 of 3 equals its conversation run alone while the others get other input and one is reset."""
    lm, io = _load("all")
    user = io["gen_user_tokens"]
    gen = lm.generator(3, greedy=True)
    noise = torch.Generator().manual_seed(0)
    outs = []
    for s in range(40):
        codes = torch.randint(0, lm.config.card, (3, 8), generator=noise)
        codes[1] = user[0, :, s]
        if s == 11:
            gen.reset(torch.tensor([True, False, True]))
        outs.append(gen.step(codes))
    assert torch.equal(torch.stack(outs, -1)[1], io["gen_out"][0])


@pytest.mark.parametrize("name", CASES)
def test_save_round_trip(name, tmp_path):
    """``save`` writes the keys back in Kyutai's layout; the file loads again to the same tokens."""
    lm, io = _load(name)
    path = lm.save(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    given = json.loads((KEYS / f"{name}.json").read_text())
    assert {k: written[k] for k in given} == given
    again = MoshiLM.from_checkpoint(path, config=tmp_path / "config.json", dtype=torch.float32)
    assert torch.equal(_run(again.generator(2, greedy=True), io["gen_user_tokens"], 12), io["gen_out"][:, :, :12])


def test_moshi_configs_unchanged_by_the_newer_keys():
    """Defaults are not written: a Moshi-shaped config writes exactly the keys it did (Kyutai's loader would take
    depformer_kv_repeat=None for a head count)."""
    written = LMConfig.moshi_7b().to_dict()
    assert not {"kv_repeat", "depformer_kv_repeat", "depformer_norm", "depformer_low_rank_embeddings"} & set(written)
    explicit = LMConfig.from_dict({**written, "kv_repeat": 1, "depformer_norm": None,
                                   "depformer_low_rank_embeddings": None})
    assert explicit.to_dict() == written


BASE = json.loads((FIXTURES / "lm_small_config.json").read_text())


@pytest.mark.parametrize("key, value, family", [
    ("demux_second_stream", True, "TTS"),
    ("demux_second_text_stream", True, "TTS"),
    ("cross_attention", True, "TTS"),
    ("depformer_weights_per_step_schedule", [0, 1, 2, 3, 4, 5, 6, 6], "TTS"),
    ("conditioners", {"speaker_wavs": {"type": "tensor", "tensor": {"dim": 512}}}, "TTS and Hibiki"),
    ("fuser", {"cross": ["speaker_wavs"]}, "TTS and Hibiki"),
    ("extra_heads_num_heads", 4, "STT"),
    ("norm_emb", True, "no published dialogue checkpoint"),
    ("bias_proj", True, "no published dialogue checkpoint"),
    ("model_type", "hibiki", "Hibiki"),
    ("tts_config", {"audio_delay": 1.28}, "TTS"),
    ("stt_config", {"audio_delay_seconds": 0.5}, "STT"),
    ("dep_q", 0, "STT"),
])
def test_unsupported_keys_are_refused_with_the_family(key, value, family):
    with pytest.raises(LMConfigError) as e:
        LMConfig.from_dict({**BASE, key: value})
    message = str(e.value)
    assert "\n" not in message and key in message and family in message, message


def test_kyutai_q8_quantize_key_is_kept_with_the_repository_keys():
    """Kyutai's q8 repositories say ``"quantize": true`` (the weights file holds int8 codes, told from its tensors
    too): accepted, kept aside like the file names, written back; anything but a boolean is refused."""
    cfg = LMConfig.from_dict({**BASE, "quantize": True})
    assert cfg.repo_extras["quantize"] is True and cfg.to_dict()["quantize"] is True
    with pytest.raises(LMConfigError, match="quantize must be true or false"):
        LMConfig.from_dict({**BASE, "quantize": "int8"})


@pytest.mark.parametrize("change, words", [
    ({"kv_repeat": 3}, "kv_repeat must be at least 1 and divide the 4 heads"),
    ({"kv_repeat": 4}, "which the depth transformer inherits"),
    ({"kv_repeat": 4, "depformer_kv_repeat": 2}, None),
    ({"depformer_kv_repeat": 0}, "depformer_kv_repeat must be at least 1"),
    ({"kv_repeat": "2"}, "kv_repeat must be an integer"),
    ({"depformer_norm": "batch_norm"}, "depformer_norm 'batch_norm' is not one of"),
    ({"depformer_low_rank_embeddings": 0}, "depformer_low_rank_embeddings must be at least 1"),
])
def test_newer_key_values_are_checked(change, words):
    if words is None:
        assert LMConfig.from_dict({**BASE, **change}).depformer_kv_heads == 1
        return
    with pytest.raises(LMConfigError, match=words):
        LMConfig.from_dict({**BASE, **change})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", CASES)
def test_cuda_matches_reference(name):
    """On CUDA in float32 (no TF32) the same tokens and logits; in bfloat16 (the fused attention kernel with the
    grouped queries) valid tokens."""
    from safetensors.torch import load_file

    io = load_file(str(KEYS / f"{name}_io.safetensors"))
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        lm = MoshiLM.from_checkpoint(KEYS / f"{name}.safetensors", config=KEYS / f"{name}.json", device="cuda",
                                     dtype=torch.float32)
        out = _run(lm.generator(2, greedy=True), io["gen_user_tokens"].cuda())
        assert torch.equal(out.cpu(), io["gen_out"])
        if "fwd_logits" in io:
            fwd = lm.forward_train(io["codes"][:, :, :12].cuda())
            torch.testing.assert_close(fwd.logits.cpu()[io["fwd_mask"]], io["fwd_logits"][io["fwd_mask"]],
                                       atol=1e-4, rtol=0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    lm = MoshiLM.from_checkpoint(KEYS / f"{name}.safetensors", config=KEYS / f"{name}.json", device="cuda",
                                 dtype=torch.bfloat16)
    out = _run(lm.generator(2, seed=1), io["gen_user_tokens"].cuda(), 20).cpu()
    assert (out[:, :, 0] == -2).all() and (out[:, 1:, 1:] >= 0).all() and (out[:, 1:, 1:] < lm.config.card).all()
