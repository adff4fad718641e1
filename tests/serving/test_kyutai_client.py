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

from helpers import KyutaiPrinter, fake_sound_devices, make_engine  # noqa: E402

from duplex.serving.server import ServerOptions, VoiceServer  # noqa: E402


@pytest.mark.slow
def test_kyutai_python_client_talks_to_duplex(monkeypatch):
    played = fake_sound_devices(monkeypatch, kyutai_client)
    printer = KyutaiPrinter()
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
