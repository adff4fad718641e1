"""The voice server end to end on loopback, with the small reference models."""

import asyncio
import contextlib
import json
import logging
import time
import urllib.request

import numpy as np
import pytest
from helpers import EchoEngine, FakeConnection, serve, speech
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from duplex.model.tokenizer import TextTokenizer
from duplex.serving.client import converse
from duplex.serving.protocol import AUDIO, CONTROL, ERROR, HANDSHAKE, message, parse_query
from duplex.serving.server import ServerOptions, VoiceServer


async def handshake(ws):
    first = await asyncio.wait_for(ws.recv(), 5)
    assert first == message(HANDSHAKE)


async def count_audio(ws, wanted, timeout=10.0):
    """Receive until ``wanted`` audio messages arrived (or ``timeout`` s passed); returns how many arrived."""
    n, end = 0, time.perf_counter() + timeout
    while n < wanted and time.perf_counter() < end:
        try:
            msg = await asyncio.wait_for(ws.recv(), max(0.01, end - time.perf_counter()))
        except asyncio.TimeoutError:
            break
        n += msg[:1] == bytes([AUDIO])
    return n


async def collect(ws, seconds):
    """All messages received during ``seconds``."""
    got = []
    end = time.perf_counter() + seconds
    try:
        while True:
            got.append(await asyncio.wait_for(ws.recv(), max(0.01, end - time.perf_counter())))
    except asyncio.TimeoutError:
        pass
    return got


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


@pytest.mark.slow
def test_opus_and_raw_clients_get_one_reply_frame_per_frame_sent():
    async def test(server, url):
        pcm = speech(2.0)
        opus, raw = await asyncio.gather(converse(url, pcm), converse(url, pcm, raw=True))
        for result in (opus, raw):
            assert result.audio.shape == pcm.shape and not result.errors
            assert result.audio_messages >= 25
            assert np.abs(result.audio[2 * 1920:]).max() > 0  # audio after the warm-up frame
        return server.stats()

    stats = serve(test)
    assert stats["connections"] == 2 and stats["sessions"] == 0


@pytest.mark.slow
def test_text_pieces_are_sent(small_tokenizer_path):
    async def test(server, url):
        return await converse(url, speech(3.0), raw=True)

    result = serve(test, tokenizer=TextTokenizer(small_tokenizer_path))
    assert result.text and all(isinstance(t, str) and t for t in result.text)


def test_bad_messages_get_an_error_and_the_session_goes_on():
    async def test(server, url):
        async with connect(url + "/api/chat") as ws:
            await handshake(ws)
            for bad in (message(9, b"x"), "a text frame", message(AUDIO, b"not an ogg stream" * 20), b""):
                await ws.send(bad)
            await ws.send(message(CONTROL, b"\x01"))  # Kyutai's endTurn control: ignored silently
            errors, audio = [], 0
            end = time.perf_counter() + 10
            while (len(errors) < 4 or audio < 10) and time.perf_counter() < end:
                m = await asyncio.wait_for(ws.recv(), 10)
                if m[:1] == bytes([ERROR]):
                    errors.append(m[1:].decode())
                audio += m[:1] == bytes([AUDIO])
            got = await collect(ws, 0.3)  # nothing else (no error for the control message)
            errors += [m[1:].decode() for m in got if m[:1] == bytes([ERROR])]
        return errors, audio

    errors, audio = serve(test)
    assert any("unknown message kind 9" in e for e in errors)
    assert any("text messages are not part of the protocol" in e for e in errors)
    assert any("malformed Ogg/Opus audio" in e for e in errors)
    assert any("empty message" in e for e in errors)
    assert len(errors) == 4 and audio >= 10  # the stream kept going


def test_oversized_message_closes_only_that_connection():
    async def test(server, url):
        async with connect(url + "/api/chat") as big, connect(url + "/api/chat?format=pcm16") as normal:
            await handshake(big)
            await handshake(normal)
            await big.send(message(AUDIO, bytes(5000)))
            with pytest.raises(ConnectionClosed) as closed:
                for _ in range(100):
                    await asyncio.wait_for(big.recv(), 2)
            assert closed.value.rcvd.code == 1009  # message too big
            return await count_audio(normal, 10)  # the other session keeps receiving its stream

    assert serve(test, max_message_bytes=4000) == 10


def test_token_is_required_when_set():
    async def test(server, url):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url + "/api/chat"):
                pass
        assert refused.value.response.status_code == 401
        with pytest.raises(InvalidStatus):
            async with connect(url + "/api/chat?token=wrong"):
                pass
        async with connect(url + "/api/chat?token=s3cret") as ws:
            await handshake(ws)
        async with connect(url + "/api/chat", additional_headers={"Authorization": "Bearer s3cret"}) as ws:
            await handshake(ws)
        async with connect(url + "/api/chat", additional_headers={"Authorization": "bearer s3cret"}) as ws:
            await handshake(ws)  # the scheme is case-insensitive (RFC 7235)
        loop = asyncio.get_running_loop()
        base = url.replace("ws://", "http://")

        def stats(suffix="", headers=None):
            request = urllib.request.Request(base + "/api/stats" + suffix, headers=headers or {})
            try:
                with urllib.request.urlopen(request, timeout=5) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        return [await loop.run_in_executor(None, stats, *args) for args in
                [(), ("?token=wrong",), ("?token=s3cret",), ("", {"Authorization": "Bearer s3cret"})]]

    assert serve(test, token="s3cret") == [401, 401, 200, 200]  # the per-session counters need the token too


@pytest.mark.parametrize("token", ["", "  "])
def test_an_empty_token_is_refused_at_start_up(token, capsys):
    with pytest.raises(ValueError, match="token is empty"):
        VoiceServer(EchoEngine(1), ServerOptions(token=token))
    from duplex.cli import main

    assert main(["serve", "--token", token, "--port", "0"]) == 2
    assert "--token is empty" in capsys.readouterr().err


def test_a_full_server_says_so_and_closes():
    async def test(server, url):
        async with connect(url + "/api/chat") as first:
            await handshake(first)
            async with connect(url + "/api/chat") as second:
                refusal = await asyncio.wait_for(second.recv(), 5)
                assert refusal[:1] == bytes([ERROR]) and b"server full" in refusal
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(second.recv(), 5)
                assert closed.value.rcvd.code == 1013
            got = await collect(first, 0.5)  # the first session is unaffected
            assert any(m[:1] == bytes([AUDIO]) for m in got)
        return server.refused

    assert serve(test, slots=1) == 1


def test_waiting_clients_learn_their_position_and_are_served_in_order():
    async def test(server, url):
        first = await connect(url + "/api/chat")
        await handshake(first)
        second = await connect(url + "/api/chat")
        assert b"you are number 1 in the queue" in await asyncio.wait_for(second.recv(), 5)
        third = await connect(url + "/api/chat")
        assert b"you are number 2 in the queue" in await asyncio.wait_for(third.recv(), 5)
        assert server.waiting == 2
        await first.close()
        # the freed slot goes to the first in line; the other moves up
        while (msg := await asyncio.wait_for(second.recv(), 5)) != message(HANDSHAKE):
            assert msg[:1] == bytes([ERROR])
        got = []
        while b"number 1 in the queue" not in (got[-1] if got else b""):
            got.append(await asyncio.wait_for(third.recv(), 5))
        fourth = await connect(url + "/api/chat")  # the queue is full (max 2 waiting: third + fourth is 2)
        assert b"number 2 in the queue" in await asyncio.wait_for(fourth.recv(), 5)
        fifth = await connect(url + "/api/chat")
        assert b"server full" in await asyncio.wait_for(fifth.recv(), 5)
        for ws in (second, third, fourth, fifth):
            await ws.close()

    serve(test, slots=1, max_waiting=2)


@pytest.mark.slow
def test_python_client_waits_in_the_queue_then_talks():
    """``converse`` treats the queue messages before the handshake as notices and is served once a slot frees."""
    async def test(server, url):
        notices = []
        first = asyncio.create_task(converse(url, speech(1.0), raw=True))
        await asyncio.sleep(0.3)
        second = await converse(url, speech(1.0), raw=True, on_notice=notices.append)
        await first
        return notices, second

    notices, second = serve(test, slots=1, max_waiting=1)
    assert notices and "number 1 in the queue" in notices[0]
    assert second.audio_messages >= 12 and not second.errors and second.complete


def test_python_client_errors_and_partial_replies():
    from duplex.serving.client import ClientError, ClientResult

    async def test(server, url):
        with pytest.raises(ClientError, match="HTTP 401"):
            await converse(url, speech(0.5), token="wrong")
        # the server goes away part-way: what arrived is kept, with the reason
        result = ClientResult()
        task = asyncio.create_task(converse(url, speech(4.0), raw=True, token="s3cret", result=result))
        while result.audio_messages < 5:
            await asyncio.sleep(0.05)
        await server.stop()
        got = await asyncio.wait_for(task, 10)
        return got

    got = serve(test, token="s3cret")
    assert got.errors and "ended early" in got.errors[0] and not got.complete
    assert 5 <= got.audio_messages < 50 and len(got.audio) == 4 * 24000 and np.abs(got.audio).max() > 0


def test_query_parameters_set_the_session_sampling():
    async def test(server, url):
        async with connect(url + "/api/chat?audio_temperature=0.3&audio_topk=100000&text_topk=12"
                           "&text_temperature=abc&audio_seed=77") as ws:
            await handshake(ws)
            slot = next(iter(server.sessions))
            audio, text = server.engine.sampling.audio, server.engine.sampling.text
            return (float(audio.temperature[slot]), int(audio.top_k[slot]), int(text.top_k[slot]),
                    float(text.temperature[slot]), int(server.engine.sampling.seed[slot]))

    temperature, top_k, text_top_k, text_temperature, seed = serve(test)
    assert temperature == pytest.approx(0.3) and top_k == 64  # clamped to the vocabulary / engine maximum
    assert text_top_k == 12 and text_temperature == pytest.approx(0.7)  # unparsable value: the default
    assert seed == 77


@pytest.mark.slow
def test_a_stalled_client_does_not_delay_others():
    """Another client gets every reply it is owed while one never reads (each session sends from its own task;
    the clock never waits for a send). That the unread replies are dropped from a bounded outbox:
    tests/serving/test_outbox.py."""
    async def test(server, url):
        stalled = await connect(url + "/api/chat?format=pcm16", max_queue=1)
        await handshake(stalled)  # ... and never reads again
        result = await converse(url, speech(3.0))
        stalled.transport.abort()
        return result

    result = serve(test)
    assert result.complete and result.audio_messages == 38 and not result.errors  # 3 s: 38 frames of 80 ms


def test_http_routes():
    async def test(server, url):
        base = url.replace("ws://", "http://")
        loop = asyncio.get_running_loop()

        def get(path):
            try:
                with urllib.request.urlopen(base + path, timeout=5) as r:
                    return r.status, r.headers.get("Content-Type"), r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, None, e.read().decode()

        return [await loop.run_in_executor(None, get, p) for p in ("/", "/api/stats", "/missing")]

    page, stats, missing = serve(test)
    assert page[0] == 200 and page[1].startswith("text/html") and "api/chat" in page[2]
    assert stats[0] == 200 and json.loads(stats[2])["slots"] == 2
    assert missing[0] == 404 and "not found" in missing[2]


def test_memory_is_flat_over_200_connections():
    async def test(server, url):
        frame = message(AUDIO, bytes(3840))

        async def once():
            async with connect(url + "/api/chat?format=pcm16") as ws:
                await handshake(ws)
                await ws.send(frame)

        # Warm up: the engine's first steps allocate its working memory (about 30 MB here, once), and a short
        # connection may come and go between two ticks; a session that gets replies makes sure the engine stepped.
        # Without it the figure depended on which tests ran before this one.
        async with connect(url + "/api/chat?format=pcm16") as ws:
            await handshake(ws)
            for _ in range(3):
                await ws.send(frame)
            assert await count_audio(ws, 3) == 3
        for _ in range(20):
            await once()
        before = rss_mb()
        for _ in range(200):
            await once()
        await asyncio.sleep(0.3)
        return rss_mb() - before, server.stats()

    # 221 upgrades from one peer in a few seconds: over the default rate (test_network_limits.py)
    growth, stats = serve(test, upgrades_per_peer=1e3, upgrades_peer_burst=1e3, upgrades_total=1e3,
                          upgrades_total_burst=1e3)
    assert growth < 30 and stats["sessions"] == 0 and stats["connections"] == 221


@pytest.mark.slow
def test_concurrent_clients_in_their_own_processes_get_every_reply():
    """What must hold on any machine at a load it easily holds (the small model, 4 clients): every client, in its
    own process and time-synchronous, gets exactly one reply per frame it sent, with no error; the server drops
    nothing and ends with no session. (How fast a given machine serves how many clients: duplex bench serve.)"""
    from duplex.bench.serve import run_clients

    async def test(server, url):
        return await run_clients(url, clients=4, seconds=3.0, formats="mixed")

    report = serve(test, slots=4)
    clients = report["clients"]
    assert [c["format"] for c in clients] == ["opus", "pcm16", "opus", "pcm16"]
    for c in clients:
        assert "exception" not in c, c
        assert c["frames_sent"] == 38 and c["replies"] == 38 and c["lost"] == 0 and c["complete"]
        assert not c["errors"]
    server = report["server"]
    # every frame sent was received, but one still on its way when its client left: the server, on time, stepped
    # on an underrun for it (counted, a reply of silence), the client had its 38 replies and closed (seen once in
    # a full suite on 2 loaded cores: 150 of 152)
    assert 4 * 38 - server["underruns"] <= server["frames_in"] <= 4 * 38
    assert server["dropped_in"] == 0 and server["dropped_out"] == 0 and server["bad_messages"] == 0  # ... and kept
    assert server["sessions_after"] == 0


@pytest.mark.slow
def test_replies_come_in_order_one_per_frame():
    """Frame k of the input carries the level k: the replies carry the same levels in the same order, each
    once, with silence only where the server had no frame yet (an underrun, which it counts)."""
    frames = 25
    levels = (np.arange(1, frames + 1) / 100).astype(np.float32)
    pcm = np.repeat(levels, 1920)

    async def main():
        server = VoiceServer(EchoEngine(2), ServerOptions(port=0))
        await server.start()
        try:
            result = await converse(f"ws://127.0.0.1:{server.port}", pcm, raw=True)
            for _ in range(50):
                if not server.sessions:
                    break
                await asyncio.sleep(0.05)
            return result, server.stats()
        finally:
            await server.stop()

    result, stats = asyncio.run(main())
    assert result.complete and result.audio_messages == frames and not result.errors
    replies = np.round(result.audio.reshape(frames, 1920) * 100).astype(int)
    assert (replies == replies[:, :1]).all()  # each reply is one whole input frame (or silence)
    order = [int(r[0]) for r in replies if r[0] != 0]
    assert order == list(range(1, len(order) + 1))  # in order, none twice, none skipped
    silent = frames - len(order)
    assert silent <= stats["totals"]["underruns"]  # silence only where the server counted an underrun
    assert stats["sessions"] == 0 and stats["totals"]["dropped_in"] == 0


@pytest.mark.slow
def test_live_client_microphone_to_speaker():
    """duplex client's live mode with an injected sound stream (no hardware)."""
    import threading

    from duplex.serving.client import talk

    played = []

    class FakeStream:
        def __init__(self, callback):
            self.callback = callback
            self.thread = threading.Thread(target=self.run, daemon=True)

        def run(self):
            t = np.arange(1920) / 24000
            for i in range(30):
                out = np.zeros((1920, 1), np.float32)
                self.callback((0.3 * np.sin(2 * np.pi * 200 * (t + 0.08 * i)))[:, None], out, 1920, None, None)
                played.append(out[:, 0].copy())
                time.sleep(0.08)

        def __enter__(self):
            self.thread.start()
            return self

        def __exit__(self, *exc):
            self.thread.join()

    async def test(server, url):
        return await talk(url, seconds=2.6, stream_factory=FakeStream)

    stats = serve(test)
    # 30 blocks of 80 ms go out; replies come back one per server tick (a few may still be in flight at the end)
    assert stats.sent == 30 and stats.received >= 20
    assert np.abs(np.concatenate(played)).max() > 0  # replies reached the speaker


@pytest.mark.skipif(__import__("shutil").which("openssl") is None, reason="needs the openssl command")
@pytest.mark.parametrize("front", [False, True])
def test_tls(tmp_path, front):
    """--ssl-cert/--ssl-key serve wss:// (a self-signed certificate made here); with the front process (as duplex
    serve runs) TLS ends there."""
    import ssl
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    client_ssl = ssl.create_default_context(cafile=str(cert))
    client_ssl.check_hostname = False

    async def test(server, url):
        async with connect(url.replace("ws://", "wss://") + "/api/chat?format=pcm16", ssl=client_ssl) as ws:
            await handshake(ws)
            got = await collect(ws, 0.5)
        return [m for m in got if m[:1] == bytes([AUDIO])]

    assert len(serve(test, ssl_cert=str(cert), ssl_key=str(key), front=front)) >= 4


def test_tls_files_that_do_not_work_are_named_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import duplex.cli.serve as serve_command
    from duplex.cli import main

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the TLS files were checked")

    monkeypatch.setattr(serve_command, "build_engine", no_model)
    text = tmp_path / "notes.txt"
    text.write_text("not a certificate")
    for cert, key, words in [(tmp_path / "missing.pem", text, f"TLS certificate {tmp_path / 'missing.pem'}: no such file"),
                             (text, tmp_path / "nokey.pem", f"TLS private key {tmp_path / 'nokey.pem'}: no such file"),
                             (text, text, f"TLS certificate {text} with private key {text}: not a PEM certificate")]:
        assert main(["serve", "--ssl-cert", str(cert), "--ssl-key", str(key), "--port", "0"]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_origin_check():
    async def test(server, url):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url + "/api/chat", origin="https://evil.example"):
                pass
        assert refused.value.response.status_code == 403
        async with connect(url + "/api/chat", origin="https://good.example") as ws:
            await handshake(ws)
        async with connect(url + "/api/chat") as ws:  # no Origin header: not a browser (duplex client, Kyutai's)
            await handshake(ws)

    serve(test, origins=["https://good.example"])


@pytest.mark.slow
def test_a_flooding_client_is_slowed_then_closed():
    """Messages past the per-connection budget are not read until it refills (TCP pushes back on the client), so
    a flood cannot take the server from the other sessions; a client over its budget for seconds on end is
    closed (1008; it sees 1006 when its own backlog hides the close frame) and its slot freed."""
    async def test(server, url):
        async with connect(url + "/api/chat?format=pcm16") as flood:
            await handshake(flood)

            async def read_replies():  # so that the server's close frame is not stuck behind unread replies
                with contextlib.suppress(ConnectionClosed):
                    async for _ in flood:
                        pass

            reader = asyncio.create_task(read_replies())
            start = time.perf_counter()
            with pytest.raises(ConnectionClosed) as closed:
                while time.perf_counter() - start < 60:  # it takes ~5 s (max_throttled_seconds)
                    await asyncio.wait_for(flood.send(message(9, b"x")), 30)  # unknown kind: counted, answered
            await reader
        # The server closed it on purpose (a crash or a dropped connection would bring no close frame), even where
        # the closing handshake could not finish behind the flood still in the socket (the client then says 1006).
        assert closed.value.rcvd is not None, closed.value
        assert closed.value.rcvd.code == 1008 and closed.value.rcvd.reason == "sending too fast"
        for _ in range(50):  # the server's side of the close takes up to its close timeout
            if server.engine.free_slots == 1:
                break
            await asyncio.sleep(0.1)
        assert server.engine.free_slots == 1 and not server.sessions

    serve(test, slots=1, read_messages_per_second=50.0)


def test_read_budget():
    from duplex.serving.server import ReadBudget

    now = [100.0]
    budget = ReadBudget(messages_per_second=10, bytes_per_second=1000, burst_bytes=2000, clock=lambda: now[0])
    assert [budget.spend(1) for _ in range(10)] == [0.0] * 10  # one second of messages at once
    assert budget.throttled_for == 0.0
    assert budget.spend(1) == pytest.approx(0.1)  # the 11th waits for one message's worth of refill
    now[0] += 0.05
    assert budget.spend(1) == pytest.approx(0.15)  # still behind: the pause grows
    now[0] += 2.0
    assert budget.throttled_for == pytest.approx(2.05)  # over budget, without a break, since the 11th
    assert budget.spend(1) == 0.0 and budget.throttled_for == 0.0  # refilled: the throttling ends
    for _ in range(60):  # a client at the budget's rate that never used its burst ...
        now[0] += budget.spend(1) + 0.1
    assert budget.spend(1) == 0.0 and budget.throttled_for == 0.0  # ... is never throttled
    budget = ReadBudget(messages_per_second=10, bytes_per_second=1000, burst_bytes=2000, clock=lambda: now[0])
    start = now[0]
    for _ in range(10):
        budget.spend(1)  # the burst, all at once
    for _ in range(60):  # then one message every 0.1 s, each fitting just after its pause: a flood all along
        now[0] += max(budget.spend(1), 0.1)
    assert budget.throttled_for == pytest.approx(now[0] - start, abs=0.11)
    budget = ReadBudget(messages_per_second=100, bytes_per_second=1000, burst_bytes=2000, clock=lambda: now[0])
    assert budget.spend(2000) == 0.0 and budget.spend(500) == pytest.approx(0.5)  # bytes: a burst, then the rate
    assert budget.spend(10) == pytest.approx(0.564)  # every message costs at least 64 bytes


def test_a_waiting_client_that_leaves_gives_its_place_up():
    async def test(server, url):
        first = await connect(url + "/api/chat")
        await handshake(first)
        second = await connect(url + "/api/chat")
        assert b"number 1 in the queue" in await asyncio.wait_for(second.recv(), 5)
        await second.close()
        for _ in range(50):
            if server.waiting == 0:
                break
            await asyncio.sleep(0.05)
        assert server.waiting == 0
        third = await connect(url + "/api/chat")  # not refused: the queue has room again
        assert b"number 1 in the queue" in await asyncio.wait_for(third.recv(), 5)
        await first.close()
        while await asyncio.wait_for(third.recv(), 5) != message(HANDSHAKE):
            pass
        await third.close()

    serve(test, slots=1, max_waiting=1)


def test_query_values_that_do_not_parse_are_ignored():
    from duplex.serving.protocol import parse_query

    q = parse_query("/api/chat?audio_topk=inf&audio_seed=1e400&text_temperature=nan&text_topk=12")
    assert q.sampling == {"text_top_k": 12}  # only the value that parsed; the engine's defaults fill in the rest


def test_an_opus_message_holding_seconds_of_pages_is_decoded():
    """sphn's stream reader fails on one call that decodes more than ~5 s; the server feeds a message's pages in
    groups, so a client that sends 8 s of Ogg pages at once is not told its audio is malformed. How much audio
    each page holds is known before decoding (from the Opus packets' TOC bytes)."""
    import sphn

    from duplex.serving.protocol import OggPageReader
    from duplex.serving.server import Session

    writer = sphn.OpusStreamWriter(24000)
    pcm = speech(8.0)
    pages = b"".join(writer.append_pcm(pcm[i:i + 1920]) for i in range(0, len(pcm), 1920))
    reader = OggPageReader(24000)
    split = [reader.feed(pages[i:i + 1000]) for i in range(0, len(pages), 1000)]  # pages across messages
    assert all(problem is None for _, problem in split)
    whole = [page for found, _ in split for page in found]
    assert b"".join(page.data for page in whole) == pages and sum(page.samples for page in whole) == len(pcm)
    session = Session(None, 0, parse_query("/api/chat"), 1920, 24000, ServerOptions(input_buffer_frames=1000))
    assert session.receive(message(AUDIO, pages)) is None
    assert session.stats.bad_messages == 0 and session.stats.frames_in >= 95
    assert session.last_audio_samples == len(pcm)


class CountingReader:
    """Wraps a session's Opus stream reader to count what it decodes."""

    def __init__(self, reader):
        self.reader, self.samples = reader, 0

    def append_bytes(self, data):
        out = self.reader.append_bytes(data)
        self.samples += 0 if out is None else len(out)
        return out


def test_an_opus_bomb_decodes_no_more_than_the_input_buffer_holds():
    """2-byte Opus packets that a decoder conceals with 120 ms each: 200 pages claim 48 s of audio from 6 KB.
    The session decodes only the newest 800 ms it can buffer; the rest is counted as dropped, and the message
    costs the read budget all 48 s."""
    from duplex.bench.fuzz import opus_bomb, opus_headers
    from duplex.serving.server import Session

    session = Session(None, 0, parse_query("/api/chat"), 1920, 24000, ServerOptions())
    session._reader = counting = CountingReader(session._reader)
    assert session.receive(message(AUDIO, opus_headers() + opus_bomb(200))) is None
    assert session.last_audio_samples == 48 * 24000  # charged in full
    assert counting.samples <= 10 * 1920  # the buffer's 10 frames, not 48 s
    assert len(session.frames) <= 10 and session.stats.dropped_in >= 48 * 12.5 - 10
    huge = opus_bomb(31575, first_sequence=202)  # the 1 MB message of the report: 7,578 s of audio
    assert len(huge) < ServerOptions().max_message_bytes
    problem = session.receive(message(AUDIO, huge))
    assert "more than 256 Ogg pages" in problem and counting.samples <= 10 * 1920  # refused, nothing decoded


@pytest.mark.slow
def test_opus_bombs_are_closed_and_the_other_sessions_keep_real_time():
    from duplex.bench.fuzz import opus_bomb, opus_headers

    async def test(server, url):
        async def bomber():
            async with connect(url + "/api/chat") as ws:
                await handshake(ws)
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.send(message(AUDIO, opus_headers() + opus_bomb(250)))  # 60 s of audio
                    for _ in range(100):
                        await asyncio.wait_for(ws.recv(), 10)
                return closed.value.rcvd

        honest = asyncio.create_task(converse(url, speech(3.0), raw=True))
        closes = await asyncio.gather(*[bomber() for _ in range(3)])
        result = await honest
        for _ in range(50):
            if not server.sessions:
                break
            await asyncio.sleep(0.1)
        return closes, result, server.stats()

    closes, result, stats = serve(test, slots=4)
    assert all(c is not None and c.code == 1008 for c in closes), closes  # 60 s sent at once: over budget
    assert result.complete and result.audio_messages == 38 and not result.errors
    assert stats["sessions"] == 0


def test_a_waiting_client_that_never_reads_jams_nobody():
    """Queue notices go out from each waiter's own task: one that never completes a send holds up no other
    client's notice, is dropped after the notice timeout and gives its place up; the queue moves on."""
    from duplex.serving.protocol import SessionOptions

    async def main():
        server = VoiceServer(EchoEngine(1), ServerOptions(port=0, max_waiting=2, notice_timeout=0.5))
        await server.start()
        try:
            server.engine.open()  # the one slot is taken
            stalled, patient = FakeConnection(stalled=True), FakeConnection()
            first = asyncio.create_task(server._open_slot(stalled, SessionOptions()))
            await asyncio.sleep(0.05)
            second = asyncio.create_task(server._open_slot(patient, SessionOptions()))
            for _ in range(20):  # its notice does not wait for the stalled one's
                if patient.sent:
                    break
                await asyncio.sleep(0.01)
            told_at_once = list(patient.sent)
            assert await asyncio.wait_for(first, 5) is None  # dropped after the notice timeout: left the queue
            for _ in range(50):
                if len(patient.sent) == 2:
                    break
                await asyncio.sleep(0.02)
            waiting = server.waiting
            server.engine.close(0)
            await server._wake_queue()
            slot = await asyncio.wait_for(second, 5)
            return told_at_once, patient.sent, waiting, slot, server.waiting
        finally:
            await server.stop()

    told_at_once, told, waiting, slot, waiting_after = asyncio.run(main())
    assert len(told_at_once) == 1 and b"number 2 in the queue" in told_at_once[0]
    assert b"number 1 in the queue" in told[1]  # moved up when the stalled client was dropped
    assert waiting == 1 and slot == 0 and waiting_after == 0


def test_a_refused_client_that_already_left_is_not_an_error(caplog):
    """The 'server full' notice to a client that closed right after the upgrade is no traceback in the log."""
    async def test(server, url):
        async with connect(url + "/api/chat") as holder:
            await handshake(holder)
            for i in range(20):
                ws = await connect(url + "/api/chat")
                if i % 2:
                    await ws.close()  # gone before the server says it is full: closed properly ...
                else:
                    ws.transport.abort()  # ... or dropped
            await asyncio.sleep(0.5)
        return server.refused

    with caplog.at_level(logging.INFO):
        refused = serve(test, slots=1, upgrades_peer_burst=100.0)  # 21 upgrades at once, over the default burst
    assert refused == 20
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


def test_dropped_input_blames_the_side_that_is_late(caplog, monkeypatch):
    """A full input buffer is the client's doing when it sent more than real time allows, and the server's when
    the client kept to real time but the server did not step."""
    from duplex.serving import session as session_module
    from duplex.serving.protocol import pcm16_bytes
    from duplex.serving.server import Session

    now = [1000.0]
    monkeypatch.setattr(session_module.time, "monotonic", lambda: now[0])
    frame = message(AUDIO, pcm16_bytes(np.zeros(1920, np.float32)))
    flood = Session(None, 0, parse_query("/api/chat?format=pcm16"), 1920, 24000, ServerOptions(input_buffer_frames=4))
    with caplog.at_level("WARNING", logger="duplex.serving.session"):
        for _ in range(10):  # 10 frames at once: 800 ms of audio in no time
            flood.receive(frame)
    assert "the client sends faster than real time" in caplog.text
    caplog.clear()
    slow = Session(None, 1, parse_query("/api/chat?format=pcm16"), 1920, 24000, ServerOptions(input_buffer_frames=4))
    with caplog.at_level("WARNING", logger="duplex.serving.session"):
        for _ in range(10):  # one frame per 80 ms, and nobody takes them: the server is not stepping
            now[0] += 0.08
            slow.receive(frame)
    assert slow.stats.dropped_in == 6 and "the server steps slower than real time" in caplog.text
    assert "client sends faster" not in caplog.text


def test_the_client_counts_replies_behind_the_pace_of_one_per_frame():
    from duplex.serving.client import ClientResult

    result = ClientResult(reply_times=[10.0, 10.08, 10.16, 10.40, 10.48])
    late, worst = result.late_replies()
    assert late == 2 and worst == pytest.approx(0.16)
    assert ClientResult().late_replies() == (0, 0.0)
