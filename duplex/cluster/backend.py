"""A replica's engine: an ordinary ``duplex serve`` in a process of its own, on a private Unix socket.

The replica starts ``python -m duplex serve <the serve options> --unix-socket PATH --lifeline`` and relays to it
(relay.py). ``--lifeline`` makes the server stop, with its drain, when its standard input closes: when the
replica ends, however it ends (removed by the autoscaler, killed, its node lost), its engine does not outlive it
holding a GPU. The child inherits the replica's environment, so the GPU Ray gave the replica
(``CUDA_VISIBLE_DEVICES``) is the engine's.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import List, Optional, Sequence

from ..errors import DuplexError
from .relay import http_request

SOCKET_NAME = "duplex.sock"
STDERR_LINES = 40  # the child's last lines, kept for the message when it fails to start


def _normal_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 0)
    except (OSError, AttributeError):
        pass  # not allowed to raise its priority: said in the log (replica.py)


def _niceness(pid: int) -> Optional[int]:
    try:
        return os.getpriority(os.PRIO_PROCESS, pid)
    except (OSError, AttributeError):
        return None


class BackendError(DuplexError):
    """The replica's engine process failed to start or stopped."""


def duplex_root() -> str:
    """The folder that holds the ``duplex`` package (a checkout, or site-packages)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Backend:
    """One ``duplex serve`` child listening on ``<folder>/duplex.sock``."""

    def __init__(self, serve_args: Sequence[str], folder: Optional[str] = None):
        self.folder = folder or tempfile.mkdtemp(prefix="duplex-replica-")
        os.chmod(self.folder, 0o700)  # only this user's processes reach the socket (it trusts X-Duplex-Peer)
        self.socket_path = os.path.join(self.folder, SOCKET_NAME)
        self.command: List[str] = [sys.executable, "-m", "duplex", "serve", *serve_args,
                                   "--unix-socket", self.socket_path, "--lifeline"]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (duplex_root(), env.get("PYTHONPATH")) if p)
        self.tail: "collections.deque[str]" = collections.deque(maxlen=STDERR_LINES)
        # Ray starts its workers at niceness 15 (RAY_worker_niceness), and the engine would inherit it: every other
        # process on the machine would come before its 80 ms clock. It starts at niceness 0 where this user may.
        self.process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, env=env, preexec_fn=_normal_priority)
        self.niceness = _niceness(self.process.pid)
        self._reader = threading.Thread(target=self._copy_stderr, name="duplex-backend-stderr", daemon=True)
        self._reader.start()

    def _copy_stderr(self) -> None:
        """The child's log lines go on to the replica's log (Ray keeps it), the last few kept for errors."""
        for raw in self.process.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self.tail.append(line)
            print(line, file=sys.stderr, flush=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def failure(self) -> str:
        """Why the child ended, in one line: its last error line, or its exit status."""
        errors = [line for line in self.tail if "error" in line.lower()]
        last = errors[-1] if errors else (self.tail[-1] if self.tail else "")
        return f"the engine process ended (exit status {self.process.returncode})" + (f": {last}" if last else "")

    async def wait_ready(self, timeout: float) -> None:
        """Until the server answers ``/health`` on its socket; BackendError if the child ends or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                await asyncio.sleep(0.2)  # its last lines
                raise BackendError(self.failure())
            if os.path.exists(self.socket_path):
                try:
                    status, _, _ = await http_request(self.socket_path, "/health", {}, timeout=5.0)
                    if status == 200:
                        return
                except (OSError, ConnectionError, asyncio.TimeoutError):
                    pass
            await asyncio.sleep(0.2)
        self.stop(grace=0.0)
        raise BackendError(f"the engine process did not start within {timeout:g} s")

    def stop(self, grace: float = 10.0) -> None:
        """Close its standard input (it drains, for its ``--drain``, and stops), wait up to ``grace`` seconds,
        then kill it; remove the socket's folder."""
        if self.alive():
            try:
                self.process.stdin.close()
            except OSError:
                pass
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGKILL)
                self.process.wait()
        for name in os.listdir(self.folder) if os.path.isdir(self.folder) else []:
            try:
                os.remove(os.path.join(self.folder, name))
            except OSError:
                pass
        try:
            os.rmdir(self.folder)
        except OSError:
            pass
