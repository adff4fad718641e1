"""``bench turns run`` as a long job: Ctrl-C keeps the finished samples and says so, the same run again resumes
(skipping them), a folder it did not make is refused, the ETA is never negative; and scoring in the same process
leaves torch's thread count alone (same-seed runs repeat exactly). A stand-in engine keeps these fast."""

import json
import os
import subprocess
import sys

import pytest
from fake_engine import FakeEngine, fdb_set

from duplex.bench.turntaking import runner
from duplex.cli import main
from duplex.errors import UsageError


def _outputs(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("output.*"))}


def test_an_interrupted_run_keeps_its_samples_and_the_same_run_resumes(tmp_path, capsys):
    source = fdb_set(tmp_path / "set")
    whole = tmp_path / "whole"
    runner.run_samples(FakeEngine(), source, whole, seed=5)

    out = tmp_path / "out"
    with pytest.raises(runner.RunInterrupted, match=r"interrupted: 1 of 3 samples finished are kept in .*out"):
        runner.run_samples(FakeEngine(interrupt_at_step=17), source, out, seed=5)  # sample 0 ends at frame 13
    assert (out / runner.MARK).is_file() and len(list(out.rglob("output.json"))) == 1
    # scoring it meanwhile says the figures are of part of the run
    assert main(["bench", "turns", "score", str(out), "--no-vad"]) == 0
    assert "holds an unfinished run" in capsys.readouterr().err

    seen = []
    engine = FakeEngine()
    ran = runner.run_samples(engine, source, out, seed=5, progress=seen.append)
    assert ran["samples"] == 3 and ran["skipped"] == 1
    assert seen[0].skipped == 1 and seen[0].total == 2  # said before the first sample
    assert sorted(engine.opened) == [6, 7]  # the finished sample 0 (seed 5 + 0) is not run again
    assert _outputs(out) == _outputs(whole)  # as if never interrupted
    assert not (out / runner.MARK).exists()  # complete: a third run is refused
    with pytest.raises(UsageError, match="is not empty"):
        runner.check_output(source, out, 5, 2)


def test_a_folder_the_run_did_not_make_is_refused(tmp_path):
    source = fdb_set(tmp_path / "set")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("someone else's")
    with pytest.raises(UsageError, match="is not empty"):
        runner.run_samples(FakeEngine(), source, other)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]  # nothing mixed in
    out = tmp_path / "out"
    with pytest.raises(runner.RunInterrupted):
        runner.run_samples(FakeEngine(interrupt_at_step=17), source, out, seed=1)
    with pytest.raises(UsageError, match="unfinished run of .* with seed 1 and 2 slots"):
        runner.run_samples(FakeEngine(), source, out, seed=2)  # another seed would mix two runs


def test_ctrl_c_exits_130_and_says_what_was_kept(tmp_path, capsys, monkeypatch):
    source = fdb_set(tmp_path / "set")
    out = tmp_path / "out"
    engines = iter([FakeEngine(interrupt_at_step=17), FakeEngine()])
    monkeypatch.setattr("duplex.cli.turns.build_engine", lambda args, slots, files=None: next(engines))
    args = ["bench", "turns", "run", str(source), str(out), "--slots", "2", "--seed", "4"]
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "interrupted: 1 of 3 samples finished are kept" in err and "the same command again runs the rest" in err
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "resuming: 1 sample finished by the interrupted run is kept, 2 to go" in captured.err
    assert "3 samples (1 finished earlier)" in captured.err and "smooth_turn_taking" in captured.out
    assert main(args) == 2  # complete now: not a folder to run into again
    assert "is not empty" in capsys.readouterr().err


def test_the_eta_is_never_negative():
    # the headers' lengths can fall a sample short of the decoded audio's
    assert str(runner.Progress(2, 3, 5.0001, 5.0, 2.0)).endswith("ETA 0 s")
    assert str(runner.Progress(3, 3, 6.0, 6.0, 2.0)).endswith("ETA 0 s")
    assert str(runner.Progress(1, 3, 2.0, 6.0, 1.0)).endswith("ETA 2 s")
    assert "ETA ? s" in str(runner.Progress(0, 3, 0.0, 6.0, 0.0))


def test_scoring_leaves_torchs_thread_count_alone():
    """silero_vad sets torch to one thread when imported: a run after a scoring in the same process then summed
    in another order (a same-seed rerun differed by one 16-bit step)."""
    code = ("import numpy as np, torch\n"
            "torch.set_num_threads(3)\n"
            "from duplex.bench.turntaking import vad\n"
            "vad.speech_segments(np.zeros(16000, np.float32), 16000)\n"
            "print(torch.get_num_threads())\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "3"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3"


def test_a_resumed_run_must_have_the_same_setup(tmp_path):
    """Issue 24's leftover: the model, the prompts and the quantization change the outputs as much as the seed, so
    a resume with another of them is refused, naming what differs and how to go on."""
    source = fdb_set(tmp_path / "set")
    out = tmp_path / "out"
    setup = {"model": "m", "text_prompt": None, "quantize": "int8", "kv_dtype": "fp8"}
    with pytest.raises(runner.RunInterrupted):
        runner.run_samples(FakeEngine(interrupt_at_step=17), source, out, seed=1, setup=setup)
    runner.check_output(source, out, 1, 2, dict(setup))  # the same setup resumes
    with pytest.raises(UsageError) as refused:
        runner.check_output(source, out, 1, 2, {**setup, "quantize": None, "text_prompt": "Be brief."})
    message = str(refused.value)
    assert "\n" not in message and "unfinished run made with another setup" in message
    assert "quantize 'int8' (this run: not given)" in message and "text prompt not given (this run: 'Be brief.')" \
        in message and "model" not in message.split("setup:")[1]
    assert message.endswith("run it again with the same options to finish it, or give a new folder")
    with pytest.raises(UsageError, match="this run's setup is not recorded"):
        runner.check_output(source, out, 1, 2, None)  # from Python without one
    ran = runner.run_samples(FakeEngine(), source, out, seed=1, setup=setup)
    assert ran["skipped"] == 1


def test_a_mark_of_an_older_duplex_is_refused_with_what_to_do(tmp_path):
    """A mark without a setup (written before it was recorded) cannot say what model and prompts its run used."""
    source = fdb_set(tmp_path / "set")
    out = tmp_path / "out"
    with pytest.raises(runner.RunInterrupted):
        runner.run_samples(FakeEngine(interrupt_at_step=17), source, out, seed=1)
    mark = json.loads((out / runner.MARK).read_text())
    del mark["setup"]
    (out / runner.MARK).write_text(json.dumps(mark))
    with pytest.raises(UsageError, match="made by an older duplex, which did not record its model, prompts and "
                       "quantization, so it cannot be checked against this one: give a new folder$"):
        runner.check_output(source, out, 1, 2, {"model": "m"})


def test_the_command_records_its_setup_and_refuses_another_quantization(tmp_path, capsys, monkeypatch):
    source = fdb_set(tmp_path / "set")
    out = tmp_path / "out"
    monkeypatch.setattr("duplex.cli.turns.build_engine",
                        lambda args, slots, files=None: FakeEngine(interrupt_at_step=17))
    monkeypatch.setattr("duplex.cli.turns.system_prompt", lambda args, engine: None)  # the stand-in has no model
    args = ["bench", "turns", "run", str(source), str(out), "--slots", "2", "--device", "cpu"]
    assert main([*args, "--quantize", "int8", "--kv-dtype", "fp8", "--text-prompt", "Be brief."]) == 130
    setup = json.loads((out / runner.MARK).read_text())["setup"]
    assert setup["quantize"] == "int8" and setup["kv_dtype"] == "fp8" and setup["text_prompt"] == "Be brief."
    assert setup["model"].startswith("duplex default") and setup["device"] == "cpu"
    capsys.readouterr()
    assert main([*args, "--kv-dtype", "fp8", "--text-prompt", "Be brief."]) == 2  # --quantize left out
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "quantize 'int8' (this run: not given)" in err


def test_sampling_options_reach_every_sample_and_are_part_of_the_setup(tmp_path, capsys, monkeypatch):
    """--temp-text, --topk-audio ... (duplex offline's options) change every sample's slot, with its own seed; the
    setup records what differs from the defaults, so a run resumes only with the same, and a default run records
    none (its setup is the one of before the options)."""
    source = fdb_set(tmp_path / "set")
    engines = []

    def engine(args, slots, files=None):
        engines.append(FakeEngine(interrupt_at_step=17))
        return engines[-1]

    monkeypatch.setattr("duplex.cli.turns.build_engine", engine)
    monkeypatch.setattr("duplex.cli.turns.system_prompt", lambda args, engine: None)
    monkeypatch.setattr("duplex.cli.turns.score_dir", lambda *a, **k: {"tasks": {}})
    args = ["bench", "turns", "run", str(source), str(tmp_path / "out"), "--slots", "2", "--seed", "3"]
    assert main([*args, "--temp-text", "0.3", "--topk-audio", "100", "--temp-audio", "0.8"]) == 130
    setup = json.loads((tmp_path / "out" / runner.MARK).read_text())["setup"]
    assert setup["sampling"] == {"text_temperature": 0.3, "top_k": 100}  # 0.8 is the default: not recorded
    assert engines[-1].sampling[0] == {"text_temperature": 0.3, "top_k": 100} and engines[-1].opened[:2] == [3, 4]
    capsys.readouterr()
    assert main([*args, "--temp-text", "0.5"]) == 2  # another sampling: not this run
    assert "sampling" in capsys.readouterr().err
    assert main([*args[:4], str(tmp_path / "greedy"), "--slots", "2", "--greedy"]) == 130
    assert engines[-1].sampling[0] == {"temperature": 0.0, "text_temperature": 0.0}
    assert main([*args[:4], str(tmp_path / "plain"), "--slots", "2"]) == 130
    assert "sampling" not in json.loads((tmp_path / "plain" / runner.MARK).read_text())["setup"]
    assert engines[-1].sampling[0] == {}


@pytest.mark.slow
def test_a_real_quantized_run_reports_what_ran(tmp_path, capsys):
    """The small fixture model, int8 weights and an fp8 ring: the report says so, beside the setup it recorded."""
    from helpers import SMALL_MODEL_ARGS

    source = fdb_set(tmp_path / "set", seconds=(0.5, 0.4))
    report = tmp_path / "report.json"
    assert main(["bench", "turns", "run", str(source), str(tmp_path / "out"), *SMALL_MODEL_ARGS, "--slots", "2",
                 "--quantize", "int8", "--kv-dtype", "fp8", "--json", str(report)]) == 0
    run = json.loads(report.read_text())["run"]
    assert run["quantization"] == {"weights": "int8", "kv": "fp8", "compute": "float32"}
    assert run["setup"]["quantize"] == "int8" and run["setup"]["lm"].endswith("lm_small.safetensors")
    assert run["set"] == str(source.resolve())  # what `bench turns compare` groups the runs by
    assert len(list((tmp_path / "out").rglob("output.wav"))) == 2
    # the fixture model has no tokenizer: said, since every figure that counts words then sees none
    assert "warning: no tokenizer found for" in capsys.readouterr().err


def test_what_step_k_makes_is_placed_as_a_live_listener_hears_it_one_frame_later(tmp_path):
    """Step k's output needs input frame k whole: it is heard from 0.08 (k + 1) s on, as FDB's own Moshi client
    records it (one frame of silence first). The stand-in writes a word at step 1, 6, 11 (frame % 5 == 1) and
    audio from step 0: the first word starts at 0.16 s, the output audio after 0.08 s of silence."""
    import soundfile as sf

    source = fdb_set(tmp_path / "set", seconds=(1.0,))
    runner.run_samples(FakeEngine(slots=1), source, tmp_path / "out", seed=3)
    sample = tmp_path / "out" / "candor_turn_taking" / "0"
    words = json.loads((sample / "output.json").read_text())["chunks"]
    assert [w["timestamp"][0] for w in words] == pytest.approx([0.16, 0.56, 0.96])
    audio, rate = sf.read(sample / "output.wav", dtype="float32")
    assert rate == 16000 and len(audio) == 16000  # exactly as long as the input
    assert abs(audio[: int(0.07 * rate)]).max() == 0 and abs(audio[int(0.1 * rate):]).min() > 0
