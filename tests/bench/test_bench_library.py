"""What the benchmark commands leave to the library: which files a timing benchmark times, the progress lines a
person sees on a terminal (and a log does not), the reports' titles, and a run's garbage-collector freeze given
back. Each is a library call a Python user makes as the command does."""

import gc
import io
import shutil
import sys

import pytest
from fake_engine import FakeEngine, fdb_set
from helpers import LM_SMALL, LM_SMALL_CONFIG, MIMI_SMALL, MIMI_SMALL_CONFIG

from codec import SHIPPED_CODEC, SHIPPED_CONFIG
from codec.eval import bench as codec_bench
from duplex.bench import fuzz, latency, serve
from duplex.bench.codec import codec_to_time
from duplex.bench.lm import lm_to_time
from duplex.bench.turntaking import make_set, runner, score
from duplex.cli import main
from duplex.errors import ModelFilesError, UsageError
from duplex.runtime.checkpoints import SHIPPED_LM, SHIPPED_LM_CONFIG


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_codec_to_time(tmp_path):
    assert codec_to_time() == (SHIPPED_CODEC, SHIPPED_CONFIG)  # what duplex serve runs
    assert codec_to_time(config="official") == (None, None)  # Kyutai's shape, random weights
    assert codec_to_time(config=str(MIMI_SMALL_CONFIG)) == (None, str(MIMI_SMALL_CONFIG))
    shutil.copy(MIMI_SMALL, tmp_path / "codec.safetensors")
    shutil.copy(MIMI_SMALL_CONFIG, tmp_path / "codec.json")  # travels with the file
    assert codec_to_time(tmp_path / "codec.safetensors") == (str(tmp_path / "codec.safetensors"),
                                                             str(tmp_path / "codec.json"))
    other = tmp_path / "other.json"
    with pytest.raises(ModelFilesError, match=f"Mimi config not found: {other}"):  # told before any timing
        codec_to_time(MIMI_SMALL, other)
    shutil.copy(MIMI_SMALL_CONFIG, other)
    assert codec_to_time(MIMI_SMALL, other) == (str(MIMI_SMALL), str(other))


def test_the_lm_to_time(tmp_path):
    assert lm_to_time() == (SHIPPED_LM, SHIPPED_LM_CONFIG)
    assert lm_to_time(config="small") == (None, "small")  # random weights of a preset
    shutil.copy(LM_SMALL, tmp_path / "lm.safetensors")
    with pytest.raises(ModelFilesError):  # no config beside it, and not a Moshi 7B
        lm_to_time(str(tmp_path / "lm.safetensors"))
    shutil.copy(LM_SMALL_CONFIG, tmp_path / "lm.json")
    assert lm_to_time(str(tmp_path / "lm.safetensors")) == (str(tmp_path / "lm.safetensors"),
                                                            str(tmp_path / "lm.json"))  # the config beside it


def test_bench_latency_says_before_it_runs_that_the_cpu_has_no_graphs():
    assert latency.device_notes("cpu", ["eager", "graphs"]) == [
        "note: CUDA graphs exist only on CUDA; on the CPU the step runs eagerly (timed once, as eager)"]
    assert latency.device_notes("cpu", ["eager"]) == [] and latency.device_notes("cuda:0", ["graphs"]) == []


@pytest.mark.parametrize("call, line", [
    (lambda: codec_bench.console_progress(2, 1, 3), "\rbatch 2: frame 1/3"),
    (lambda: codec_bench.console_progress("eager batch 4", 3, 3), "\rbatch eager batch 4: frame 3/3\n"),
    (lambda: score.console_progress(5, 5), "\rscored 5/5 samples\n"),
])
def test_progress_lines_go_to_a_terminal_only(monkeypatch, call, line):
    monkeypatch.setattr("sys.stderr", Terminal())
    call()
    assert sys.stderr.getvalue() == line
    monkeypatch.setattr("sys.stderr", io.StringIO())  # a log file or a pipe: nothing
    call()
    assert sys.stderr.getvalue() == ""


def _serve_report(**where):
    client = {"client": 0, "format": "opus", "replies": 25, "frames_sent": 25, "lost": 0, "steady_rate": 12.5,
              "late_replies": 0, "max_lateness_ms": 3.0, "errors": [], "complete": True}
    server = {"slots": 1, "ticks": 30, "late_ticks": 0, "step_ms": {"p50": 20.0, "p99": 30.0}, "frames_in": 25,
              "steps": 30, "underruns": 5, "dropped_in": 0, "dropped_out": 0, "bad_messages": 0, "sessions_after": 0}
    return {"clients_count": 1, "seconds": 2.0, "formats": "opus", "clients": [client], "server": server, **where}


def test_the_serve_report_says_what_it_measured():
    here = serve.format_report(_serve_report(url=None, hardware="cpu x2", torch="2.9"))
    assert here.splitlines()[0] == "# serve -- 1 x 2 s (opus) against a server started here (cpu x2, torch 2.9)"
    there = serve.format_report(_serve_report(url="ws://host:8998"))
    assert there.splitlines()[0] == "# serve -- 1 x 2 s (opus) against ws://host:8998"
    assert there.splitlines()[-1].startswith("real time")


def test_the_fuzz_report_says_what_it_measured_and_the_memory_of_a_server_here():
    family = {"family": "malformed", "messages": 20, "connections": 3, "closes": {"1000": 3}, "problems": []}
    report = {"url": None, "hardware": "cpu", "torch": "2.9", "seed": 4, "families": [family], "healthy": True,
              "resident_mb": {"before": 812.4, "after": 815.0}}
    lines = fuzz.format_fuzz_report(report, 140).splitlines()
    assert lines[0] == "# serve --fuzz 140 (seed 4) against a server started here (cpu, torch 2.9)"
    assert lines[-2] == "healthy after every family"
    assert lines[-1] == "resident memory of this process (server and fuzzer): 812 MB before, 815 MB after"
    remote = {"url": "ws://h:1", "seed": 4, "families": [family], "healthy": True}
    assert fuzz.format_fuzz_report(remote, 140).splitlines()[-1] == "healthy after every family"
    assert fuzz.resident_mb() > 0


def test_fuzzing_a_server_with_a_token_is_refused_in_one_line(capsys):
    """Before, ``bench serve --url ... --token T --fuzz N`` ended in a ValueError's traceback."""
    with pytest.raises(UsageError, match="requires a token is not supported"):
        fuzz.fuzz_server(url="ws://127.0.0.1:9", messages=10, token="secret")
    assert main(["bench", "serve", "--url", "ws://127.0.0.1:9", "--token", "secret", "--fuzz", "10"]) == 2
    assert "requires a token is not supported" in capsys.readouterr().err


def test_fuzzing_here_needs_two_slots():
    with pytest.raises(ValueError, match="2 slots or more"):
        fuzz.fuzz_server(FakeEngine(slots=1), messages=10)
    with pytest.raises(ValueError, match="not both"):
        fuzz.fuzz_server(FakeEngine(), "ws://127.0.0.1:9")


def test_a_run_freezes_the_startup_objects_and_gives_them_back(tmp_path):
    """As duplex serve does, the engine is kept out of the collector's full passes while samples run; after the
    run (finished or interrupted) the caller's collector is as it was."""
    frozen = []

    class Recording(FakeEngine):
        def step(self, frames):
            frozen.append(gc.get_freeze_count())
            return super().step(frames)

    source = fdb_set(tmp_path / "set")
    assert gc.get_freeze_count() == 0
    with pytest.raises(runner.RunInterrupted):
        runner.run_samples(Recording(interrupt_at_step=5), source, tmp_path / "out")
    assert gc.get_freeze_count() == 0
    runner.run_samples(Recording(), source, tmp_path / "out")
    assert min(frozen) > 0 and gc.get_freeze_count() == 0


def test_console_progress_ends_its_bar_with_the_block(monkeypatch):
    stream = Terminal()
    with runner.ConsoleProgress(stream) as shown:
        shown(runner.Progress(1, 2, 1.0, 2.0, 0.5))
        assert shown.bar is not None
    assert shown.bar is None


def test_make_set_counts_in_one_line(tmp_path):
    line = make_set.format_counts({"candor_turn_taking": 3, "user_interruption": 0}, tmp_path / "set")
    assert line == f"candor_turn_taking: 3, user_interruption: 0 samples -> {tmp_path / 'set'}"
