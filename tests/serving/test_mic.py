"""The live demo without sound hardware: an injected stream, and the headless file mode."""

import re
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from helpers import SMALL_MODEL_ARGS, Screen, make_engine

from duplex.cli import main
from duplex.errors import SoundDeviceError
from duplex.serving import mic

MODEL = SMALL_MODEL_ARGS


class FakeStream:
    """A full-duplex stream that calls the callback with 80 ms blocks, like PortAudio, at a chosen pace."""

    def __init__(self, callback, blocks, period, stall_at=None):
        self.callback, self.blocks, self.period, self.stall_at = callback, blocks, period, stall_at
        self.played = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        t = np.arange(1920) / 24000
        for i in range(self.blocks):
            indata = (0.3 * np.sin(2 * np.pi * 200 * (t + i * 0.08)))[:, None].astype(np.float32)
            outdata = np.zeros((1920, 1), np.float32)
            self.callback(indata, outdata, 1920, None, None)
            self.played.append(outdata[:, 0].copy())
            time.sleep(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._thread.join()


@pytest.mark.slow
def test_live_session_with_an_injected_stream():
    """Every block the device captured is stepped or counted as dropped, and replies reach the speaker. The
    stream ends the session once the engine has taken its last block, so nothing depends on how fast this
    machine steps."""
    done = threading.Event()

    class EndingStream(FakeStream):
        def _run(self):
            super()._run()
            stats = self.callback.__self__.stats
            for _ in range(600):
                if stats.frames + stats.overruns >= self.blocks:
                    break
                time.sleep(0.1)
            done.set()

    streams = []

    def factory(callback):
        streams.append(EndingStream(callback, blocks=30, period=0.08))
        return streams[0]

    stats = mic.run_live(make_engine(1), stream_factory=factory, status_every=0, stop=done)
    played = np.concatenate(streams[0].played)
    assert stats.frames + stats.overruns == 30  # no block lost without a count
    assert stats.frames > 0 and np.abs(played).max() > 0  # replies reached the speaker


@pytest.mark.slow
def test_a_slow_engine_catches_up_by_dropping_input():
    engine = make_engine(1)
    real_step = engine.step

    def slow_step(frames):
        time.sleep(0.2)  # 2.5x slower than real time
        return real_step(frames)

    engine.step = slow_step
    holder = []

    def factory(callback):
        holder.append(FakeStream(callback, blocks=25, period=0.08))
        return holder[0]

    stats = mic.run_live(engine, seconds=2.5, stream_factory=factory, status_every=0)
    assert stats.overruns > 0 and stats.underruns > 0
    assert stats.frames < 25  # it did not try to process every late frame


def test_headless_files(tmp_path, speechlike, capsys):
    source = tmp_path / "in.wav"
    sf.write(source, speechlike(1, 5, seed=2)[0, 0].numpy()[:9000], 24000)
    out = tmp_path / "out.wav"
    assert main(["mic", *MODEL, "--input-file", str(source), "--output-file", str(out)]) == 0
    data, rate = sf.read(out)
    assert rate == 24000 and data.shape == (9000,) and np.abs(data[3840:]).max() > 0
    err = capsys.readouterr().err  # it says what it runs, then what it wrote
    assert "(0.4 s) through the engine as fast as it goes" in err and f"0.38 s -> {out}" in err


def test_missing_sounddevice_is_explained(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_sounddevice(name, *args, **kwargs):
        if name == "sounddevice":
            raise ImportError("no module named sounddevice")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sounddevice)
    with pytest.raises(SoundDeviceError, match="pip install sounddevice"):  # a DuplexError: one line from the CLI
        mic.import_sounddevice()


def test_file_options_go_together(capsys):
    assert main(["mic", *MODEL, "--input-file", "x.wav"]) == 2
    assert "--input-file and --output-file go together" in capsys.readouterr().err


def test_an_engine_error_is_reported_not_swallowed():
    engine = make_engine(1)

    def broken(frames):
        raise ValueError("slot 0: expected one frame of 1920 samples")

    engine.step = broken
    holder = []

    def factory(callback):
        holder.append(FakeStream(callback, blocks=5, period=0.02))
        return holder[0]

    with pytest.raises(RuntimeError, match="the engine stopped: ValueError"):
        mic.run_live(engine, seconds=5, stream_factory=factory, status_every=0)


def test_words_and_progress_share_a_terminal_without_erasing_each_other(tmp_path, monkeypatch):
    """On a terminal (stdout and stderr the same screen) the progress line never writes over the model's words."""
    from duplex.runtime.engine import Engine

    words = iter(f" w{i}" for i in range(1000))
    monkeypatch.setattr(Engine, "text_piece", lambda self, token: next(words))  # a word every frame
    screen = Screen(width=40)
    monkeypatch.setattr("sys.stdout", screen)
    monkeypatch.setattr("sys.stderr", screen)
    monkeypatch.setenv("COLUMNS", "40")
    source = tmp_path / "in.wav"
    sf.write(source, np.zeros(30 * 1920, np.float32), 24000)  # 30 frames: progress at 12, 24 and 30
    assert main(["mic", *MODEL, "--input-file", str(source), "--output-file", str(tmp_path / "out.wav")]) == 0
    seen = " ".join(screen.text().split())
    assert " ".join(f"w{i}" for i in range(30)) in seen, screen.text()  # every word, in order
    assert any("[1.0 / 2.4 s]" in shot and "w11" in shot for shot in screen.snapshots)  # progress shown with them
    assert "[2.4 / 2.4 s]" not in screen.text()  # the progress line goes at the end, the words stay
    word_rows = ["".join(row) for row in screen.rows if re.fullmatch(r" ?(w\d+ ?)+", "".join(row))]
    assert len(word_rows) >= 3 and all(len(row) < 40 for row in word_rows)  # broken into lines, none wrapped


def test_live_text_off_a_terminal_writes_words_only():
    import io

    from duplex.serving.terminal import LiveText

    words, status = io.StringIO(), io.StringIO()
    display = LiveText(words, status)
    display.write(" hello")
    display.status("[1.0 s]")  # a file is no place for a line that rewrites itself
    display.write(" there")
    display.close()
    assert words.getvalue() == " hello there\n" and status.getvalue() == ""


def test_ctrl_c_keeps_the_reply_so_far(tmp_path, monkeypatch, capsys):
    """Ctrl-C in the middle of a file: the reply to the frames done is written, the command says so, exits 130."""
    from duplex.runtime.engine import Engine

    real_step, calls = Engine.step, []

    def step(self, frames):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real_step(self, frames)

    monkeypatch.setattr(Engine, "step", step)
    source, out = tmp_path / "in.wav", tmp_path / "out.wav"
    sf.write(source, 0.1 * np.ones(20 * 1920, np.float32), 24000)
    assert main(["mic", *MODEL, "--input-file", str(source), "--output-file", str(out), "--realtime"]) == 130
    data, rate = sf.read(out)
    assert rate == 24000 and data.shape == (5 * 1920,)  # the five frames done
    assert "interrupted after 0.40 s of 1.60 s: the reply so far is in" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_on_the_command_keeps_the_reply_so_far(tmp_path):
    """The real thing: SIGINT to ``duplex mic --input-file --realtime`` a second into a 20 s file."""
    import os
    import signal
    import subprocess
    import sys

    source, out = tmp_path / "in.wav", tmp_path / "out.wav"
    sf.write(source, 0.1 * np.ones(20 * 24000, np.float32), 24000)
    process = subprocess.Popen([sys.executable, "-m", "duplex", "mic", *MODEL, "--input-file", str(source),
                                "--output-file", str(out), "--realtime"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        for line in process.stderr:  # once the engine is built and the file is under way
            if "through the engine in real time" in line:
                break
        time.sleep(1.0)
        process.send_signal(signal.SIGINT)
        err = process.communicate(timeout=30)[1]
    finally:
        process.kill()
    assert process.returncode == 130, err
    data, rate = sf.read(out)
    assert rate == 24000 and 0 < len(data) < 20 * 24000 and len(data) % 1920 == 0, len(data)
    assert "interrupted after" in err and f"the reply so far is in {out}" in err, err


def test_a_file_run_shows_progress_about_every_second_and_says_what_it_did():
    import io

    from duplex.runtime.clock import ClockStats
    from duplex.serving.terminal import LiveText

    class Status(io.StringIO):
        def isatty(self):
            return True

    status = Status()
    from duplex.runtime.offline import run_offline

    run = run_offline(make_engine(1), np.zeros(30 * 1920, np.float32), display=LiveText(io.StringIO(), status))
    assert (run.frames, run.total, run.interrupted, run.seconds, run.reply_seconds) == (30, 30, False, 2.4, 2.4)
    shown = re.findall(r"\[[0-9.]+ / 2\.4 s\]", status.getvalue())
    assert shown == ["[1.0 / 2.4 s]", "[1.9 / 2.4 s]", "[2.4 / 2.4 s]"]  # frames 12, 24 and the last
    assert status.getvalue().endswith("\r\x1b[K")  # closed: the progress line is gone
    assert ClockStats(ticks=250, misses=3, max_late_ms=95.2).lateness() == "3 of 250 frames late (max 95 ms)"
    assert mic.MicStats(frames=250, underruns=2).summary() == "250 frames, 0 overruns, 2 underruns, 0 device xruns"


def test_listing_sound_devices_says_when_there_are_none(monkeypatch):
    class NoDevices:
        @staticmethod
        def query_devices():
            return []

    monkeypatch.setattr(mic, "import_sounddevice", lambda: NoDevices)
    assert mic.describe_sound_devices() == "no audio devices found (PortAudio sees none on this machine)"
