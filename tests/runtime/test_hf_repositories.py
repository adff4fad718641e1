"""The Moshi-family repositories --hf-repo knows (issue 24, deliverable 5), in a fake local Hugging Face cache:
the RL-tuned models, PersonaPlex, J-Moshi, and any repository in Kyutai's layout (config.json naming moshi_name,
mimi_name, mimi_config_name, tokenizer_name, as Kyutai's CheckpointInfo reads it). Nothing is downloaded."""

import json

import numpy as np
import pytest
import torch
from helpers import FIXTURES, LM_SMALL, LM_SMALL_CONFIG, MIMI_SMALL, MIMI_SMALL_CONFIG, fake_repo

from codec import CheckpointError
from duplex.errors import ModelFilesError
from duplex.model.config import LMConfig
from duplex.model.lm import MoshiLM
from duplex.runtime.checkpoints import (
    KNOWN_REPOS,
    KYUTAI_NAMES,
    PERSONAPLEX_PRESET,
    PERSONAPLEX_REPOS,
    SHIPPED_TOKENIZER,
    ModelFiles,
)
from duplex.runtime.engine import Engine

pytest.importorskip("huggingface_hub")

KYUTAI_FILES = {name: b"x" for name in KYUTAI_NAMES.values()}
MOSHI_7B = json.loads((FIXTURES / "moshi7b_config.json").read_text())


def resolve(repo, cache):
    return ModelFiles.from_hf_cache(repo, cache_dir=str(cache))


def test_the_known_repositories():
    for repo in ("kyutai/moshika-rl-seamless", "kyutai/personaplex-rl-seamless", "nvidia/personaplex-7b-v1",
                 "nu-dialogue/j-moshi", "nu-dialogue/j-moshi-ext"):
        assert repo in KNOWN_REPOS


@pytest.mark.parametrize("repo", ["nu-dialogue/j-moshi", "nu-dialogue/j-moshi-ext", "kyutai/moshika-rl-seamless"])
def test_a_repository_without_config_is_moshi_7b(tmp_path, repo):
    """J-Moshi's repositories hold Kyutai's three file names and no config.json (its README): Kyutai's loader,
    which J-Moshi's README says to run it with, then uses its built-in Moshi 7B keywords."""
    snap = fake_repo(tmp_path, repo, KYUTAI_FILES)
    files = resolve(repo, tmp_path)
    assert files.lm_config == "moshi_7b" and files.lm == str(snap / "model.safetensors")
    assert files.source == repo and files.mimi_config is None


def test_a_repository_in_kyutais_layout(tmp_path):
    """A config.json with the file names, the 7B keywords and the generation defaults and provenance Kyutai's
    newer repositories carry: the names are followed and the config loads."""
    config = {**MOSHI_7B, "moshi_name": "model.safetensors", "mimi_name": KYUTAI_NAMES["mimi_name"],
              "tokenizer_name": KYUTAI_NAMES["tokenizer_name"], "model_type": "moshi",
              "lm_gen_config": {"temp": 0.8, "temp_text": 0.7, "top_k": 250, "top_k_text": 25},
              "model_id": {"sig": "dee3429b", "epoch": 100}}
    snap = fake_repo(tmp_path, "kyutai/moshika-rl-seamless",
                     {**KYUTAI_FILES, "config.json": json.dumps(config).encode()})
    files = resolve("kyutai/moshika-rl-seamless", tmp_path)
    assert files.lm_config == str(snap / "config.json")
    cfg = LMConfig.load(files.lm_config)
    assert cfg.dep_q == 8 and cfg.repo_extras["model_id"] == {"sig": "dee3429b", "epoch": 100}


@pytest.mark.parametrize("repo", PERSONAPLEX_REPOS)
def test_personaplex_repositories_are_read_as_nvidias_code_reads_them(tmp_path, repo):
    """NVIDIA's loader takes its config from code and fetches config.json only to count downloads: whatever that
    file says (here: other file names and an 8-step depth transformer) is not followed."""
    config = {**MOSHI_7B, "moshi_name": "other.safetensors", "tokenizer_name": "other.model"}
    snap = fake_repo(tmp_path, repo, {**KYUTAI_FILES, "config.json": json.dumps(config).encode(),
                                      "voices.tgz": b"v"})
    if PERSONAPLEX_PRESET not in LMConfig.PRESETS:  # until PersonaPlex loads: a one-line refusal
        with pytest.raises(ModelFilesError) as e:
            resolve(repo, tmp_path)
        assert "\n" not in str(e.value) and repo in str(e.value) and "PersonaPlex" in str(e.value)
        return
    files = resolve(repo, tmp_path)
    assert files.lm == str(snap / "model.safetensors") and files.lm_config == PERSONAPLEX_PRESET
    assert files.tokenizer == str(snap / KYUTAI_NAMES["tokenizer_name"])


def test_personaplex_missing_files_are_named_before_anything_else(tmp_path):
    fake_repo(tmp_path, "kyutai/personaplex-rl-seamless", {"model.safetensors": b"lm"})
    with pytest.raises(ModelFilesError, match="fetch with: hf download kyutai/personaplex-rl-seamless "
                                              "tokenizer-e351c8d8-checkpoint125.safetensors"):
        resolve("kyutai/personaplex-rl-seamless", tmp_path)


def test_a_codec_config_named_by_the_repository(tmp_path):
    """mimi_config_name: the codec's config (Kyutai's official form) is found too, or named to fetch."""
    config = {**MOSHI_7B, "mimi_name": "mimi.safetensors", "mimi_config_name": "mimi.json"}
    snap = fake_repo(tmp_path, "someone/moshi-ft", {"config.json": json.dumps(config).encode(),
                                                    "mimi.safetensors": b"m", "model.safetensors": b"lm",
                                                    KYUTAI_NAMES["tokenizer_name"]: b"t"})
    with pytest.raises(ModelFilesError, match="fetch with: hf download someone/moshi-ft mimi.json$"):
        resolve("someone/moshi-ft", tmp_path)
    (snap / "mimi.json").write_text("{}")
    assert resolve("someone/moshi-ft", tmp_path).mimi_config == str(snap / "mimi.json")


def test_a_repository_of_a_newer_config_runs_exactly(tmp_path):
    """End to end: a repository in Kyutai's layout holding an LM with grouped KV heads, low-rank depth embeddings
    and depth norms (made with Kyutai's code, tests/fixtures/config_keys), its codec and its codec config named
    by config.json: loaded from the cache, it generates Kyutai's tokens."""
    from safetensors.torch import load_file

    keys = FIXTURES / "config_keys"
    config = {**json.loads((keys / "all.json").read_text()), "moshi_name": "lm.safetensors",
              "mimi_name": "mimi.safetensors", "mimi_config_name": "mimi.json", "tokenizer_name": "tok.model"}
    tokenizer = open(SHIPPED_TOKENIZER, "rb").read()
    fake_repo(tmp_path, "someone/moshi-newer", {
        "config.json": json.dumps(config).encode(), "lm.safetensors": (keys / "all.safetensors").read_bytes(),
        "mimi.safetensors": MIMI_SMALL.read_bytes(), "mimi.json": MIMI_SMALL_CONFIG.read_bytes(),
        "tok.model": tokenizer})
    files = resolve("someone/moshi-newer", tmp_path)
    lm, mimi, _ = files.load(dtype=torch.float32)
    assert mimi.num_codebooks == 8
    io = load_file(str(keys / "all_io.safetensors"))
    gen = lm.generator(2, greedy=True)
    out = torch.stack([gen.step(io["gen_user_tokens"][:, :, s]) for s in range(40)], dim=-1)
    assert torch.equal(out, io["gen_out"])
    # And the engine serves it: audio in, audio frames out.
    engine = Engine.from_files(files, slots=2, device="cpu", dtype=torch.float32)
    slot = engine.open(seed=3)
    frames = [engine.step({slot: np.full(engine.frame_size, 0.01, np.float32)})[slot][0] for _ in range(4)]
    assert all(f.shape == (engine.frame_size,) and np.isfinite(f).all() for f in frames[1:])


Q8_CODEC = {"tokenizer-e351c8d8-checkpoint125.safetensors": MIMI_SMALL.read_bytes(),
            "mimi.json": MIMI_SMALL_CONFIG.read_bytes(),
            "tokenizer_spm_32k_3.model": open(SHIPPED_TOKENIZER, "rb").read()}


def q8_repository(cache, tmp_path, repo="kyutai/moshiko-pytorch-q8", source="kyutai/moshiko-pytorch-bf16"):
    """A q8 repository as Kyutai's exporter (scripts/export_quantized.py) writes one: ``model.q8.safetensors``,
    config.json with ``moshi_name`` set to it, ``"quantize": true``, and the codec and tokenizer named in the bf16
    repository it was made from (hf://). The LM is the small fixture model quantized to int8 (Kyutai's layout);
    the codec config is named too, as the small codec needs one."""
    saved = MoshiLM.from_checkpoint(LM_SMALL, config=LM_SMALL_CONFIG, dtype=torch.float32).quantize_("int8").save(
        tmp_path / "export")
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["quantize"] is True
    config.update(moshi_name="model.q8.safetensors", quantize=True,
                  mimi_name=f"hf://{source}/tokenizer-e351c8d8-checkpoint125.safetensors",
                  mimi_config_name=f"hf://{source}/mimi.json",
                  tokenizer_name=f"hf://{source}/tokenizer_spm_32k_3.model")
    return fake_repo(cache, repo, {"config.json": json.dumps(config).encode(),
                                   "model.q8.safetensors": open(saved, "rb").read()})


def test_kyutais_q8_repositories_are_known():
    for repo in ("kyutai/moshiko-pytorch-q8", "kyutai/moshika-pytorch-q8"):
        assert repo in KNOWN_REPOS and "int8" in KNOWN_REPOS[repo]


def test_a_q8_repository_loads_int8_with_the_codec_and_tokenizer_of_its_bf16_repository(tmp_path):
    cache = tmp_path / "hub"
    q8 = q8_repository(cache, tmp_path)
    bf16 = fake_repo(cache, "kyutai/moshiko-pytorch-bf16", Q8_CODEC)
    files = resolve("kyutai/moshiko-pytorch-q8", cache)
    assert files.lm == str(q8 / "model.q8.safetensors") and files.lm_config == str(q8 / "config.json")
    assert files.mimi == str(bf16 / "tokenizer-e351c8d8-checkpoint125.safetensors")
    assert files.tokenizer == str(bf16 / "tokenizer_spm_32k_3.model") and files.source == "kyutai/moshiko-pytorch-q8"
    lm = files.load_lm(dtype=torch.float32)
    assert lm.quantization == "int8"
    engine = Engine.from_files(files, slots=1, device="cpu", dtype=torch.float32)
    assert engine.quantization == {"weights": "int8", "kv": "float32", "compute": "float32"}
    slot = engine.open(seed=1)
    audio, _ = engine.step({slot: np.full(engine.frame_size, 0.01, np.float32)})[slot]
    assert audio.shape == (engine.frame_size,) and np.isfinite(audio).all()
    with pytest.raises(CheckpointError, match="holds int8 weights: it cannot be loaded as fp8"):
        files.load_lm(quantize="fp8")
    with pytest.raises(CheckpointError, match="holds int8 weights: it cannot be loaded unquantized"):
        files.load_lm(quantize="none")


def test_a_q8_repository_without_its_bf16_files_names_the_bf16_repository_to_fetch(tmp_path):
    cache = tmp_path / "hub"
    q8_repository(cache, tmp_path, "kyutai/moshika-pytorch-q8", "kyutai/moshika-pytorch-bf16")
    with pytest.raises(ModelFilesError) as missing:
        resolve("kyutai/moshika-pytorch-q8", cache)
    message = str(missing.value)
    assert message.endswith("fetch with: hf download kyutai/moshika-pytorch-bf16 "
                            "tokenizer-e351c8d8-checkpoint125.safetensors tokenizer_spm_32k_3.model mimi.json")
    assert "hf download kyutai/moshika-pytorch-q8" not in message  # the q8 repository's own files are there
    with pytest.raises(ModelFilesError, match="no files of kyutai/moshiko-pytorch-q8 .* known repositories: .*"
                       "kyutai/moshiko-pytorch-q8, kyutai/moshika-pytorch-q8.*hf download kyutai/moshiko-pytorch-q8"):
        resolve("kyutai/moshiko-pytorch-q8", cache)
