"""The Moshi-family repositories --hf-repo knows (issue 24, deliverable 5), in a fake local Hugging Face cache:
the RL-tuned models, PersonaPlex, J-Moshi, and any repository in Kyutai's layout (config.json naming moshi_name,
mimi_name, mimi_config_name, tokenizer_name, as Kyutai's CheckpointInfo reads it). Nothing is downloaded."""

import json

import numpy as np
import pytest
import torch
from helpers import FIXTURES, MIMI_SMALL, MIMI_SMALL_CONFIG, fake_repo

from duplex.errors import ModelFilesError
from duplex.model.config import LMConfig
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
