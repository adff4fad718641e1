"""What several test modules share: the reference fixtures' paths, the small-model engine, test audio, and a voice
server on an ephemeral port. (pytest fixtures live in conftest.py.)"""

from __future__ import annotations

import asyncio
import os
import shlex
import stat
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import torch

from duplex.errors import EngineFull

FIXTURES = Path(__file__).parent / "fixtures"
MIMI_SMALL = FIXTURES / "mimi_small.safetensors"
MIMI_SMALL_CONFIG = FIXTURES / "mimi_small_config.json"
LM_SMALL = FIXTURES / "lm_small.safetensors"
LM_SMALL_CONFIG = FIXTURES / "lm_small_config.json"
# The model options of a command (duplex serve, mic, bench ...) for the small reference models on the CPU.
SMALL_MODEL_ARGS = ["--lm", str(LM_SMALL), "--lm-config", str(LM_SMALL_CONFIG), "--mimi", str(MIMI_SMALL),
                    "--mimi-config", str(MIMI_SMALL_CONFIG), "--device", "cpu"]


def make_engine(slots: int = 2, tokenizer=None, greedy: bool = False, device: str = "cpu", quantize=None,
                adapters=(), **kwargs):
    """An engine on the small reference models (the LM and codec share a 64-entry vocabulary), float32 (its linear
    weights quantized with ``quantize``: "int8", "fp8"), with the LoRA ``adapters`` (files) beside its weights."""
    from codec import Mimi
    from duplex.model.lm import MoshiLM
    from duplex.runtime.engine import Engine, SamplingOptions

    lm = MoshiLM.from_checkpoint(LM_SMALL, config=LM_SMALL_CONFIG, device=device, dtype=torch.float32,
                                 quantize=quantize)
    for adapter in adapters:
        lm.add_adapter(adapter)
    mimi = Mimi.from_checkpoint(MIMI_SMALL, config=MIMI_SMALL_CONFIG, device=device)
    return Engine(lm, mimi, tokenizer=tokenizer, slots=slots, sampling=SamplingOptions(greedy=greedy), **kwargs)


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    """A voiced-ish test signal: a 180 Hz tone with a little noise, float32 mono at 24 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 24000)) / 24000
    return (0.3 * np.sin(2 * np.pi * 180 * t) + 0.02 * rng.standard_normal(t.shape)).astype(np.float32)


def serve(test, slots: int = 2, tokenizer=None, engine=None, **options):
    """Run ``test(server, url)`` against a fresh voice server on an ephemeral port (the small-model engine, or
    ``engine``); ``options`` are ServerOptions fields."""
    from duplex.serving.server import ServerOptions, VoiceServer

    async def main():
        server = VoiceServer(engine or make_engine(slots, tokenizer), ServerOptions(port=0, **options))
        await server.start()
        try:
            return await test(server, f"ws://127.0.0.1:{server.port}")
        finally:
            await server.stop()

    return asyncio.run(main())


class Screen:
    """A terminal of ``width`` columns that both stdout and stderr write to: it keeps what a person would see
    (carriage return, newline, erase line, cursor up, wrapping at the edge), and ``isatty()`` is true."""

    def __init__(self, width=40):
        self.width, self.rows, self.row, self.col = width, [[]], 0, 0
        self.snapshots = []

    def isatty(self):
        return True

    def flush(self):
        self.snapshots.append(self.text())

    def write(self, data):
        i = 0
        while i < len(data):
            if data.startswith("\x1b[K", i):
                del self.rows[self.row][self.col:]
                i += 3
                continue
            if data.startswith("\x1b[1A", i):
                self.row = max(0, self.row - 1)
                i += 4
                continue
            ch = data[i]
            i += 1
            if ch == "\r":
                self.col = 0
            elif ch == "\n":
                self.row, self.col = self.row + 1, 0
            else:
                if self.col == self.width:
                    self.row, self.col = self.row + 1, 0
                while len(self.rows) <= self.row:
                    self.rows.append([])
                line = self.rows[self.row]
                line.extend(" " * (self.col - len(line)))
                if self.col < len(line):
                    line[self.col] = ch
                else:
                    line.append(ch)
                self.col += 1
            while len(self.rows) <= self.row:
                self.rows.append([])
        return len(data)

    def text(self):
        return "\n".join("".join(row) for row in self.rows)


def fake_repo(cache, repo, files, revision="0123456789abcdef0123456789abcdef01234567"):
    """The cache layout huggingface_hub reads: models--owner--name/refs/main and snapshots/REV/FILE."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name, content in files.items():
        (snapshot / name).write_bytes(content)
    return snapshot


class EchoEngine:
    """Stands in for the engine in server tests: each slot's reply is the frame it was given (so the replies' order
    is visible), and ``opens`` counts the calls of ``open`` (what admission costs)."""

    frame_size, sample_rate = 1920, 24000

    def __init__(self, slots):
        self.slots, self.open_slots, self.opens = slots, set(), 0

    @property
    def free_slots(self):
        return self.slots - len(self.open_slots)

    def open(self, **options):
        self.opens += 1
        free = sorted(set(range(self.slots)) - self.open_slots)
        if not free:
            raise EngineFull("all slots are in use")
        self.open_slots.add(free[0])
        return free[0]

    def close(self, slot):
        self.open_slots.discard(slot)

    def step(self, frames):
        return {slot: (frame.copy(), None) for slot, frame in frames.items()}


class FakeConnection:
    """Stands in for a WebSocket connection: records what is sent; a ``stalled`` one never finishes a send (a
    client that does not read, its buffers full); ``transport.abort()`` or ``leave()`` closes it."""

    def __init__(self, name="", stalled=False):
        self.name, self.stalled, self.sent, self.closed = name, stalled, [], asyncio.Event()
        self.transport = self

    async def send(self, data):
        if self.stalled:
            await asyncio.Event().wait()
        self.sent.append(data)

    def abort(self):
        self.closed.set()

    leave = abort

    async def wait_closed(self):
        await self.closed.wait()

    async def close(self, code=1000, reason=""):
        self.closed.set()

    def positions(self):
        """The places this client was told, in order."""
        return [int(m.split(b"number ")[1].split()[0]) for m in self.sent if b"in the queue" in m]


def kyutai_greedy(lmgen_cls, lm, user: torch.Tensor) -> torch.Tensor:
    """Kyutai's ``LMGen`` greedy on user codes [B, 8, T], uncompiled (torch.compile costs seconds per case on the CPU
    and gives the same tokens): int64 [B, 9, T], -2 where it returns nothing yet."""
    from moshi.utils.compile import no_compile  # noqa: PLC0415 - Kyutai's package is optional

    gen = lmgen_cls(lm, use_sampling=False)
    columns = []
    with gen.streaming(user.shape[0]), torch.no_grad(), no_compile():
        for s in range(user.shape[-1]):
            tokens = gen.step(user[:, :, s:s + 1])
            columns.append(torch.full((user.shape[0], 9), -2) if tokens is None else tokens[:, :, 0].long())
    return torch.stack(columns, dim=-1)


class _FakeStream:
    """A sound device stream for Kyutai's client: a 200 Hz tone as the microphone, a recorder as the speaker."""

    def __init__(self, callback, blocksize, channels, is_input, record):
        self.callback, self.blocksize, self.channels = callback, blocksize, channels
        self.is_input, self.record = is_input, record
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        i = 0
        t = np.arange(self.blocksize) / 24000
        while not self._stop.is_set():
            if self.is_input:
                block = (0.3 * np.sin(2 * np.pi * 200 * (t + i * 0.08)))[:, None].astype(np.float32)
                self.callback(block, self.blocksize, None, None)
            else:
                out = np.zeros((self.blocksize, self.channels), np.float32)
                self.callback(out, self.blocksize, None, None)
                self.record.append(out[:, 0].copy())
            i += 1
            time.sleep(0.08)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class KyutaiPrinter:
    """Kyutai's client's printer, recording what it would print."""

    def __init__(self):
        self.logs, self.tokens, self.lags = [], [], 0

    def log(self, level, msg):
        self.logs.append((level, msg, time.perf_counter()))

    def print_header(self):
        pass

    def print_pending(self):
        pass

    def print_token(self, token):
        self.tokens.append(token)

    def print_lag(self):
        self.lags += 1


def fake_sound_devices(monkeypatch, kyutai_client) -> list:
    """Kyutai's client (``moshi.client``) with fake sound devices; returns the list the speaker records into."""
    played = []
    monkeypatch.setattr(kyutai_client.sd, "InputStream",
                        lambda samplerate, channels, blocksize, callback: _FakeStream(callback, blocksize, channels,
                                                                                     True, played))
    monkeypatch.setattr(kyutai_client.sd, "OutputStream",
                        lambda samplerate, channels, blocksize, callback: _FakeStream(callback, blocksize, channels,
                                                                                     False, played))
    return played


def run_with_stand_in(script, stand_in: str, tmp_path, *args, **env):
    """Run the bash ``script`` with ``args``, its ``$DUPLEX`` a stand-in (the bash source ``stand_in``, which appends
    each call to ``$CALLS``): (the finished process, each call's words). For the demos' scripts, whose own logic
    (what runs in which order, what is skipped on a second run) is tested without any model or audio."""
    command = tmp_path / "duplex"
    command.write_text(stand_in)
    command.chmod(command.stat().st_mode | stat.S_IXUSR)
    calls = tmp_path / "calls.txt"
    environ = {**os.environ, "DUPLEX": str(command), "CALLS": str(calls), **env}
    result = subprocess.run(["bash", str(script), *map(str, args)], env=environ, capture_output=True, text=True,
                            timeout=60)
    lines = calls.read_text().splitlines() if calls.exists() else []
    calls.unlink(missing_ok=True)
    return result, [shlex.split(line) for line in lines]
