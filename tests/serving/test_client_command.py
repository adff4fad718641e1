"""``duplex client`` as a new user meets it: the words and the progress counter on one terminal, the "s sent"
figure after Ctrl-C, and what it says for a wss:// address of a server without TLS."""

import asyncio
import io
import re
import socket
import threading

import numpy as np
import pytest
import soundfile
from helpers import Screen, serve, speech

import duplex.cli.client as client_command
import duplex.serving.client as client_module
from duplex.cli import main
from duplex.errors import ClientError
from duplex.serving.client import converse

WORDS = ("Hello there, how are you doing today? I was thinking about the weather and whether it will rain on "
         "the weekend, because we wanted to go for a long walk by the river with the dog.").split(" ")


def fake_converse(seconds_sent=None, interrupt=False):
    """Stands in for the network: the words arrive between progress updates, as from a server."""

    async def run(url, pcm, on_text=None, on_progress=None, result=None, **kwargs):
        on_progress(0.0)
        for i, word in enumerate(WORDS):
            on_text(word if i == 0 else " " + word)
            if i % 3 == 2:
                on_progress(float(i // 3 + 1))
        result.chunks.append(np.zeros(len(pcm) // 4, np.float32))
        result.audio_messages = 3
        result.sent_samples = int((seconds_sent if seconds_sent is not None else len(pcm) / 24000) * 24000)
        if interrupt:
            raise KeyboardInterrupt
        result.complete = True
        return result.finish(len(pcm))

    return run


@pytest.fixture
def audio_in(tmp_path):
    path = tmp_path / "in.wav"
    soundfile.write(path, speech(3.0), 24000)
    return path


def use_converse(monkeypatch, fake):
    monkeypatch.setattr(client_module, "converse", fake)
    monkeypatch.setattr(client_command, "converse", fake, raising=False)


def test_on_a_terminal_the_progress_line_never_overwrites_the_words(tmp_path, audio_in, monkeypatch):
    screen = Screen(width=50)
    monkeypatch.setattr("sys.stdout", screen)
    monkeypatch.setattr("sys.stderr", screen)
    monkeypatch.setenv("COLUMNS", "50")
    use_converse(monkeypatch, fake_converse())
    assert main(["client", str(audio_in), str(tmp_path / "out.wav")]) == 0
    shown = screen.text()
    assert " ".join(WORDS) in " ".join(shown.split()), shown  # every word, in order, none overwritten
    assert "of reply]" not in shown  # the counter is gone at the end
    assert all(len(line) <= 50 for line in shown.splitlines() if WORDS[-1] in line or WORDS[0] in line), shown


def test_live_text_keeps_the_counter_below_the_words_while_they_arrive():
    from duplex.serving.terminal import LiveText

    screen = Screen(width=32)
    live = LiveText(screen, screen, width=32)
    live.status("[1 / 9 s]")
    for word in WORDS[:12]:
        live.write(word + " ")
    live.message("server: a notice")
    live.status("[2 / 9 s]")
    lines = screen.text().splitlines()
    assert lines[-1] == "[2 / 9 s]"  # the bottom line: the counter, below the words being spoken
    assert "server: a notice" in lines
    words = [line for line in lines[:-1] if line != "server: a notice"]
    assert " ".join(WORDS[:12]) == " ".join(" ".join(words).split())
    live.close()
    assert " ".join(WORDS[:12]) == " ".join(screen.text().replace("server: a notice", "").split())
    assert "[2 / 9 s]" not in screen.text()


def test_words_piped_to_a_file_are_written_as_they_came_and_the_counter_stays_on_the_terminal():
    from duplex.serving.terminal import LiveText

    out, screen = io.StringIO(), Screen(width=40)
    live = LiveText(out, screen, width=40)
    for word in WORDS[:5]:
        live.write(word + " ")
        live.status("[1 / 9 s]")
    live.close()
    assert out.getvalue() == " ".join(WORDS[:5]) + " \n" and screen.text().strip() == ""


def test_after_ctrl_c_the_client_says_how_much_audio_it_actually_sent(tmp_path, audio_in, monkeypatch, capsys):
    use_converse(monkeypatch, fake_converse(seconds_sent=1.0, interrupt=True))
    assert main(["client", str(audio_in), str(tmp_path / "out.wav")]) == 130
    err = capsys.readouterr().err
    sent = re.search(r"([0-9.]+)(?: of [0-9.]+)? s sent", err)
    assert sent and float(sent.group(1)) == pytest.approx(1.0), err
    assert "interrupted (Ctrl-C)" in err


def test_the_client_counts_the_audio_it_sends():
    pcm = speech(0.5)

    async def test(server, url):
        return await converse(url, pcm, raw=True)

    result = serve(test)
    assert result.complete and result.sent_samples == len(pcm) and result.sent_seconds == pytest.approx(0.5)


@pytest.fixture
def plain_server():
    """A TCP server that answers anything with an HTTP error and hangs up (what a server without TLS does with
    a TLS greeting)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def answer():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except (socket.timeout, OSError):
                continue
            with connection:
                connection.settimeout(2)
                try:
                    connection.recv(4096)
                    connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(2)
    listener.close()


def test_wss_against_a_server_without_tls_says_so(plain_server, tmp_path, audio_in, capsys):
    with pytest.raises(ClientError, match=r"TLS handshake .* failed .*try ws://127\.0\.0\.1"):
        asyncio.run(converse(f"wss://127.0.0.1:{plain_server}", speech(0.2), raw=True))
    assert main(["client", str(audio_in), str(tmp_path / "out.wav"), "--url", f"wss://127.0.0.1:{plain_server}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "TLS handshake" in err and f"try ws://127.0.0.1:{plain_server}" in err


def test_no_server_at_the_address_is_one_line(tmp_path, audio_in, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["client", str(audio_in), str(tmp_path / "out.wav"), "--url", f"ws://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"cannot reach ws://127.0.0.1:{port}" in err and "refused" in err


def test_run_conversation_keeps_what_arrived_on_ctrl_c(monkeypatch):
    monkeypatch.setattr(client_module, "converse", fake_converse(seconds_sent=1.0, interrupt=True))
    pcm = speech(3.0)
    result = client_module.run_conversation("ws://unused", pcm, on_text=lambda piece: None,
                                            on_progress=lambda seconds: None)
    assert result.interrupted and not result.complete and len(result.audio) == len(pcm)
    assert result.errors == ["interrupted (Ctrl-C): the reply is cut there"]
    assert result.summary() == "1.00 of 3.00 s sent, 3 audio messages received"


def test_the_summaries_count_what_went_and_came():
    result = client_module.ClientResult(sent_samples=48000, audio_messages=4,
                                        reply_times=[0.0, 0.08, 0.30, 0.33]).finish(72000)
    assert result.summary() == ("2.00 of 3.00 s sent, 4 audio messages received, 2 late by more than 80 ms (at "
                                "most 140 ms)")
    live = client_module.LiveStats(sent=10, received=9, underruns=1)
    assert live.summary() == "10 frames sent, 9 received, 1 underruns"
    live.dropped = 2
    assert live.summary().endswith(", 2 microphone blocks dropped")
