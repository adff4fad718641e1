"""``duplex serve`` and ``duplex bench serve`` as a new user meets them: the slot default from the machine, said
at start-up; a busy port named with its option before the model loads; Ctrl-C ends both at once, exit 130."""

import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import SMALL_MODEL_ARGS

import duplex.cli.serve as serve_command
from duplex.cli import main
from duplex.runtime.checkpoints import ModelFiles

ROOT = Path(__file__).resolve().parents[2]


class ModelLoaded(Exception):
    pass


@pytest.mark.parametrize("device, cores, slots", [("cpu", 1, 2), ("cpu", 2, 4), ("cpu", 3, 6), ("cpu", 4, 8),
                                                   ("cpu", 64, 8), ("cpu", None, 2), ("cuda", 1, 8), ("cuda", 64, 8)])
def test_the_default_slot_count_comes_from_the_machine(device, cores, slots):
    """About two real-time sessions per CPU core, at most 8; 8 on a GPU."""
    from duplex.serving.options import default_slots

    assert default_slots(device, cores) == slots


def test_serve_says_how_many_slots_it_chose_and_how_to_change_it(monkeypatch, capsys):
    chosen = []

    def build_engine(args, slots, files=None):
        chosen.append(slots)
        raise ModelLoaded

    monkeypatch.setattr(serve_command, "build_engine", build_engine)
    monkeypatch.setattr(serve_command, "usable_cpu_cores", lambda: 2, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    with pytest.raises(ModelLoaded):
        main(["serve", "--port", "0", "--device", "cpu"])
    assert chosen == [4]
    err = capsys.readouterr().err
    assert "4 slots (default for this machine; --slots to change)" in err
    # and one core is left to the network: the engine's threads are all cores but one
    assert "1 engine thread (default for this machine: a core is left to the network; --threads to change)" in err
    with pytest.raises(ModelLoaded):
        main(["serve", "--port", "0", "--device", "cpu", "--slots", "3", "--threads", "2"])
    assert chosen[-1] == 3 and "default for this machine" not in capsys.readouterr().err


@pytest.mark.parametrize("files, default", [(ModelFiles.default(), True),
                                            (ModelFiles(lm="/hub/model.safetensors", lm_config="moshi_7b",
                                                        mimi="/hub/mimi.safetensors",
                                                        source="kyutai/moshiko-pytorch-bf16"), False)])
def test_only_the_default_model_is_announced_as_the_default_model(monkeypatch, caplog, files, default):
    """A published model from --hf-repo used to be announced as "the default model" at start-up."""
    class Engine:
        pass

    def build_engine(args, slots, files=None):
        engine = Engine()
        engine.files = files
        return engine

    def server(engine, options):
        assert options.model_name == files.name
        raise ModelLoaded

    monkeypatch.setattr(serve_command, "model_files", lambda args: files)
    monkeypatch.setattr(serve_command, "build_engine", build_engine)
    monkeypatch.setattr(serve_command, "VoiceServer", server)
    caplog.set_level(logging.INFO)
    with pytest.raises(ModelLoaded):
        main(["serve", "--port", "0", "--slots", "1", "--hf-repo", "kyutai/moshiko-pytorch-bf16"])
    assert ("serving the default model" in caplog.text) == default


def test_a_busy_port_is_one_line_naming_the_option_before_the_model_loads(monkeypatch, capsys):
    def build_engine(args, slots, files=None):
        raise AssertionError("the model was loaded before the port was checked")

    monkeypatch.setattr(serve_command, "build_engine", build_engine)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port), "--slots", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already in use" in err and "--port" in err and str(port) in err


def test_a_port_taken_between_the_check_and_the_listen_names_the_option_too():
    line = serve_command.listen_error("127.0.0.1", 8998, OSError(errno.EADDRINUSE, "address already in use"))
    assert "--port" in line and "8998" in line
    assert "--port" not in serve_command.listen_error("example.org", 80, OSError(errno.EACCES, "Permission denied"))


def test_the_startup_line_gives_the_page_url_with_its_token():
    from duplex.serving.options import page_url

    assert page_url("http", "0.0.0.0", 8998) == "http://localhost:8998/"
    assert page_url("https", "example.org", 443, "a b&c") == "https://example.org:443/?token=a%20b%26c"


def test_a_port_in_use_is_the_error_listening_would_raise():
    from duplex.serving.options import check_port_free

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(OSError) as refused:
            check_port_free("127.0.0.1", busy.getsockname()[1])
    assert refused.value.errno == errno.EADDRINUSE
    check_port_free("127.0.0.1", 0)  # any free port


def start(command):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "duplex", *command, *SMALL_MODEL_ARGS], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def interrupt_when(process, words, timeout=120):
    """Wait for ``words`` on the process's stderr, then press Ctrl-C (SIGINT to its process group, as a
    terminal does); returns (exit status, seconds it took to stop, the rest of stderr)."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        seen.append(line)
        if words in line:
            break
        if not line:
            pytest.fail("ended before " + repr(words) + ": " + "".join(seen))
    time.sleep(0.5)
    os.killpg(process.pid, signal.SIGINT)
    pressed = time.monotonic()
    try:
        _, err = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("still running 20 s after Ctrl-C")
    return process.returncode, time.monotonic() - pressed, err


@pytest.mark.slow
def test_ctrl_c_stops_bench_serve_at_once_and_says_so():
    """It used to hang for good: an executor thread blocked on the clients' result queue."""
    code, took, err = interrupt_when(start(["bench", "serve", "--clients", "1", "--seconds", "60", "--format",
                                            "pcm16"]), "talking for")
    assert code == 130, (took, err)  # within the 20 s interrupt_when allows (it used to hang)
    assert "interrupted (Ctrl-C)" in err and "Traceback" not in err


@pytest.mark.slow
def test_ctrl_c_stops_serve_at_once_and_says_so():
    code, took, err = interrupt_when(start(["serve", "--port", "0", "--slots", "1"]), "in a browser")
    assert code == 130, (took, err)  # within the 20 s interrupt_when allows (it used to hang)
    assert "stopped (Ctrl-C)" in err and "Traceback" not in err
