"""--hf-repo: published models found in a (fake) local Hugging Face cache, never downloaded."""

import json

import pytest
from helpers import fake_repo

from duplex.cli import main
from duplex.errors import ModelFilesError
from duplex.runtime.checkpoints import ModelFiles

pytest.importorskip("huggingface_hub")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def resolve(repo, cache):
    return ModelFiles.from_hf_cache(repo, cache_dir=str(cache)).paths()


def test_a_legacy_repository_without_config_is_moshi_7b_with_kyutais_file_names(cache):
    snap = fake_repo(cache, "kyutai/moshiko-pytorch-bf16", {"model.safetensors": b"lm", "tokenizer_spm_32k_3.model":
                     b"spm", "tokenizer-e351c8d8-checkpoint125.safetensors": b"mimi"})
    paths = resolve("kyutai/moshiko-pytorch-bf16", cache)
    assert paths == {"lm": str(snap / "model.safetensors"), "mimi": str(snap /
                     "tokenizer-e351c8d8-checkpoint125.safetensors"), "tokenizer": str(snap /
                     "tokenizer_spm_32k_3.model"), "lm_config": "moshi_7b", "mimi_config": None}


def test_config_json_names_the_files_also_in_other_repositories(cache):
    config = {"moshi_name": "model.q8.safetensors", "mimi_name": "hf://kyutai/moshiko-pytorch-bf16/mimi.safetensors",
              "tokenizer_name": "tok.model", "dim": 4096}
    snap = fake_repo(cache, "someone/q8", {"config.json": json.dumps(config).encode(), "model.q8.safetensors": b"x",
                                           "tok.model": b"t"})
    other = fake_repo(cache, "kyutai/moshiko-pytorch-bf16", {"mimi.safetensors": b"m"})
    paths = resolve("someone/q8", cache)
    assert paths["lm"] == str(snap / "model.q8.safetensors") and paths["mimi"] == str(other / "mimi.safetensors")
    assert paths["lm_config"] == str(snap / "config.json")


def test_missing_files_are_named_with_the_download_command(cache):
    fake_repo(cache, "nvidia/personaplex-7b-v1", {"model.safetensors": b"lm"})
    with pytest.raises(ModelFilesError) as e:
        resolve("nvidia/personaplex-7b-v1", cache)
    message = str(e.value)
    assert "nvidia/personaplex-7b-v1/tokenizer_spm_32k_3.model" in message
    assert ("hf download nvidia/personaplex-7b-v1 tokenizer-e351c8d8-checkpoint125.safetensors "
            "tokenizer_spm_32k_3.model config.json") in message
    with pytest.raises(ModelFilesError, match="expected owner/name"):
        resolve("moshiko", cache)


def test_the_fetch_command_is_the_current_hugging_face_cli(cache, capsys):
    """huggingface_hub no longer installs ``huggingface-cli``: the command printed is ``hf download``."""
    fake_repo(cache, "kyutai/moshika-pytorch-bf16", {"model.safetensors": b"lm"})
    assert main(["bench", "latency", "--hf-repo", "kyutai/moshika-pytorch-bf16", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not in the Hugging Face cache" in err
    assert ("fetch with: hf download kyutai/moshika-pytorch-bf16 tokenizer-e351c8d8-checkpoint125.safetensors "
            "tokenizer_spm_32k_3.model config.json") in err and "huggingface-cli" not in err


def test_a_misspelt_repository_is_told_apart_from_missing_files(cache, capsys):
    """Nothing of the repository in the cache at all: check the name (the known ones are listed), rather than a
    list of files to download from a repository that may not exist."""
    fake_repo(cache, "kyutai/moshiko-pytorch-bf16", {"model.safetensors": b"lm"})
    assert main(["serve", "--hf-repo", "kyutai/moshico-pytorch-bf16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"no files of kyutai/moshico-pytorch-bf16 in the Hugging Face cache at {cache}: check the name" in err
    assert "known repositories: kyutai/moshiko-pytorch-bf16, kyutai/moshika-pytorch-bf16" in err


def test_the_commands_take_hf_repo_and_refuse_it_with_explicit_files(cache, capsys):
    fake_repo(cache, "kyutai/moshika-pytorch-bf16", {"model.safetensors": b"lm"})
    assert main(["serve", "--hf-repo", "kyutai/moshika-pytorch-bf16", "--lm", "x.safetensors"]) == 2
    assert "leave out --lm" in capsys.readouterr().err
    assert main(["bench", "latency", "--hf-repo", "kyutai/moshika-pytorch-bf16", "--device", "cpu"]) == 2
    assert "kyutai/moshika-pytorch-bf16/tokenizer_spm_32k_3.model" in capsys.readouterr().err
