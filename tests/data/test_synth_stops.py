"""``duplex data synth`` ends, and leaves no partial corpus: without libespeak-ng it stops at once with one line
(the worker pool used to restart failing workers forever); on Ctrl-C it removes what it wrote and exits 130; a
folder holding part of a corpus is refused rather than mixed with a new run's files."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from duplex.errors import DatasetError

ROOT = Path(__file__).resolve().parents[2]

# Loaded by every Python process of the run (the pool's spawned workers too, through PYTHONPATH): libespeak-ng
# cannot be found or loaded, as on a machine without it.
NO_ESPEAK = textwrap.dedent("""
    import ctypes, ctypes.util
    _find, _load = ctypes.util.find_library, ctypes.CDLL.__init__
    def find_library(name):
        return None if "espeak" in name else _find(name)
    def load(self, name, *args, **kwargs):
        if name and "espeak" in str(name):
            raise OSError(f"{name}: cannot open shared object file (test)")
        _load(self, name, *args, **kwargs)
    ctypes.util.find_library, ctypes.CDLL.__init__ = find_library, load
""")


def _env(*paths) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, paths), str(ROOT),
                                                         os.environ.get("PYTHONPATH", "")])}


def _run(args, env, timeout):
    """Run ``duplex ARGS`` in its own process group (killed whole, workers too, if it does not end in time)."""
    process = subprocess.Popen([sys.executable, "-m", "duplex", *args], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"duplex {' '.join(args)} did not end within {timeout} s")
    return process.returncode, err


def _espeak_works() -> bool:
    from duplex.data.synth.espeak import EspeakError, Synthesizer

    try:
        Synthesizer()
    except EspeakError:
        return False
    return True


@pytest.mark.slow
def test_synth_without_libespeak_stops_at_once_with_one_line(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(NO_ESPEAK)
    code, err = _run(["data", "synth", str(tmp_path / "corpus"), "--conversations", "4", "--workers", "2"],
                     _env(tmp_path / "site"), timeout=120)
    assert code == 2, err
    assert err.strip().splitlines() == ["duplex: error: libespeak-ng is not installed (Debian/Ubuntu: apt install "
                                        "espeak-ng)"]
    assert not (tmp_path / "corpus").exists()  # the folder it made is gone with the run


@pytest.mark.slow
def test_synth_ctrl_c_removes_the_partial_corpus_and_exits_130(tmp_path):
    if not _espeak_works():
        pytest.skip("needs espeak-ng (apt install espeak-ng)")
    out = tmp_path / "corpus"
    process = subprocess.Popen([sys.executable, "-m", "duplex", "data", "synth", str(out), "--conversations",
                                "200", "--workers", "1", "--min-seconds", "5", "--max-seconds", "6"],
                               env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("*/*.json")) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list(out.glob("*/*.json")), "no conversation was written"
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C on a terminal reaches the whole process group
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 130, err
    assert "interrupted" in err and "removed" in err
    time.sleep(1)  # nothing left running writes afterwards
    assert not out.exists()


def test_a_folder_holding_part_of_a_corpus_is_refused(tmp_path):
    from duplex.data.synth.conversation import SynthOptions, synthesize_corpus

    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "c000001.wav").write_bytes(b"")
    with pytest.raises(DatasetError, match="part of a corpus"):
        synthesize_corpus(str(tmp_path), 1, options=SynthOptions(min_seconds=5, max_seconds=6), progress=False)
    assert [p.name for p in tmp_path.rglob("*")] == ["train", "c000001.wav"]  # left as it was
