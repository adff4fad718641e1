"""Audio files at the edges: any common format, any rate, mixed to mono, resampled to 24 kHz."""

import numpy as np
import pytest
import soundfile as sf
import torch

from codec.io.audio import AudioError, load_audio, read_audio, resample, save_audio, to_mono


def _tone(rate, seconds, freq, channels=1):
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t)
    return np.stack([wave * (c + 1) / channels for c in range(channels)], axis=1).astype(np.float32)


def _peak_frequency(pcm, rate):
    spectrum = np.abs(np.fft.rfft(pcm))
    return np.argmax(spectrum) * rate / len(pcm)


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
def test_load_resamples_any_rate_to_24k(tmp_path, rate):
    path = tmp_path / "tone.wav"
    sf.write(path, _tone(rate, 1.0, 440.0), rate)
    pcm = load_audio(path, 24000)
    assert pcm.shape == (1, 24000)
    assert pcm.dtype == torch.float32
    assert abs(_peak_frequency(pcm[0].numpy(), 24000) - 440.0) < 2.0


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 96000])
def test_the_any_ratio_resampler_is_torchaudios_filter(rate):
    """Evaluated per output sample, the filter gives torchaudio's output (same length, same values) for the
    rates where torchaudio's precomputed kernel is small."""
    from codec.io.audio import import_torchaudio, resample_any_ratio

    x = torch.randn(2, rate, generator=torch.Generator().manual_seed(rate)) * 0.3
    expected = import_torchaudio().functional.resample(x, rate, 24000)
    got = resample_any_ratio(x, rate, 24000)
    assert got.shape == expected.shape and (got - expected).abs().max() < 5e-5


@pytest.mark.parametrize("rate", [16001, 22051, 30001, 44101])
def test_rates_that_share_no_factor_with_24k_resample_in_bounded_memory(tmp_path, monkeypatch, rate):
    """torchaudio's kernel for 16001 Hz -> 24 kHz has 24000 x 16014 entries (gigabytes); such rates take the
    per-sample filter instead, whose cost does not depend on the rates' common factors."""
    import codec.io.audio as audio

    torchaudio = audio.import_torchaudio()

    def refuse(*args, **kwargs):
        raise AssertionError("torchaudio's kernel would not fit in memory")

    monkeypatch.setattr(torchaudio.functional, "resample", refuse)
    path = tmp_path / "odd.wav"
    sf.write(path, _tone(rate, 1.0, 440.0), rate)
    pcm = load_audio(path, 24000)
    assert pcm.shape == (1, 24000)
    t = np.arange(24000) / 24000
    np.testing.assert_allclose(pcm[0, 200:-200].numpy(), 0.5 * np.sin(2 * np.pi * 440 * t[200:-200]), atol=2e-3)


def test_stereo_is_mixed_to_mono(tmp_path):
    path = tmp_path / "stereo.flac"
    data = _tone(24000, 0.5, 300.0, channels=2)  # right channel twice the left
    sf.write(path, data, 24000)
    pcm = load_audio(path)
    assert pcm.shape == (1, 12000)
    np.testing.assert_allclose(pcm[0].numpy(), data.mean(axis=1), atol=1e-4)  # FLAC is 16-bit


def test_to_mono_and_resample_helpers():
    x = torch.stack([torch.ones(10), 3 * torch.ones(10)])
    assert torch.equal(to_mono(x), 2 * torch.ones(1, 10))
    assert resample(x, 24000, 24000) is x
    assert resample(torch.zeros(1, 16000), 16000, 24000).shape == (1, 24000)
    with pytest.raises(AudioError, match="positive"):
        resample(x, 0, 24000)


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg"])
def test_save_and_read_back(tmp_path, ext):
    pcm = torch.from_numpy(_tone(24000, 0.5, 500.0)[:, 0])
    path = tmp_path / f"out.{ext}"
    save_audio(path, pcm * 3.0, 24000)  # clipped to [-1, 1]
    data, rate = read_audio(path)
    assert rate == 24000 and data.shape[0] == 1
    lossy_overshoot = 0.1 if ext == "ogg" else 1e-3  # Vorbis does not reproduce a clipped wave exactly
    assert abs(data.shape[1] - 12000) <= 1 and float(data.abs().max()) <= 1.0 + lossy_overshoot
    assert [p.name for p in tmp_path.iterdir()] == [f"out.{ext}"]  # written beside, renamed: no leftovers


def test_a_failed_save_leaves_the_old_file(tmp_path, monkeypatch):
    import soundfile as sf

    path = tmp_path / "out.wav"
    save_audio(path, torch.zeros(2400), 24000)
    before = path.read_bytes()

    def broken(file, *args, **kwargs):
        with open(file, "wb") as f:
            f.write(b"RIFF half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sf, "write", broken)
    with pytest.raises(AudioError, match="disk full"):
        save_audio(path, torch.ones(2400), 24000)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["out.wav"]


def test_save_through_a_symlink_keeps_the_link_and_the_mode(tmp_path):
    import os

    target = tmp_path / "real" / "target.wav"
    target.parent.mkdir()
    save_audio(target, torch.zeros(2400), 24000)
    os.chmod(target, 0o640)
    link = tmp_path / "link.wav"
    link.symlink_to(target)
    save_audio(link, 0.5 * torch.ones(2400), 24000)
    assert link.is_symlink() and (os.stat(target).st_mode & 0o777) == 0o640
    assert float(read_audio(target)[0].abs().max()) > 0.4


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        load_audio(tmp_path / "missing.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF0000WAVEjunkjunkjunk")
    with pytest.raises(AudioError, match="cannot read audio file"):
        load_audio(bad)


def test_non_finite_file_is_rejected(tmp_path):
    data = np.zeros(2400, dtype=np.float32)
    data[10] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, data, 24000, subtype="FLOAT")
    with pytest.raises(AudioError, match="non-finite"):
        load_audio(path)


def test_a_torchaudio_that_does_not_load_is_one_clear_line(monkeypatch, tmp_path, capsys):
    """A torchaudio built for another torch fails at import with an undefined symbol deep in the loader: the
    error names both versions and the command that installs a matching pair."""
    import importlib.metadata
    import sys

    from codec.io.audio import DependencyError
    from duplex.cli import main

    class BrokenTorchaudio:  # what the dynamic loader does to a torchaudio built for another torch
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name == "torchaudio":
                raise OSError("Could not load this library: libtorchaudio.so: undefined symbol: "
                              "torch_exception_get_what_without_backtrace")
            return None

    monkeypatch.delitem(sys.modules, "torchaudio", raising=False)
    monkeypatch.setattr(sys, "meta_path", [BrokenTorchaudio(), *sys.meta_path])
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "2.11.1" if name == "torchaudio" else real_version(name))
    with pytest.raises(DependencyError) as failed:
        resample(torch.zeros(1, 100), 16000, 24000)
    text = str(failed.value)
    wanted = torch.__version__.split("+")[0]
    assert "\n" not in text and "torchaudio 2.11.1 does not load with torch" in text
    assert "undefined symbol" in text and f"pip install torch=={wanted} torchaudio=={wanted}" in text
    sf.write(tmp_path / "in.wav", np.zeros(16000, np.float32), 16000)
    assert main(["codec", "roundtrip", str(tmp_path / "in.wav"), str(tmp_path / "out.wav")]) == 2
    err = capsys.readouterr().err
    assert "duplex: error: torchaudio 2.11.1 does not load" in err and "Traceback" not in err
