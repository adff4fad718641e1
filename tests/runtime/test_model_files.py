"""Which files make a model (duplex.runtime.checkpoints.ModelFiles): the shipped default, an LM file with what lies
beside it, a repository in a (fake) Hugging Face cache, and the engine built from them."""

import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import FIXTURES, LM_SMALL, LM_SMALL_CONFIG, MIMI_SMALL, MIMI_SMALL_CONFIG, fake_repo
from safetensors import safe_open
from safetensors.torch import save_file

import duplex
from codec import SHIPPED_CODEC, SHIPPED_CONFIG, CheckpointError
from duplex import Engine
from duplex.cli import main
from duplex.errors import ModelFilesError
from duplex.model.config import LMConfig
from duplex.model.lm import MoshiLM
from duplex.runtime.checkpoints import (
    KYUTAI_MIMI,
    SHIPPED_LM,
    SHIPPED_TOKENIZER,
    SHIPPED_VOICES,
    ModelFiles,
    has_moshi_7b_shapes,
    is_moshi_7b,
    lm_config_for,
    moshi_7b_shapes,
)


@pytest.fixture
def run(tmp_path):
    """A folder as ``duplex train lm`` leaves it: model.safetensors, config.json and tokenizer.model."""
    shutil.copy(LM_SMALL, tmp_path / "model.safetensors")
    shutil.copy(LM_SMALL_CONFIG, tmp_path / "config.json")
    shutil.copy(ModelFiles.default().tokenizer, tmp_path / "tokenizer.model")
    return tmp_path


def a_7b_config_beside(folder):
    """An LM file (not a loadable one: its config is what counts here) with Moshi 7B's config beside it."""
    save_file({"x": torch.zeros(1)}, str(folder / "model.safetensors"))
    shutil.copy(FIXTURES / "moshi7b_config.json", folder / "config.json")
    return folder / "model.safetensors"


def test_the_default_model_is_the_shipped_files():
    files = ModelFiles.default()
    assert files.paths() == duplex.default_model_paths()
    assert (files.mimi, files.mimi_config) == (SHIPPED_CODEC, SHIPPED_CONFIG)
    assert files.lm_config.endswith("duplex-lm.json") and files.source == "the default model"
    assert files.voice_prompts == (SHIPPED_VOICES,)  # NVIDIA's voice names for it (tests/runtime/test_voices.py)
    assert files.lora_adapters == ()


def test_the_name_people_see(run):
    """What the server's page shows as the model: the default model, the LM file with its folder, the repository
    (a Hugging Face one used to be announced as the default model at start-up)."""
    assert ModelFiles.default().is_default
    assert ModelFiles.default().name == "duplex default (small, synthetic conversations)"
    files = ModelFiles.for_lm(run / "model.safetensors")
    assert not files.is_default and files.name == f"{run.name}/model.safetensors"
    repo = ModelFiles(lm="/cache/x/model.safetensors", lm_config="moshi_7b", mimi="/cache/x/mimi.safetensors",
                      source="kyutai/moshiko-pytorch-bf16")
    assert repo.name == "kyutai/moshiko-pytorch-bf16" and not repo.is_default


def test_an_lm_file_finds_its_config_and_tokenizer_beside_it(run):
    shutil.copy(MIMI_SMALL, run / "codec.safetensors")
    shutil.copy(MIMI_SMALL_CONFIG, run / "codec.json")
    files = ModelFiles.for_lm(run / "model.safetensors", mimi=run / "codec.safetensors")
    assert files.lm_config == str(run / "config.json") and files.tokenizer == str(run / "tokenizer.model")
    assert files.mimi_config == str(run / "codec.json")  # the codec's NAME.json beside it
    # a duplex-trained LM (not a Moshi 7B) goes with the codec duplex trains its models on
    assert ModelFiles.for_lm(run / "model.safetensors").mimi == SHIPPED_CODEC


def test_the_shipped_files_given_by_path_find_their_tokenizer(tmp_path):
    # `--lm duplex/weights/duplex-lm.safetensors` (or a copy of the folder) runs as the default model does, its
    # text stream included; another name in that folder does not borrow the shipped tokenizer
    assert ModelFiles.for_lm(SHIPPED_LM).tokenizer == SHIPPED_TOKENIZER
    for name in ("duplex-lm.safetensors", "duplex-lm.json", "duplex-tokenizer.model"):
        shutil.copy(os.path.join(os.path.dirname(SHIPPED_LM), name), tmp_path / name)
    assert ModelFiles.for_lm(tmp_path / "duplex-lm.safetensors").tokenizer == str(tmp_path / "duplex-tokenizer.model")
    shutil.copy(tmp_path / "duplex-lm.safetensors", tmp_path / "other.safetensors")
    shutil.copy(tmp_path / "duplex-lm.json", tmp_path / "other.json")
    assert ModelFiles.for_lm(tmp_path / "other.safetensors").tokenizer is None


def test_an_lm_file_without_config_is_never_taken_for_a_7b(tmp_path):
    shutil.copy(LM_SMALL, tmp_path / "model.safetensors")
    with pytest.raises(ModelFilesError, match="no config beside it .* not Moshi 7B's: give the LM's config"):
        ModelFiles.for_lm(tmp_path / "model.safetensors", mimi=MIMI_SMALL)
    files = ModelFiles.for_lm(tmp_path / "model.safetensors", mimi=MIMI_SMALL, lm_config=LM_SMALL_CONFIG)
    assert files.lm_config == str(LM_SMALL_CONFIG) and files.tokenizer is None
    assert lm_config_for(tmp_path / "model.safetensors", "moshi_7b") == "moshi_7b"  # said explicitly
    config = LMConfig.load(LM_SMALL_CONFIG)
    assert ModelFiles.for_lm(tmp_path / "model.safetensors", mimi=MIMI_SMALL, lm_config=config).lm_config == config


def test_engine_from_checkpoints_uses_the_config_beside_the_lm(run):
    """It used to load any LM file as a Moshi 7B, failing on a trained model with a list of mis-shaped keys."""
    engine = Engine.from_checkpoints(run / "model.safetensors", MIMI_SMALL, mimi_config=MIMI_SMALL_CONFIG, slots=1)
    assert engine.lm.config == LMConfig.load(LM_SMALL_CONFIG) and engine.tokenizer is not None
    (run / "config.json").unlink()
    with pytest.raises(ModelFilesError, match="no config beside it"):
        Engine.from_checkpoints(run / "model.safetensors", MIMI_SMALL, mimi_config=MIMI_SMALL_CONFIG, slots=1)


def test_engine_from_files_runs(run):
    files = ModelFiles.for_lm(run / "model.safetensors", mimi=MIMI_SMALL, mimi_config=MIMI_SMALL_CONFIG)
    engine = Engine.from_files(files, slots=2, device="cpu", dtype=torch.float32)
    assert engine.files == files  # what it was loaded from, for the server's page
    reference = Engine.from_checkpoints(MoshiLM.from_checkpoint(LM_SMALL, LM_SMALL_CONFIG, dtype=torch.float32),
                                        MIMI_SMALL, mimi_config=MIMI_SMALL_CONFIG, slots=2)
    outputs = []
    for e in (engine, reference):
        slot = e.open(seed=3)
        outputs.append([e.step({slot: np.full(e.frame_size, 0.01, np.float32)})[slot][0] for _ in range(3)])
    assert all(np.array_equal(a, b) for a, b in zip(*outputs))


def test_a_moshi_7b_goes_with_kyutais_mimi_beside_it(tmp_path):
    lm = a_7b_config_beside(tmp_path)
    assert is_moshi_7b(LMConfig.load(tmp_path / "config.json"))
    with pytest.raises(ModelFilesError, match=f"is a Moshi 7B: it needs Kyutai's Mimi \\({KYUTAI_MIMI}\\)"):
        ModelFiles.for_lm(lm)
    (tmp_path / KYUTAI_MIMI).write_bytes(b"mimi")
    (tmp_path / "tokenizer_spm_32k_3.model").write_bytes(b"spm")
    files = ModelFiles.for_lm(lm)  # a repository downloaded into a folder
    assert (files.mimi, files.mimi_config) == (str(tmp_path / KYUTAI_MIMI), None)
    assert files.tokenizer == str(tmp_path / "tokenizer_spm_32k_3.model")


def test_kyutais_7b_file_is_told_by_its_tensor_shapes():
    """Kyutai's published model.safetensors has no config beside it: its names and shapes (the manifest of the
    real file) say it is Moshi 7B."""
    manifest = json.loads((FIXTURES / "manifest_moshi7b_official.json").read_text())
    shapes = {key: shape for key, (shape, _) in manifest.items()}
    assert moshi_7b_shapes(shapes)
    assert not moshi_7b_shapes({**shapes, "emb.0.weight": [2049, 4095]})
    assert not moshi_7b_shapes({k: v for k, v in shapes.items() if k != "out_norm.alpha"})
    assert not has_moshi_7b_shapes(LM_SMALL)
    with safe_open(str(LM_SMALL), framework="pt") as f:
        assert not moshi_7b_shapes({k: f.get_slice(k).get_shape() for k in f.keys()})


def kyutais_published_folder(folder):
    """What ``hf download kyutai/moshiko-pytorch-bf16 --local-dir FOLDER`` leaves, the LM as a sparse file with the
    real file's header (names, shapes, bfloat16) and no data: 15 GB long, a few kB on disk."""
    manifest = json.loads((FIXTURES / "manifest_moshi7b_official.json").read_text())
    header, offset = {}, 0
    for key, (shape, _) in manifest.items():
        size = 2 * int(np.prod(shape))
        header[key] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    lm = folder / "model.safetensors"
    with open(lm, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.truncate(8 + len(text) + offset)
    (folder / KYUTAI_MIMI).write_bytes(b"mimi")
    (folder / "tokenizer_spm_32k_3.model").write_bytes(b"spm")
    return lm


def test_kyutais_published_files_need_no_config(tmp_path):
    """As the README gives them (--lm model.safetensors, no config): the file's shapes say Moshi 7B, and its codec
    and tokenizer are the ones beside it."""
    lm = kyutais_published_folder(tmp_path)
    files = ModelFiles.for_lm(lm)
    assert (files.lm_config, files.mimi, files.mimi_config) == ("moshi_7b", str(tmp_path / KYUTAI_MIMI), None)
    assert files.tokenizer == str(tmp_path / "tokenizer_spm_32k_3.model")


def test_lora_adapters_load_unfused_or_fused_and_quantized(caplog):
    """``lora_adapters`` (``--lora``): unfused beside the weights (quantized ones too), or merged (``fuse_lora``)
    before quantizing; Kyutai's ``lora: true`` without an adapter runs the weights as they are, and says so."""
    import dataclasses
    import logging

    from duplex.errors import LoRAError

    adapter = str(FIXTURES / "lora_small" / "lora.safetensors")
    files = ModelFiles(lm=str(LM_SMALL), lm_config=str(LM_SMALL_CONFIG), mimi=str(MIMI_SMALL),
                       lora_adapters=(adapter,))
    lm = files.load_lm()
    assert lm.adapters == ["lora_small"] and lm.quantization == "none"
    assert files.load_lm(quantize="int8").adapters == ["lora_small"]
    fused = dataclasses.replace(files, fuse_lora=True).load_lm(quantize="int8")
    assert fused.adapters == [] and fused.quantization == "int8"
    with pytest.raises(ModelFilesError, match="fusing takes one adapter, 2 were given"):
        dataclasses.replace(files, lora_adapters=(adapter, adapter), fuse_lora=True).load_lm()
    with pytest.raises(ModelFilesError, match="LoRA adapter not found"):
        dataclasses.replace(files, lora_adapters=("missing.safetensors",)).load()
    with pytest.raises(LoRAError, match="cannot be fused into int8 weights"):
        lora_into_quantized()
    config = LMConfig.load(str(LM_SMALL_CONFIG)).to_dict()
    with caplog.at_level(logging.WARNING):
        ModelFiles(lm=str(LM_SMALL), lm_config=LMConfig.from_dict({**config, "lora": True, "lora_rank": 4}),
                   mimi=str(MIMI_SMALL)).load_lm()
    assert "lora: true but no adapter file comes with it" in caplog.text


def lora_into_quantized():
    lm = MoshiLM.from_checkpoint(LM_SMALL, config=LM_SMALL_CONFIG, quantize="int8")
    lm.add_adapter(FIXTURES / "lora_small" / "lora.safetensors")
    lm.fuse_adapter_()


# --------------------------------------------------------------------------------------- what a new user tripped on
def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_mistyped_lm_path_says_the_file_does_not_exist(tmp_path, capsys):
    """It used to say "a Moshi 7B needs Kyutai's Mimi"."""
    missing = tmp_path / "modle.safetensors"
    assert main(["bench", "latency", "--lm", str(missing), "--device", "cpu", "--frames", "1"]) == 2
    assert f"LM checkpoint not found: {missing}" in one_line_error(capsys)
    with pytest.raises(ModelFilesError, match="LM checkpoint not found"):
        Engine.from_checkpoints(missing, MIMI_SMALL)


@pytest.mark.parametrize("text", ["text", "model weights\n", "."])
def test_a_text_file_as_lm_is_one_line_not_an_index_error(tmp_path, capsys, text):
    """Unpickling text used to end in "IndexError: pop from empty list" (and paragraphs of torch's advice)."""
    notes = tmp_path / "notes.txt"
    notes.write_text(text)
    assert main(["bench", "latency", "--lm", str(notes), "--lm-config", str(LM_SMALL_CONFIG), "--mimi",
                 str(MIMI_SMALL), "--device", "cpu", "--frames", "1", "--batch-sizes", "1"]) == 2
    err = one_line_error(capsys)
    assert "is neither a safetensors file nor a torch checkpoint" in err and "Error" not in err
    with pytest.raises(ModelFilesError, match="neither a safetensors file nor a torch checkpoint"):
        ModelFiles.for_lm(notes)
    with pytest.raises(CheckpointError, match=r"neither a safetensors file nor a readable torch checkpoint$"):
        MoshiLM.from_checkpoint(notes, LM_SMALL_CONFIG)


# ------------------------------------------------------------------------------------------------ Hugging Face
def test_a_repository_in_the_hugging_face_cache(tmp_path):
    pytest.importorskip("huggingface_hub")
    snap = fake_repo(tmp_path, "kyutai/moshiko-pytorch-bf16", {"model.safetensors": b"lm", KYUTAI_MIMI: b"mimi",
                                                               "tokenizer_spm_32k_3.model": b"spm"})
    files = ModelFiles.from_hf_cache("kyutai/moshiko-pytorch-bf16", cache_dir=tmp_path)
    assert files == ModelFiles(lm=str(snap / "model.safetensors"), lm_config="moshi_7b", mimi=str(snap / KYUTAI_MIMI),
                               tokenizer=str(snap / "tokenizer_spm_32k_3.model"),
                               source="kyutai/moshiko-pytorch-bf16")
    with pytest.raises(ModelFilesError, match="no files of kyutai/moshika-pytorch-bf16 in the Hugging Face cache"):
        ModelFiles.from_hf_cache("kyutai/moshika-pytorch-bf16", cache_dir=tmp_path)


def test_the_cache_is_found_in_a_fresh_process(tmp_path):
    """huggingface_hub does not import its ``constants`` submodule by itself (the other tests import it)."""
    pytest.importorskip("huggingface_hub")
    script = ("from duplex.runtime.checkpoints import ModelFiles\n"
              "try:\n    ModelFiles.from_hf_cache('kyutai/moshiko-pytorch-bf16')\n"
              "except Exception as e:\n    print(type(e).__name__, e)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_CACHE": str(tmp_path)})
    assert result.stdout.startswith("ModelFilesError no files of kyutai/moshiko-pytorch-bf16"), result
