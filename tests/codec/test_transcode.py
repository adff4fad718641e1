"""Whole recordings through the codec (codec/transcode.py): offline and chunked streaming give the same codes, the
progress callback, what the terminal shows, the files and their summary."""

import io

import numpy as np
import pytest
import soundfile as sf
import torch

from codec.errors import AudioError
from codec.io.audio import audio_conversions, check_writable_format
from codec.io.codes import load_codes
from codec.transcode import (
    TerminalProgress,
    bitrate_kbps,
    decode,
    decode_file,
    encode,
    encode_file,
    roundtrip_file,
)


@pytest.fixture
def tone():
    return torch.from_numpy((0.1 * np.sin(np.arange(10 * 1920) / 9.0)).astype(np.float32))[None]  # 10 frames


def test_streaming_in_chunks_equals_offline(small_mimi, tone):
    """Long streaming runs go chunk by chunk (to report progress), the stream's state carried across chunks: the
    codes equal the offline ones, and so does the audio decoded in chunks and in one stream."""
    offline = encode(small_mimi, tone)
    assert torch.equal(encode(small_mimi, tone, streaming=True, chunk_frames=3), offline)
    assert torch.equal(decode(small_mimi, offline, streaming=True, chunk_frames=3),
                       decode(small_mimi, offline, streaming=True, chunk_frames=100))


def test_progress_is_reported_in_seconds_of_audio(small_mimi, tone):
    calls = []
    codes = encode(small_mimi, tone, streaming=True, chunk_frames=4, on_progress=lambda *a: calls.append(a))
    assert calls == [("encode", 0.32, 0.8), ("encode", 0.64, 0.8), ("encode", 0.8, 0.8)]
    calls.clear()
    decode(small_mimi, codes, on_progress=lambda *a: calls.append(a))
    assert calls == [("decode", 0.0, 0.8), ("decode", 0.8, 0.8)]  # offline: before and after the one pass


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_terminal_shows_a_long_pass_and_a_streaming_run_line_by_line():
    out = io.StringIO()
    TerminalProgress(streaming=False, frame_rate=12.5, out=out)("decode", 0.0, 90.0)
    TerminalProgress(streaming=False, frame_rate=12.5, out=out)("encode", 0.0, 59.0)  # short: nothing said
    assert out.getvalue() == "decoding 1.5 min of audio in one pass...\n"
    screen = Terminal()
    show = TerminalProgress(streaming=True, frame_rate=12.5, out=screen)
    show("encode", 20.0, 45.0)
    show("encode", 45.0, 45.0)
    assert screen.getvalue() == "\r[encoded 20 / 45 s]\r[encoded 45 / 45 s]\n"
    piped = io.StringIO()  # not a terminal: no line that rewrites itself
    TerminalProgress(streaming=True, frame_rate=12.5, out=piped)("encode", 20.0, 45.0)
    assert piped.getvalue() == ""
    one_chunk = Terminal()
    TerminalProgress(streaming=True, frame_rate=12.5, out=one_chunk)("encode", 20.0, 20.0)
    assert one_chunk.getvalue() == ""


def test_files_and_what_loading_did(small_mimi, tmp_path):
    stereo = tmp_path / "st16.wav"
    sf.write(stereo, (0.05 * np.random.default_rng(0).standard_normal((8000, 2))).astype(np.float32), 16000)
    assert audio_conversions(stereo, 24000) == ["resampled from 16000 Hz", "2 channels mixed to mono"]
    assert audio_conversions(stereo, 16000) == ["2 channels mixed to mono"]
    assert audio_conversions(tmp_path / "missing.wav", 24000) == []
    encoded = encode_file(small_mimi, stereo, tmp_path / "c.safetensors", streaming=True)
    assert (encoded.seconds, encoded.frames, encoded.codebooks) == (0.5, 7, 8)
    assert encoded.conversions == ["resampled from 16000 Hz", "2 channels mixed to mono"]
    assert load_codes(tmp_path / "c.safetensors", small_mimi.config)[1] == 12000
    decoded = decode_file(small_mimi, tmp_path / "c.safetensors", tmp_path / "d.wav")
    assert decoded.seconds == 0.5 and decoded.conversions == []
    both = roundtrip_file(small_mimi, stereo, tmp_path / "r.wav")
    assert (sf.read(tmp_path / "r.wav")[0] == sf.read(tmp_path / "d.wav")[0]).all()
    assert both.kbps == bitrate_kbps(small_mimi, 8) == pytest.approx(0.6)  # 8 codebooks x 6 bits x 12.5 Hz


def test_an_output_name_without_an_audio_format_is_refused(tmp_path):
    check_writable_format(tmp_path / "a.flac")
    with pytest.raises(AudioError, match="unknown audio format 'XYZ'; use .wav, .flac or .ogg"):
        check_writable_format(tmp_path / "a.xyz")
