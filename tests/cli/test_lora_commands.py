"""``--lora FILE [--fuse]`` and ``--adapter NAME`` on ``duplex offline``, ``mic`` and ``bench turns run`` (issue 26,
deliverable 3), on the small fixture model and its rank-4 adapter: unfused, fused and the base model give what the
engine gives; bad combinations are one line, said before the model loads where the paths tell; adapter names (a
moshi-finetune checkpoint's is its run's) are unique; ``bench turns run`` records the adapters in its setup and runs
every sample with the chosen one."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import FIXTURES, SMALL_MODEL_ARGS, speech
from safetensors.torch import load_file, save_file

from duplex.cli import main
from duplex.errors import LoRAError, ModelFilesError
from duplex.model.lora import lora_name
from duplex.runtime.checkpoints import ModelFiles

ADAPTER = FIXTURES / "lora_small" / "lora.safetensors"


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Adapters for the small model: ``inverted`` (the fixture's with lora_B negated), ``wide`` (shapes of another
    model) and a second ``lora_small`` (a copy in another folder of that name)."""
    root = tmp_path_factory.mktemp("adapters")
    stored = load_file(ADAPTER)
    made = {}
    for name, tensors in (("inverted", {k: -v if ".lora_B." in k else v for k, v in stored.items()}),
                          ("wide", {k: torch.cat([v, v], 1) if ".lora_A." in k else v for k, v in stored.items()}),
                          ("copy/lora_small", stored)):
        folder = root / name
        folder.mkdir(parents=True)
        save_file(tensors, folder / "lora.safetensors")
        shutil.copy(ADAPTER.parent / "config.json", folder / "config.json")
        made[name] = str(folder / "lora.safetensors")
    return made


@pytest.fixture
def wav(tmp_path):
    path = tmp_path / "in.wav"
    sf.write(path, speech(1.0, seed=1), 24000, subtype="FLOAT")
    return path


def _offline(tmp_path, wav, name, *extra):
    out = tmp_path / f"{name}.wav"
    code = main(["offline", str(wav), str(out), "--greedy", *SMALL_MODEL_ARGS, *extra])
    return code, (sf.read(out)[0] if code == 0 else None)


def test_adapter_names_come_from_the_paths():
    assert lora_name(ADAPTER) == "lora_small"
    assert lora_name("/x/persona.safetensors") == "persona"
    assert lora_name("/runs/greeter/checkpoints/checkpoint_000500/consolidated/lora.safetensors") == "greeter"
    assert lora_name("/x/other/consolidated/lora.safetensors") == "other"


def test_offline_runs_an_adapter_unfused_fused_or_the_base_model(tmp_path, wav, capsys, adapters):
    runs = {}
    for name, extra in (("base", []), ("lora", ["--lora", str(ADAPTER)]), ("fused", ["--lora", str(ADAPTER), "--fuse"]),
                        ("none", ["--lora", str(ADAPTER), "--lora", adapters["inverted"], "--adapter", "none"]),
                        ("inverted", ["--lora", str(ADAPTER), "--lora", adapters["inverted"], "--adapter",
                                      "inverted"])):
        code, runs[name] = _offline(tmp_path, wav, name, *extra)
        err = capsys.readouterr().err
        assert code == 0, err
        said = {"base": "through the engine as fast", "lora": "with adapter lora_small as fast",
                "fused": "with adapter lora_small (fused)", "none": "with the base model",
                "inverted": "with adapter inverted"}[name]
        assert said in err, err
    np.testing.assert_array_equal(runs["lora"], runs["fused"])  # fused as Kyutai fuses: the same greedy tokens
    np.testing.assert_array_equal(runs["none"], runs["base"])
    assert not np.array_equal(runs["lora"], runs["base"]) and not np.array_equal(runs["inverted"], runs["lora"])


def test_bad_combinations_are_one_line(tmp_path, wav, capsys, adapters):
    cases = [
        (["--fuse"], "--fuse merges a --lora adapter: give one"),
        (["--lora", str(ADAPTER), "--lora", adapters["inverted"], "--fuse"],
         "--fuse merges one adapter into the weights, 2 were given"),
        (["--lora", str(ADAPTER), "--lora", adapters["copy/lora_small"]], "are both named 'lora_small'"),
        (["--lora", str(ADAPTER), "--adapter", "nope"],
         "--adapter 'nope': the adapters given are lora_small ('none' runs the base model)"),
        (["--adapter", "lora_small"], "--adapter 'lora_small': no --lora adapter was given"),
        (["--lora", str(ADAPTER), "--fuse", "--adapter", "lora_small"], "with --fuse the adapter is merged"),
        (["--lora", str(tmp_path / "missing.safetensors")], "LoRA adapter not found"),
        (["--lora", adapters["wide"]], "which do not fit the weight [192, 64] (an adapter for another model?)"),
    ]
    for extra, words in cases:
        code = main(["offline", str(wav), str(tmp_path / "out.wav"), *SMALL_MODEL_ARGS, *extra])
        err = capsys.readouterr().err
        assert code == 2 and words in err and err.count("\n") == 1, (extra, err)
    for extra, words in cases[:3]:  # the server says the same before its model loads
        assert main(["serve", "--port", "0", "--slots", "1", *SMALL_MODEL_ARGS, *extra]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, (extra, err)
    for command in (["mic", "--input-file", str(wav), "--output-file", str(tmp_path / "out.wav")],
                    ["bench", "turns", "run", str(tmp_path), str(tmp_path / "out")]):
        assert main([*command, *SMALL_MODEL_ARGS, "--lora", str(ADAPTER), "--adapter", "nope"]) == 2
        err = capsys.readouterr().err
        assert "--adapter 'nope'" in err and err.count("\n") == 1, err


def test_adapter_names_are_checked_where_files_load(adapters):
    from helpers import LM_SMALL, LM_SMALL_CONFIG, MIMI_SMALL, MIMI_SMALL_CONFIG

    files = ModelFiles.for_lm(LM_SMALL, mimi=MIMI_SMALL, lm_config=LM_SMALL_CONFIG, mimi_config=MIMI_SMALL_CONFIG)
    twice = dataclasses.replace(files, lora_adapters=(str(ADAPTER), adapters["copy/lora_small"]))
    with pytest.raises(ModelFilesError, match="both named 'lora_small'"):
        twice.load()
    lm = files.load_lm(dtype=torch.float32)
    lm.add_adapter(ADAPTER)
    with pytest.raises(LoRAError, match="already has an adapter of that name"):
        lm.add_adapter(adapters["copy/lora_small"])


def test_mic_from_a_file_runs_the_chosen_adapter(tmp_path, wav, capsys, adapters):
    code, offline = _offline(tmp_path, wav, "offline", "--lora", str(ADAPTER), "--lora", adapters["inverted"],
                             "--adapter", "inverted")
    assert code == 0
    out = tmp_path / "mic.wav"
    assert main(["mic", "--input-file", str(wav), "--output-file", str(out), *SMALL_MODEL_ARGS, "--lora", str(ADAPTER),
                 "--lora", adapters["inverted"], "--adapter", "inverted"]) == 0
    assert "with adapter inverted" in capsys.readouterr().err
    assert sf.read(out)[0].shape == offline.shape  # (mic samples; its replies are compared in bench turns below)


def test_bench_turns_records_its_adapters_and_refuses_a_resume_with_others(tmp_path, capsys, monkeypatch, adapters):
    from duplex.bench.turntaking import runner
    from tests.bench.fake_engine import FakeEngine, fdb_set

    opened = []

    class AdaptedFake(FakeEngine):
        def open(self, seed, adapter=None):
            opened.append(adapter)
            return super().open(seed)

    source = fdb_set(tmp_path / "set")
    out = tmp_path / "out"
    monkeypatch.setattr("duplex.cli.turns.build_engine",
                        lambda args, slots, files=None: AdaptedFake(interrupt_at_step=17))
    monkeypatch.setattr("duplex.cli.turns.system_prompt", lambda args, engine: None)
    args = ["bench", "turns", "run", str(source), str(out), "--slots", "2", "--device", "cpu", "--lora", str(ADAPTER),
            "--lora", adapters["inverted"]]
    assert main([*args, "--adapter", "inverted"]) == 130
    setup = json.loads((out / runner.MARK).read_text())["setup"]
    assert setup["lora"] == [str(ADAPTER), adapters["inverted"]] and setup["fuse"] is False
    assert setup["adapter"] == "inverted" and set(opened) == {"inverted"}
    capsys.readouterr()
    assert main(args) == 2  # the default adapter (the first) is another setup
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "adapter 'inverted' (this run: 'lora_small')" in err
    plain = ["bench", "turns", "run", str(source), str(tmp_path / "plain"), "--slots", "2", "--device", "cpu"]
    assert main(plain) == 130
    setup = json.loads((tmp_path / "plain" / runner.MARK).read_text())["setup"]
    assert "lora" not in setup and "adapter" not in setup  # a run without adapters records what it did before


@pytest.mark.slow
def test_bench_turns_runs_every_sample_with_the_chosen_adapter(tmp_path, capsys, adapters):
    from tests.bench.fake_engine import fdb_set

    source = fdb_set(tmp_path / "set", seconds=(0.5, 0.4))
    outputs = {}
    for name, extra in (("base", []), ("lora", ["--lora", str(ADAPTER)]),
                        ("none", ["--lora", str(ADAPTER), "--adapter", "none"])):
        report = tmp_path / f"{name}.json"
        assert main(["bench", "turns", "run", str(source), str(tmp_path / name), *SMALL_MODEL_ARGS, "--slots", "2",
                     "--json", str(report), *extra]) == 0
        outputs[name] = sorted(p.read_bytes() for p in (tmp_path / name).rglob("output.wav"))
        if extra:
            assert json.loads(report.read_text())["run"]["setup"]["adapter"] == ("none" if "none" in extra
                                                                                 else "lora_small")
    assert outputs["none"] == outputs["base"] and outputs["lora"] != outputs["base"]
