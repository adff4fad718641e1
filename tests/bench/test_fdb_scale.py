"""FDB at scale (issue 29): ``bench turns scale-set`` makes a set of any size from a small one (counts, total
length, annotations still true, deterministic, one-line errors), and ``bench turns run`` reports its wall time,
real-time factor, engine steps and slots used, also on random weights named by ``--model``."""

import json

import numpy as np
import pytest
import soundfile as sf
from fake_engine import FakeEngine, fdb_set

from duplex.bench import latency
from duplex.bench.turntaking import runner, scale_set
from duplex.bench.turntaking.fdb import BACKCHANNEL, INTERRUPTION, PAUSE, TURN, annotation_time, task_of
from duplex.cli import main
from duplex.errors import FDBError, UsageError

RATE = 16000


def _source(root):
    """One short sample per task (and a second backchannel one), as FDB lays them out, with the backchannels'
    human distributions beside them."""
    rng = np.random.default_rng(0)
    samples = {("pause_handling", "0"): ("pause.json", [{"text": "[PAUSE]", "timestamp": [0.2, 0.5]}], 0.7),
               ("smooth_turn_taking", "0"): ("turn_taking.json", [{"text": "[TURN-TAKING]",
                                                                   "timestamp": [0.6, 0.8]}], 0.9),
               ("user_interruption", "0"): ("interrupt.json", [{"context": "a", "interrupt": "b",
                                                                "timestamp": [0.3, 0.55]}], 0.6),
               ("backchannel", "0"): (None, None, 0.8), ("backchannel", "1"): (None, None, 0.5)}
    for (task, name), (file, annotation, seconds) in samples.items():
        folder = root / task / name
        folder.mkdir(parents=True)
        sf.write(folder / "input.wav", (0.1 * rng.standard_normal(int(seconds * RATE))).astype(np.float32), RATE,
                 subtype="PCM_16")
        if file:
            (folder / file).write_text(json.dumps(annotation))
        (folder / "source.json").write_text(json.dumps({"conversation": name}))
    (root / "backchannel" / scale_set.TRUTH).write_text(json.dumps({"0": [0.2, 0.3, 0.5, 1e-13, 1e-13],
                                                                   "1": [0.5, 0.5, 1e-13]}))
    return root


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_scaled_set_has_the_asked_size_and_true_annotations(tmp_path):
    source = _source(tmp_path / "src")
    out = tmp_path / "out"
    made = scale_set.scale_set(source, out, samples=11, hours=30 / 3600, seed=3)
    assert made["samples"] == 11 and made["source_samples"] == 5
    assert made["tasks"] == {PAUSE: 3, TURN: 3, INTERRUPTION: 3, BACKCHANNEL: 2}  # the tasks in turn
    folders = runner.sample_folders(out)
    assert len(folders) == 11
    lengths = []
    for folder in folders:
        record = json.loads((folder / scale_set.RECORD).read_text())
        src = source / record["source"]
        assert task_of(folder, out) == task_of(src, source)
        audio, rate = sf.read(folder / "input.wav", dtype="int16")
        original, _ = sf.read(src / "input.wav", dtype="int16")
        assert rate == RATE and len(audio) > len(original)
        assert np.array_equal(audio[:len(original)], original)  # the recording, then the tail
        assert np.abs(audio[len(original):]).max() < 0.01 * 32768  # quiet
        for item in src.iterdir():
            if item.name != "input.wav":
                assert (folder / item.name).read_bytes() == item.read_bytes()
        task = task_of(folder, out)
        assert annotation_time(folder, task) == annotation_time(src, task)  # still inside the recording
        assert record["seconds"] == pytest.approx(len(audio) / rate, abs=1e-6)
        lengths.append(len(audio) / rate)
    assert sum(lengths) == pytest.approx(30.0, abs=11 / RATE) == pytest.approx(made["seconds"])
    assert len({round(x, 2) for x in lengths}) > 5  # lengths vary
    truth = json.loads((out / "backchannel" / scale_set.TRUTH).read_text())
    assert sorted(truth) == ["0", "1"]
    for name, values in truth.items():
        seconds = sf.info(out / "backchannel" / name / "input.wav").duration
        assert len(values) == int(seconds / 0.2) + 1 and sum(values) == pytest.approx(1.0)
    assert truth["0"][:3] == pytest.approx([0.2, 0.3, 0.5], rel=1e-9) and max(truth["0"][3:]) < 1e-12

    again = tmp_path / "again"
    scale_set.scale_set(source, again, samples=11, hours=30 / 3600, seed=3)
    assert _files(again) == _files(out)  # same seed, same set, byte for byte
    other = tmp_path / "other"
    scale_set.scale_set(source, other, samples=11, hours=30 / 3600, seed=4)
    assert _files(other) != _files(out)


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    source = _source(tmp_path / "src")
    with pytest.raises(FDBError, match="not a folder"):
        scale_set.scale_set(tmp_path / "missing", tmp_path / "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FDBError, match="no FDB sample folder"):
        scale_set.scale_set(tmp_path / "empty", tmp_path / "b")
    with pytest.raises(UsageError, match=r"5 samples already hold 4 s of recordings, more than the 2 s asked"):
        scale_set.scale_set(source, tmp_path / "c", samples=5, hours=2 / 3600)
    with pytest.raises(UsageError, match="inside"):
        scale_set.scale_set(source, source / "scaled")
    assert not (source / "scaled").exists() and not (tmp_path / "c").exists()
    assert main(["bench", "turns", "scale-set", str(tmp_path / "src"), str(tmp_path / "src"), "--samples", "2"]) == 2
    assert main(["bench", "turns", "scale-set", str(tmp_path / "missing"), str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "is not empty" in err and "missing: not a folder" in err
    assert main(["bench", "turns", "scale-set", str(source), str(tmp_path / "e"), "--samples", "6", "--hours",
                 "0.004"]) == 0
    assert "6 samples (pause_handling: 2, smooth_turn_taking: 2, user_interruption: 1, backchannel: 1), 0.00 h" \
        in capsys.readouterr().err


def test_a_run_counts_its_steps_and_the_slots_they_used(tmp_path):
    source = fdb_set(tmp_path / "set")  # 13, 20 and 10 frames
    ran = runner.run_samples(FakeEngine(slots=2), source, tmp_path / "out")
    # slots 0 and 1 run samples 0 and 1; sample 2 takes slot 0 at step 14 and ends at step 23
    assert ran["engine_steps"] == 23 and ran["slots"] == 2
    assert ran["slots_used"] == {"mean": pytest.approx(43 / 23), "max": 2}
    assert ran["audio_seconds"] == pytest.approx(3.4)
    assert ran["x_real_time"] == pytest.approx(3.4 / ran["wall_seconds"])
    assert ran["real_time_factor"] == pytest.approx(ran["wall_seconds"] / 3.4)
    table = runner.format_run_table({**ran, "load_seconds": 1.25})
    head, row = table.splitlines()[:2]
    assert "x real time" in head and "RTF" in head and "slots used (mean / max of N)" in head
    assert row.split()[:2] == ["3", "3.4"] and "23" in row.split() and row.endswith("1.9 / 2 of 2     1.2")


def test_a_run_on_random_weights_of_a_named_shape(tmp_path, monkeypatch, capsys):
    """``--model small`` loads as ``bench latency`` does (here the tests' small models stand in for the preset's
    random weights, which are too slow for the suite); no tokenizer, so no words; --no-score: the run's figures
    alone."""
    from helpers import LM_SMALL, LM_SMALL_CONFIG, MIMI_SMALL, MIMI_SMALL_CONFIG

    from codec import Mimi
    from duplex.model.lm import MoshiLM

    asked = []

    def small_models(model, device, dtype, files=None, quantize=None):
        asked.append((model, device.type, dtype, files, quantize))
        return (MoshiLM.from_checkpoint(LM_SMALL, config=LM_SMALL_CONFIG, device=device),
                Mimi.from_checkpoint(MIMI_SMALL, config=MIMI_SMALL_CONFIG, device=device), "stand-in")

    monkeypatch.setattr(latency, "load_models", small_models)
    source = _source(tmp_path / "src")
    scaled = tmp_path / "scaled"
    scale_set.scale_set(source, scaled, samples=3, hours=2.7 / 3600)
    out, report = tmp_path / "out", tmp_path / "report.json"
    args = ["bench", "turns", "run", str(scaled), str(out), "--model", "small", "--device", "cpu", "--slots", "2",
            "--no-score", "--json", str(report)]
    assert main(args) == 0
    assert asked == [("small", "cpu", None, None, None)]
    data = json.loads(report.read_text())
    assert "tasks" not in data  # not scored
    run = data["run"]
    assert run["samples"] == 3 and run["audio_seconds"] == pytest.approx(2.7, abs=1e-3)
    assert run["slots"] == 2 and run["slots_used"]["max"] == 2 and 1 < run["slots_used"]["mean"] <= 2
    assert run["engine_steps"] >= 2.7 / 0.08 / 2 and run["x_real_time"] > 0 and run["load_seconds"] > 0
    assert run["x_real_time"] * run["real_time_factor"] == pytest.approx(1.0)
    assert run["setup"]["model"] == "small" and run["setup"]["weights"].startswith("random")
    assert "mean nothing" in run["note"]
    assert len(list(out.rglob("output.wav"))) == 3
    assert all(json.loads(p.read_text())["chunks"] == [] for p in out.rglob("output.json"))  # no tokenizer
    assert "slots used (mean / max of N)" in capsys.readouterr().out
    assert main([*args[:4], str(tmp_path / "out2"), "--model", "small", "--lm", "x.safetensors"]) == 2
    assert "--model small runs random weights of that shape: leave out --lm" in capsys.readouterr().err
    assert main([*args[:4], str(tmp_path / "out2"), "--model", "tiny"]) == 2
    assert "unknown --model 'tiny'" in capsys.readouterr().err


def test_a_set_cut_short_leaves_nothing_behind(tmp_path, monkeypatch):
    """An error (or Ctrl-C) midway: no half-made OUT that a run could take for the whole set; the same call again
    makes the whole set."""
    source = _source(tmp_path / "src")
    out = tmp_path / "scaled"
    out.mkdir()  # an empty OUT is allowed, and stays empty after a failure
    real_write, calls = sf.write, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_write(*args, **kwargs)

    monkeypatch.setattr(scale_set.sf, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        scale_set.scale_set(source, out, samples=6, hours=0.004)
    assert out.is_dir() and not any(out.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scaled", "src"]  # no partial folder left either
    monkeypatch.setattr(scale_set.sf, "write", real_write)
    assert scale_set.scale_set(source, out, samples=6, hours=0.004)["samples"] == 6
    assert len(list(out.rglob("input.wav"))) == 6
