"""Kyutai's own Python client (moshi.client from PyPI ``moshi``), unchanged, against this server.

Its sound device streams are replaced by fakes (a tone as the microphone, a recorder as the speaker). Skipped
unless Kyutai's package and its aiohttp dependency are importable (they are not project dependencies:
``pip install --no-deps moshi aiohttp``).
"""

import asyncio
import threading
import time

import numpy as np
import pytest

kyutai_client = pytest.importorskip("moshi.client")
pytest.importorskip("aiohttp")

from helpers import make_engine  # noqa: E402

from duplex.serving.server import ServerOptions, VoiceServer  # noqa: E402


class _FakeStream:
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


class _Printer:
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


@pytest.mark.slow
def test_kyutai_python_client_talks_to_duplex(monkeypatch):
    played = []
    monkeypatch.setattr(kyutai_client.sd, "InputStream",
                        lambda samplerate, channels, blocksize, callback: _FakeStream(callback, blocksize, channels,
                                                                                     True, played))
    monkeypatch.setattr(kyutai_client.sd, "OutputStream",
                        lambda samplerate, channels, blocksize, callback: _FakeStream(callback, blocksize, channels,
                                                                                     False, played))
    printer = _Printer()
    server_ready, port = threading.Event(), []

    def serve():
        async def main():
            server = VoiceServer(make_engine(1), ServerOptions(port=0))
            await server.start()
            port.append(server.port)
            server_ready.set()
            await asyncio.sleep(6)
            await server.stop()

        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert server_ready.wait(30)

    class Args:
        url = f"ws://127.0.0.1:{port[0]}"
        https = False

    stopped_at = []

    async def client():
        start = time.perf_counter()
        try:
            await asyncio.wait_for(kyutai_client.run(printer, Args()), timeout=3.5)
        except asyncio.TimeoutError:
            # We end the session at 3.5 s; the client's teardown then logs "lost connection", which is ours.
            stopped_at.append(start + 3.5)

    asyncio.run(client())
    thread.join(10)
    assert stopped_at, "the client ended before the test stopped it"
    errors = [m for level, m, at in printer.logs if level == "error" and at < stopped_at[0]]
    assert not errors, printer.logs
    assert ("info", "connected!") in [(level, m) for level, m, _ in printer.logs]
    assert np.abs(np.concatenate(played)).max() > 0  # the client played the server's audio
    assert sum(np.abs(p).max() > 0 for p in played) >= 4  # ~40 frames in the 3.5 s: any machine plays several
