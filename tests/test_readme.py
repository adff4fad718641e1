"""What the README promises a new user, checked against the tree: the two set-up commands, the CPU build of torch in
the quick start itself, the map of the code linked from the top."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end if end >= 0 else None]


def test_the_quick_start_says_how_to_get_the_cpu_build_of_torch():
    quick = _section("Quick start")
    commands = re.findall(r"```bash\n(.*?)```", quick, re.S)
    assert any("pip install" in c and "--extra-index-url https://download.pytorch.org/whl/cpu" in c
               for c in commands), "the quick start installs the CUDA build of torch on a CPU-only machine"


def test_ci_runs_exactly_the_readme_test_command():
    quick = _section("Quick start")
    test_command = next(c.strip() for c in re.findall(r"```bash\n(.*?)```", quick, re.S) if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_the_architecture_map_is_linked_from_the_top():
    assert "[ARCHITECTURE.md](ARCHITECTURE.md)" in README[:2000]
