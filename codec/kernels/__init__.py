"""Own CPU kernels (``cpu.cpp``), built on this machine at first use and loaded as PyTorch operators.

Where the library's kernels fall short on the streaming hot path, measured (docs/benchmarks.md, "Own CPU
kernels"), two loops are written by hand: ``torch.ops.duplex_cpu.ring_attention`` (a few queries against a long
KV ring) and ``torch.ops.duplex_cpu.gemv`` (one row against a row-major weight). Everything else stays PyTorch's.

``cpu_kernels()`` returns the operator namespace, or None where the kernels cannot be had: the environment
variable ``DUPLEX_CPU_KERNELS=0``, no C++ compiler, a failed build or load (one warning says why). Callers then
take the library's route, with the same results up to the last bits.

The build: one ``c++`` run (about 5 s on the 2-vCPU machine of docs/benchmarks.md) with PyTorch's own include and
library paths (``torch.utils.cpp_extension``), ``-O3 -march=native`` (the kernels are built for this CPU: the file's name holds
a fingerprint of the source, PyTorch's version, the compiler flags and this CPU's model and flags, so a cache shared
between machines never loads another CPU's build). Not ``torch.utils.cpp_extension.load``: its build lock waits
forever on a lock file that an interrupted build left behind; here the compiler runs with a time limit, writes to a
temporary name and the finished file is renamed into place, so an interrupted build leaves nothing half-made.
The cache: ``$DUPLEX_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/duplex/kernels``, else ``~/.cache/duplex/kernels``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Optional

import torch

from ..io.files import write_atomically

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu.cpp")
NAMESPACE = "duplex_cpu"
FLAGS = ("-O3", "-march=native", "-fopenmp", "-std=c++17", "-shared", "-fPIC")
BUILD_TIMEOUT_S = 300

_lock = threading.Lock()
_loaded: "Optional[object]" = None
_tried = False


def enabled() -> bool:
    """False when ``DUPLEX_CPU_KERNELS`` is 0 / false / no / off."""
    return os.environ.get("DUPLEX_CPU_KERNELS", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    if os.environ.get("DUPLEX_KERNEL_CACHE"):
        return Path(os.environ["DUPLEX_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "duplex" / "kernels"


def _cpu_identity() -> str:
    """This CPU's model and feature flags (what ``-march=native`` builds for)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
        lines = [line for line in text.splitlines() if line.startswith(("model name", "flags", "Features"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _compiler() -> Optional[str]:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def library_path() -> Path:
    """Where this machine's build of the kernels lives (or will)."""
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), torch.__version__.encode(), str(torch.version.git_version).encode(), " ".join(FLAGS).encode(), _cpu_identity().encode(),
                 sys.version.encode()):
        digest.update(part)
        digest.update(b"\0")
    return cache_dir() / f"{NAMESPACE}-{digest.hexdigest()[:16]}.so"


def _command(compiler: str, output: Path) -> list:
    from torch.utils import cpp_extension  # noqa: PLC0415 (imports setuptools: only when a build is needed)

    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", 1))
    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    libraries = [f"-L{p}" for p in cpp_extension.library_paths()]
    rpath = [f"-Wl,-rpath,{p}" for p in cpp_extension.library_paths()]
    return [compiler, *FLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={abi}", *includes, str(SOURCE), "-o", str(output),
            *libraries, *rpath, "-lc10", "-ltorch_cpu"]


def _compile(compiler: str, output: str) -> None:
    """One compiler run into ``output``, in its own process group, so a build past its time limit (or interrupted
    by Ctrl-C) is stopped whole: the driver and what it started."""
    process = subprocess.Popen(_command(compiler, Path(output)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        text, _ = process.communicate(timeout=BUILD_TIMEOUT_S)
    except BaseException as e:  # the time limit, or Ctrl-C: the build goes with us
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        if isinstance(e, subprocess.TimeoutExpired):
            raise RuntimeError(f"the C++ build took more than {BUILD_TIMEOUT_S} s") from None
        raise
    if process.returncode != 0:
        lines = [line for line in text.splitlines() if "error" in line] or text.splitlines()[-1:]
        raise RuntimeError(f"the C++ build failed: {lines[0].strip() if lines else process.returncode}")


def build(path: Path) -> None:
    """Compile ``cpu.cpp`` into ``path``: written under a temporary name and renamed when complete
    (``codec.io.files.write_atomically``, which also removes what a failed build left)."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (c++, g++ or clang++; or set CXX)")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda temporary: _compile(compiler, temporary))


def _registered():
    """``torch.ops.duplex_cpu`` if this process already holds the kernels (a library defines its operators once
    per process), else None."""
    try:
        getattr(torch.ops, NAMESPACE).gemv.default  # noqa: B018 (the lookup is the check)
        return getattr(torch.ops, NAMESPACE)
    except (AttributeError, RuntimeError):
        return None


def _register_fakes() -> None:
    """Shapes of the outputs for torch.compile's tracing (the compiled graph then calls the same kernels)."""
    @torch.library.register_fake(f"{NAMESPACE}::ring_attention")
    def _(q, k, v, mask):
        return q.new_empty(q.shape)

    @torch.library.register_fake(f"{NAMESPACE}::gemv")
    def _(x, weight):
        return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _load():
    """Load this machine's build, building it first if missing; a cached file that does not load (damaged, or
    another build's) is removed and built again, once."""
    path = library_path()
    built = False
    if not path.exists():
        log.info("building duplex's CPU kernels for this machine (once): %s", path)
        build(path)
        built = True
    try:
        torch.ops.load_library(str(path))
    except Exception as e:
        if built:
            raise
        log.info("the cached build %s does not load (%s); building it again", path, e)
        path.unlink(missing_ok=True)
        build(path)
        torch.ops.load_library(str(path))
    _register_fakes()
    return getattr(torch.ops, NAMESPACE)


def cpu_kernels():
    """``torch.ops.duplex_cpu`` once this machine's build is loaded (built now if missing); None when the kernels
    are switched off or cannot be built or loaded (one warning, then the library's route for good).

    Nothing is built or loaded while torch.compile traces (the answer so far is read); ``CompiledStage`` and the
    model's inference preparation call this first, so a traced graph takes the route the eager step takes."""
    global _loaded, _tried
    if _tried or torch.compiler.is_compiling():
        return _loaded
    with _lock:
        if _tried:
            return _loaded
        if enabled():
            try:
                _loaded = _registered() or _load()
            except Exception as e:  # any failure: the library's kernels serve instead
                log.warning("duplex's own CPU kernels are not available (%s); using PyTorch's", e)
                _loaded = None
        _tried = True
        return _loaded


def ring_attention_op():
    """``torch.ops.duplex_cpu.ring_attention``, or None (``cpu_kernels``)."""
    kernels = cpu_kernels()
    return None if kernels is None else kernels.ring_attention


def gemv_op():
    """``torch.ops.duplex_cpu.gemv``, or None (``cpu_kernels``)."""
    kernels = cpu_kernels()
    return None if kernels is None else kernels.gemv
