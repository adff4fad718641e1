"""The import rule and the lint rules of pyproject.toml ([tool.ruff]) hold over the whole tree: imports sorted, at the
top of each module except where a reason is written beside them (optional dependencies, the torch-free client, the
command line's start-up time), no unused names."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_passes_on_the_tree():
    ruff = shutil.which("ruff")
    command = [ruff] if ruff else [sys.executable, "-m", "ruff"]
    probe = subprocess.run([*command, "--version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("ruff is not installed (it comes with the test extra: pip install -e '.[test]')")
    result = subprocess.run([*command, "check", "--output-format", "concise", str(ROOT)], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
