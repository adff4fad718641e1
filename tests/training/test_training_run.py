"""The run folder every trainer uses, and the codec's training loop: refuse or resume, log trimming, Ctrl-C."""

import json
import os
import signal

import pytest
import torch

from duplex.errors import UsageError
from duplex.training.run import RunFolder


def test_a_run_folder_is_refused_or_resumed_never_overwritten(tmp_path):
    with pytest.raises(UsageError, match="holds no run to continue"):
        RunFolder(str(tmp_path / "new"), resume=True)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "trainer.pt").write_bytes(b"x")
    with pytest.raises(UsageError, match="already holds a training run"):
        RunFolder(str(tmp_path / "old"), resume=False)
    RunFolder(str(tmp_path / "old"), resume=True)


def test_resuming_drops_what_was_logged_after_the_checkpoint(tmp_path):
    (tmp_path / "trainer.pt").write_bytes(b"x")
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in range(1, 8)] + ['{"step": 8, "lo']  # cut by a crash
    (tmp_path / "log.jsonl").write_text("\n".join(lines))
    with RunFolder(str(tmp_path), resume=True) as run:
        run.open_log(5)
        run.log({"step": 6, "loss": 0.5})
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_ctrl_c_stops_at_the_next_step_and_the_handler_is_restored(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    with RunFolder(str(tmp_path / "run"), resume=False) as run:
        assert not run.stop_requested()
        os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C: a request, not an exception
        assert run.stop_requested()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # the second: at once
    assert signal.getsignal(signal.SIGINT) is before


def test_fit_saves_a_whole_step_when_asked_to_stop(small_mimi):
    from codec import Mimi
    from codec.train.trainer import CodecTrainer, TrainConfig, fit, init_for_training

    mimi = Mimi.random(small_mimi.config, num_codebooks=4)
    init_for_training(mimi, seed=0)
    trainer = CodecTrainer(mimi, TrainConfig(total_steps=100, max_codebooks=4), seed=0)
    saved, logged = [], []
    batch = torch.randn(2, 1, 1920 * 4) * 0.1
    fit(trainer, lambda: batch, end=100, save=lambda: saved.append(trainer.step), save_every=2,
        log=logged.append, eval_batch=batch, eval_every=2, stop_requested=lambda: trainer.step == 3)
    assert trainer.step == 3 and saved == [2, 3]  # every 2 steps, then the step it stopped at
    assert [r["step"] for r in logged] == [1, 2, 3] and "heldout" in logged[1] and "heldout" not in logged[0]


def test_a_checkpoint_set_is_saved_whole_and_a_save_cut_short_is_named(tmp_path):
    from safetensors.torch import save_file

    from codec import CheckpointError

    run = RunFolder(str(tmp_path), resume=False)
    weights = {"w": torch.arange(6.0).reshape(2, 3)}
    run.save_checkpoint("model.safetensors", weights, {"optimizer": {"lr": 0.1}}, step=7)
    loaded, state = RunFolder(str(tmp_path), resume=True).load_checkpoint("model.safetensors")
    assert torch.equal(loaded["w"], weights["w"]) and state["step"] == 7 and state["optimizer"] == {"lr": 0.1}
    # the weights of step 8 were written, then the process died before the trainer's state of step 8
    save_file({"w": torch.zeros(2, 3)}, str(tmp_path / "model.safetensors"), metadata={"step": "8"})
    with pytest.raises(CheckpointError, match="model.safetensors is from step 8 but trainer.pt from step 7"):
        RunFolder(str(tmp_path), resume=True).load_checkpoint("model.safetensors")


def test_the_progress_line_never_shows_a_negative_eta(tmp_path, capsys):
    update = RunFolder(str(tmp_path), resume=False).progress(total=2, initial=0, every=1)
    update(3, loss=1.0)  # a step past the planned total
    assert "(ETA 0 min 0 s)" in capsys.readouterr().err


@pytest.mark.parametrize("cut", ["state", "weights"])
def test_a_save_cut_short_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch, cut):
    """A kill or an exception while either file of a checkpoint is written leaves the last whole set, which
    resumes (not weights of the new step beside the trainer's state of the old one)."""
    import codec.io.checkpoint as checkpoint

    run = RunFolder(str(tmp_path), resume=False)
    run.save_checkpoint("model.safetensors", {"w": torch.ones(2)}, {"optimizer": {}}, step=7)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    if cut == "state":
        monkeypatch.setattr(torch, "save", killed)
    else:
        monkeypatch.setattr(checkpoint, "save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        run.save_checkpoint("model.safetensors", {"w": torch.zeros(2)}, {"optimizer": {}}, step=8)
    monkeypatch.undo()
    loaded, state = RunFolder(str(tmp_path), resume=True).load_checkpoint("model.safetensors")
    assert state["step"] == 7 and torch.equal(loaded["w"], torch.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors", "trainer.pt"]  # no temporary file left


def test_a_second_ctrl_c_during_a_save_stops_once_the_save_is_written(tmp_path, monkeypatch, capsys):
    """A run stopped halfway through a save could not resume: the second Ctrl-C waits for the save's end."""
    save, calls = torch.save, []

    def save_with_ctrl_c(*args, **kwargs):
        calls.append(1)
        os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, while the trainer's state is written
        save(*args, **kwargs)

    with RunFolder(str(tmp_path), resume=False) as run:
        os.kill(os.getpid(), signal.SIGINT)  # the first: stop at the next step boundary
        monkeypatch.setattr(torch, "save", save_with_ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            run.save_checkpoint("model.safetensors", {"w": torch.ones(2)}, {"optimizer": {}}, step=3)
        monkeypatch.undo()
    assert calls and "stopping as soon as the checkpoint is written" in capsys.readouterr().err
    loaded, state = RunFolder(str(tmp_path), resume=True).load_checkpoint("model.safetensors")
    assert state["step"] == 3 and torch.equal(loaded["w"], torch.ones(2))
