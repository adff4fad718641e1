"""The duplex command line: codec encode / decode / roundtrip and the codec benchmark."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import FIXTURES, MIMI_SMALL, MIMI_SMALL_CONFIG
from safetensors import safe_open

from duplex.cli import main

CODEC = ["--checkpoint", str(MIMI_SMALL), "--config", str(MIMI_SMALL_CONFIG), "--device", "cpu"]


@pytest.fixture
def wav(tmp_path, speechlike):
    path = tmp_path / "in.wav"
    pcm = speechlike(1, 3, seed=3)[0, 0].numpy()[:5000]  # not a whole number of frames
    sf.write(path, pcm, 24000, subtype="FLOAT")
    return path


def test_roundtrip_writes_audio_of_the_input_length(tmp_path, wav, capsys):
    out = tmp_path / "out.wav"
    assert main(["codec", "roundtrip", str(wav), str(out), *CODEC]) == 0
    data, rate = sf.read(out)
    assert rate == 24000 and data.shape == (5000,)
    assert "(0.60 kbps)" in capsys.readouterr().out  # 8 codebooks x 6 bits (64 bins) x 12.5 Hz


def test_encode_then_decode_equals_roundtrip(tmp_path, wav, small_mimi):
    codes_path, out, rt = tmp_path / "codes.safetensors", tmp_path / "dec.wav", tmp_path / "rt.wav"
    assert main(["codec", "encode", str(wav), str(codes_path), "--num-codebooks", "4", *CODEC]) == 0
    with safe_open(str(codes_path), framework="pt") as f:
        codes = f.get_tensor("codes")
        meta = f.metadata()
    assert codes.shape == (1, 4, 3) and codes.dtype == torch.int16
    assert meta["num_samples"] == "5000" and meta["sample_rate"] == "24000"
    umask = os.umask(0)
    os.umask(umask)
    assert codes_path.stat().st_mode & 0o777 == 0o666 & ~umask  # like any file the user creates (not 0600)
    assert main(["codec", "decode", str(codes_path), str(out), *CODEC]) == 0
    assert main(["codec", "roundtrip", str(wav), str(rt), "--num-codebooks", "4", *CODEC]) == 0
    assert (sf.read(out)[0] == sf.read(rt)[0]).all()


def test_the_summary_says_what_loading_converted(tmp_path, capsys):
    stereo = tmp_path / "st16.wav"
    sf.write(stereo, (0.05 * np.random.default_rng(0).standard_normal((8000, 2))).astype(np.float32), 16000)
    assert main(["codec", "roundtrip", str(stereo), str(tmp_path / "o.wav"), *CODEC]) == 0
    assert "(resampled from 16000 Hz, 2 channels mixed to mono)" in capsys.readouterr().out
    assert sf.read(tmp_path / "o.wav")[0].shape == (12000,)  # 0.5 s at 24 kHz


def test_streaming_mode(tmp_path, wav):
    out = tmp_path / "out.wav"
    assert main(["codec", "roundtrip", str(wav), str(out), "--streaming", *CODEC]) == 0
    assert sf.read(out)[0].shape == (5000,)


def test_without_a_checkpoint_the_shipped_codec_is_used(tmp_path, wav, capsys, monkeypatch):
    monkeypatch.delenv("DUPLEX_MIMI", raising=False)
    out = tmp_path / "o.wav"
    assert main(["codec", "roundtrip", str(wav), str(out)]) == 0
    assert sf.read(out)[0].shape == (5000,)
    assert "(1.10 kbps)" in capsys.readouterr().out  # 8 codebooks x 11 bits x 12.5 Hz
    # a config alone would describe some other checkpoint: refused
    assert main(["codec", "roundtrip", str(wav), str(out), "--config", str(MIMI_SMALL_CONFIG)]) == 2
    assert "the shipped codec brings its own config" in capsys.readouterr().err


def test_checkpoint_from_environment(tmp_path, wav, monkeypatch):
    monkeypatch.setenv("DUPLEX_MIMI", str(MIMI_SMALL))
    out = tmp_path / "o.wav"
    assert main(["codec", "roundtrip", str(wav), str(out), "--config", str(MIMI_SMALL_CONFIG)]) == 0


@pytest.mark.parametrize("args, words", [
    (["codec", "roundtrip", "missing.wav", "o.wav", *CODEC], "audio file not found"),
    (["codec", "decode", str(MIMI_SMALL), "o.wav", *CODEC], "is not a codes file"),
    (["codec", "roundtrip", "x.wav", "o.wav", "--checkpoint", "nope.safetensors"], "checkpoint not found"),
    (["codec", "roundtrip", "x.wav", "o.wav", "--checkpoint", str(MIMI_SMALL)], "mis-shaped keys"),
    (["codec", "roundtrip", "x.wav", "o.wav", *CODEC[:-1], "tpu"], "--device 'tpu': not a device name"),
    (["codec", "roundtrip", "x.wav", "o.wav", *CODEC[:-1], "meta"], "duplex runs on cpu or cuda"),
    (["codec", "roundtrip", "x.wav", "nodir/o.wav", *CODEC], "does not exist"),
    (["codec", "roundtrip", "x.wav", ".", *CODEC], "is a folder"),
    (["codec", "roundtrip", "x.wav", "o.xyz", *CODEC], "unknown audio format 'XYZ'"),
    (["codec", "decode", "x.wav", "o", *CODEC], "unknown audio format '(no extension)'"),
    (["codec", "encode", "x.wav", "nodir/c.safetensors", *CODEC], "does not exist"),
])
def test_errors_are_messages_not_tracebacks(tmp_path, wav, capsys, args, words, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.wav").write_bytes(wav.read_bytes())
    assert main(args) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_report_paths_are_checked_before_measuring(capsys):
    assert main(["bench", "lm", "--config", "small", "--json", "nodir/x.json"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["bench", "latency", "--plot", "nodir/x.png"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("args, words", [
    (["serve", "--port", "99999"], "is not a TCP port"),
    (["serve", "--port", "http"], "is not a TCP port"),
    (["serve", "--threads", "-1"], "is not an integer >= 0"),
    (["serve", "--max-waiting", "-3"], "is not an integer >= 0"),
    (["serve", "--max-message-bytes", "-1"], "is not a size in bytes >= 1024"),
    (["train", "codec", "--data", "c", "--out", "r", "--save-every", "0"], "is not an integer >= 1"),
    (["train", "codec", "--data", "c", "--out", "r", "--max-codebooks", "0"], "is not an integer >= 1"),
    (["train", "codec", "--data", "c", "--out", "r", "--eval-every", "-5"], "is not an integer >= 0"),
    (["train", "codec", "--data", "c", "--out", "r", "--lr", "nan"], "is not a number > 0"),
    (["train", "codec", "--data", "c", "--out", "r", "--adversarial-weight", "-1"], "is not a number >= 0"),
    (["bench", "codec-quality", "--data", "c", "--max-clips", "0"], "is not an integer >= 1"),
    (["bench", "lm", "--batch-sizes", "0"], "is not an integer >= 1"),
    (["data", "synth", "c", "--heldout-every", "-1"], "is not an integer >= 0"),
    (["client", "a.wav", "b.wav", "--seconds", "-2"], "is not a number > 0"),
    (["bench", "serve", "--seconds", "0"], "is not a number > 0"),
    (["bench", "serve", "--client-nice", "20"], "is not a niceness 0-19"),
])
def test_bad_option_values_are_usage_errors(capsys, args, words):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and words in capsys.readouterr().err


def test_a_codec_file_finds_its_own_config(tmp_path, wav):
    """NAME.json beside NAME.safetensors (the exported file, as shipped), or config.json in a training-run folder
    (one with trainer.pt), is used without --config; any other folder's config.json is not."""
    import shutil

    from duplex.runtime.checkpoints import codec_config_beside as config_beside

    exported = tmp_path / "export"
    exported.mkdir()
    shutil.copy(MIMI_SMALL, exported / "codec-fp16.safetensors")
    shutil.copy(MIMI_SMALL_CONFIG, exported / "codec-fp16.json")
    assert main(["codec", "roundtrip", str(wav), str(tmp_path / "a.wav"), "--checkpoint",
                 str(exported / "codec-fp16.safetensors")]) == 0

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(MIMI_SMALL, run / "codec.safetensors")
    shutil.copy(MIMI_SMALL_CONFIG, run / "config.json")
    assert config_beside(str(run / "codec.safetensors")) is None  # no trainer.pt: not a run folder
    (run / "trainer.pt").write_bytes(b"")
    assert config_beside(str(run / "codec.safetensors")) == str(run / "config.json")
    assert main(["codec", "roundtrip", str(wav), str(tmp_path / "b.wav"), "--checkpoint",
                 str(run / "codec.safetensors")]) == 0
    assert (sf.read(tmp_path / "a.wav")[0] == sf.read(tmp_path / "b.wav")[0]).all()


def test_an_unused_config_beside_the_checkpoint_is_pointed_out(tmp_path, wav, capsys):
    import shutil

    copied = tmp_path / "copied"  # a run folder copied without its trainer.pt
    copied.mkdir()
    shutil.copy(MIMI_SMALL, copied / "codec.safetensors")
    shutil.copy(MIMI_SMALL_CONFIG, copied / "config.json")
    assert main(["codec", "roundtrip", str(wav), str(tmp_path / "o.wav"), "--checkpoint",
                 str(copied / "codec.safetensors")]) == 2
    assert f"pass --config {copied / 'config.json'}" in capsys.readouterr().err


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "latency", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default eager graphs)" in text and "(default 1 2 4 8)" in text and "(default 50)" in text


def test_bench_codec_reports_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "codec", "--config", str(MIMI_SMALL_CONFIG), "--frames", "3", "--warmup", "1",
                 "--batch-sizes", "1", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    table = capsys.readouterr().out  # the table on stdout, the JSON only in the file
    assert "{" not in table and "ms/stream" in table and report["command"].startswith("duplex bench codec --config")
    assert [r["batch_size"] for r in report["results"]] == [1, 2]
    for r in report["results"]:
        assert 0 < r["total_ms"]["median"] <= r["total_ms"]["p99"]
        assert r["real_time_factor"] == pytest.approx(r["total_ms"]["median"] / 80.0)


@pytest.mark.slow
def test_console_script_entry_point():
    import shutil

    for command in ([sys.executable, "-m", "duplex"], [shutil.which("duplex") or "duplex"]):
        result = subprocess.run([*command, "codec", "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "roundtrip" in result.stdout, command


@pytest.mark.slow
def test_demo_stream_script(tmp_path):
    """demos/stream_codec.py runs end to end on the bundled sample."""
    root = FIXTURES.parent.parent
    out = tmp_path / "streamed.wav"
    result = subprocess.run([sys.executable, str(root / "demos" / "stream_codec.py"), str(root / "demos" / "hello.wav"),
                             str(out), "--checkpoint", str(MIMI_SMALL), "--config", str(MIMI_SMALL_CONFIG)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    data, rate = sf.read(out)
    assert rate == 24000 and data.shape[0] >= 7 * 24000


def test_bench_lm_reports_json(tmp_path, capsys):
    from helpers import LM_SMALL_CONFIG
    out = tmp_path / "bench.json"
    assert main(["bench", "lm", "--config", str(LM_SMALL_CONFIG), "--frames", "3", "--warmup", "1",
                 "--batch-sizes", "1", "3", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert "{" not in capsys.readouterr().out
    assert [r["batch_size"] for r in report["results"]] == [1, 3]
    assert report["dtype"] == "float32" and report["parameters"] > 0
    for r in report["results"]:
        assert 0 < r["step_ms"]["median"] <= r["step_ms"]["p99"]


def test_bench_lm_unknown_preset(capsys):
    assert main(["bench", "lm", "--config", "huge", "--frames", "1"]) == 2
    assert "LM config not found: huge (neither a file nor a preset: moshi_7b, personaplex_7b, small, default)" in capsys.readouterr().err
    assert main(["bench", "latency", "--model", "huge", "--frames", "1"]) == 2
    assert "unknown --model 'huge': default, default-official-codec" in capsys.readouterr().err


def test_bench_latency_reports_json_and_plot(tmp_path, capsys):
    from helpers import LM_SMALL, LM_SMALL_CONFIG
    out, png = tmp_path / "latency.json", tmp_path / "latency.png"
    assert main(["bench", "latency", "--lm", str(LM_SMALL), "--lm-config", str(LM_SMALL_CONFIG),
                 "--mimi", str(MIMI_SMALL), "--mimi-config", str(MIMI_SMALL_CONFIG), "--device", "cpu",
                 "--dtype", "float32", "--batch-sizes", "1", "2", "--frames", "3", "--warmup", "1",
                 "--json", str(out), "--plot", str(png)]) == 0
    report = json.loads(out.read_text())
    assert [(r["mode"], r["batch_size"]) for r in report["runs"]] == [("eager", 1), ("eager", 2)]  # no graphs on CPU
    for r in report["runs"]:
        assert set(r["stages_ms"]) == {"input", "encode", "temporal", "depth", "decode", "output"}
        assert r["latency_budget_ms"]["total_p50"] == pytest.approx(160 + r["total_ms"]["p50"])
    assert report["largest_real_time_batch"]["eager"] in (0, 1, 2)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_latency_refuses_a_codec_without_its_lm(capsys):
    assert main(["bench", "latency", "--mimi", str(MIMI_SMALL), "--device", "cpu", "--frames", "1"]) == 2
    assert "--mimi needs --lm" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_serve_reports_every_client_and_the_server(tmp_path, capsys):
    from helpers import LM_SMALL, LM_SMALL_CONFIG
    out = tmp_path / "serve.json"
    assert main(["bench", "serve", "--clients", "2", "--seconds", "2", "--lm", str(LM_SMALL), "--lm-config",
                 str(LM_SMALL_CONFIG), "--mimi", str(MIMI_SMALL), "--mimi-config", str(MIMI_SMALL_CONFIG),
                 "--device", "cpu", "--json", str(out)]) == 0
    captured = capsys.readouterr()
    assert "{" not in captured.out  # the table goes to stdout, the JSON to --json only
    assert "replies/sent" in captured.out and "25/25" in captured.out and "late (step past" in captured.out
    assert "real time" in captured.out.splitlines()[-1]  # the verdict, one way or the other
    report = json.loads(out.read_text())
    assert [c["format"] for c in report["clients"]] == ["opus", "pcm16"]
    assert all(c["replies"] == c["frames_sent"] == 25 and c["steady_rate"] > 0 for c in report["clients"])
    server = report["server"]
    assert server["slots"] == 2 and server["frames_in"] == 50 and server["sessions_after"] == 0
    assert 0 < server["step_ms"]["p50"] <= server["step_ms"]["p99"]
    assert report["verdict"] == captured.out.splitlines()[-1]


@pytest.mark.parametrize("args, words", [
    (["--clients", "3", "--slots", "2"], "--slots 2 is fewer than --clients 3"),
    (["--url", "ws://127.0.0.1:9", "--slots", "2"], "--url loads a running server"),
])
def test_bench_serve_option_errors(capsys, args, words):
    assert main(["bench", "serve", *args]) == 2
    assert words in capsys.readouterr().err


def test_bench_serve_lateness_is_measured_against_the_schedule():
    from duplex.bench.serve import lateness_ms

    on_time = [10.0 + 0.08 * k for k in range(5)]
    assert lateness_ms(on_time) == pytest.approx([0.0] * 5, abs=1e-9)
    late = on_time[:2] + [t + 0.2 for t in on_time[2:]]  # a 200 ms stall from the third reply on
    assert lateness_ms(late) == pytest.approx([0, 0, 200, 200, 200], abs=1e-6)
    early_first = [on_time[0] + 0.05] + on_time[1:]  # the anchor is the least delayed reply
    assert lateness_ms(early_first) == pytest.approx([50, 0, 0, 0, 0], abs=1e-6)


def test_bench_serve_verdict_names_what_went_wrong():
    from duplex.bench.serve import verdict

    client = {"replies": 100, "frames_sent": 100, "lost": 0, "errors": [], "late_replies": 0, "max_lateness_ms": 30}
    server = {"dropped_in": 0, "dropped_out": 0}
    assert verdict({"clients": [client], "server": server}).startswith("real time")
    behind = {**client, "late_replies": 40, "max_lateness_ms": 160.0}
    assert "40% of a client's replies more than 80 ms late" in verdict({"clients": [client, behind],
                                                                       "server": server})
    dropping = verdict({"clients": [client], "server": {"dropped_in": 7, "dropped_out": 0}})
    assert dropping.startswith("NOT real time") and "7 input frames" in dropping
    failed = verdict({"clients": [{"format": "opus", "exception": "OSError: refused"}], "server": server})
    assert failed.startswith("NOT served") and "OSError: refused" in failed


@pytest.mark.parametrize("change, words", [
    ({"num_samples": "-100000"}, "metadata num_samples=-100000 does not fit 3 frames"),
    ({"num_samples": "0"}, "metadata num_samples=0 does not fit 3 frames"),
    ({"num_samples": "99999"}, "does not fit 3 frames (audio of 3841 to 5760 samples)"),
    ({"num_samples": "abc"}, "metadata num_samples='abc' is not a valid value"),
    ({"sample_rate": "16000"}, "encoded at sample_rate=16000, but this codec has 24000"),
    ({"codec": "0123456789abcdef"}, "was encoded by a codec of another configuration"),
    ({"format": "something-else"}, "metadata format='something-else'"),
    ({"dtype": torch.float32}, "codes must be integers, got float32"),
    ({"batch": 2}, "(a batch: one file holds one item)"),
])
def test_codes_files_are_checked_against_their_metadata_and_the_codec(tmp_path, wav, capsys, change, words):
    from safetensors.torch import save_file

    good = tmp_path / "codes.safetensors"
    assert main(["codec", "encode", str(wav), str(good), *CODEC]) == 0
    with safe_open(str(good), framework="pt") as f:
        codes, meta = f.get_tensor("codes"), dict(f.metadata())
    codes = codes.to(change.pop("dtype", codes.dtype)).repeat(change.pop("batch", 1), 1, 1)
    bad = tmp_path / "bad.safetensors"
    save_file({"codes": codes.contiguous()}, str(bad), metadata={**meta, **change})
    capsys.readouterr()
    assert main(["codec", "decode", str(bad), str(tmp_path / "out.wav"), *CODEC]) == 2
    err = capsys.readouterr().err
    assert words in err and str(bad) in err and "Traceback" not in err
    assert not (tmp_path / "out.wav").exists()


@pytest.mark.slow
def test_bench_serve_fuzz_reports_each_family_healthy(tmp_path, capsys):
    from helpers import LM_SMALL, LM_SMALL_CONFIG
    out = tmp_path / "fuzz.json"
    assert main(["bench", "serve", "--fuzz", "140", "--seed", "2", "--lm", str(LM_SMALL), "--lm-config",
                 str(LM_SMALL_CONFIG), "--mimi", str(MIMI_SMALL), "--mimi-config", str(MIMI_SMALL_CONFIG),
                 "--device", "cpu", "--json", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2] == "healthy after every family" and lines[-1].startswith("resident memory of this process")
    report = json.loads(out.read_text())
    assert report["healthy"] and report["seed"] == 2 and len(report["families"]) == 7


def test_a_programming_error_shows_its_traceback(monkeypatch):
    """Only the project's own error classes become one-line messages; a bug (here a TypeError inside a command)
    is not disguised as a usage error."""
    import duplex.cli.codec as codec_command

    def broken(args):
        raise TypeError("unsupported operand type(s) for *: 'int' and 'NoneType'")

    monkeypatch.setattr(codec_command, "run_roundtrip", broken)
    with pytest.raises(TypeError, match="unsupported operand"):
        main(["codec", "roundtrip", "a.wav", "b.wav"])


def test_the_layout_keeps_its_seams():
    """codec never imports duplex; inference (the codec, the engine, the server, the client) never imports
    training code; the client loads without torch (one process per simulated user in the load benchmark)."""
    import pkgutil

    import codec

    codec_modules = [m.name for m in pkgutil.walk_packages(codec.__path__, "codec.") if ".train" not in m.name]
    script = f"""
import importlib, sys
for name in {codec_modules!r}:
    importlib.import_module(name)
assert not [m for m in sys.modules if m.split('.')[0] == 'duplex'], 'codec imported duplex'
assert 'codec.train' not in sys.modules, 'codec inference imported codec.train'
for name in ('duplex.runtime.engine', 'duplex.runtime.checkpoints', 'duplex.serving.server', 'duplex.cli'):
    importlib.import_module(name)
training = [m for m in sys.modules if m.startswith(('codec.train', 'duplex.training'))]
assert not training, training
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    light = subprocess.run([sys.executable, "-c", "import sys, duplex.serving.client, duplex.bench.serve; "
                            "assert 'torch' not in sys.modules"], capture_output=True, text=True)
    assert light.returncode == 0, light.stderr
    # `duplex --help` imports the commands' modules but not the heavy optional libraries only some commands use.
    heavy = ("scipy", "matplotlib", "silero_vad", "sphn", "sounddevice", "huggingface_hub")
    start = subprocess.run([sys.executable, "-c", f"import sys, duplex.cli; loaded = [m for m in {heavy!r} if m in "
                            "sys.modules]; assert not loaded, loaded"], capture_output=True, text=True)
    assert start.returncode == 0, start.stderr


def test_no_arguments_prints_the_help_with_where_to_start(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: duplex" in out and "start here:" in out and "duplex serve" in out


def test_client_lists_sound_devices_or_says_why_not(capsys, monkeypatch):
    import duplex.serving.mic as mic
    from duplex.errors import SoundDeviceError

    def missing():
        raise SoundDeviceError("PortAudio is not available (test); on Debian/Ubuntu: apt install libportaudio2")

    monkeypatch.setattr(mic, "import_sounddevice", missing)
    assert main(["client", "--list-devices"]) == 2
    err = capsys.readouterr().err
    assert "PortAudio is not available" in err and "Traceback" not in err


def test_client_live_mode_without_a_sound_device_is_one_line(capsys, monkeypatch):
    """PortAudio's own error class is not a RuntimeError: it must still become one line, before connecting."""
    import duplex.serving.mic as mic

    class PortAudioError(Exception):
        pass

    class FakeSoundDevice:
        @staticmethod
        def Stream(**kwargs):
            raise PortAudioError("Error querying device -1")

    monkeypatch.setattr(mic, "import_sounddevice", lambda: FakeSoundDevice)
    assert main(["client", "--url", "ws://127.0.0.1:9", "--seconds", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot open the sound device" in err and "--list-devices" in err and "Traceback" not in err


def test_a_moshi_lm_without_its_codec_is_refused(tmp_path, capsys):
    """--lm alone takes the codec its files name: the shipped codec only suits models trained on it, so a Moshi 7B
    (a 7B config beside it) without Kyutai's Mimi beside it must be given its codec."""
    from safetensors.torch import save_file

    lm = tmp_path / "model.safetensors"
    save_file({"x": torch.zeros(1)}, str(lm))
    (tmp_path / "config.json").write_text((FIXTURES / "moshi7b_config.json").read_text())
    assert main(["bench", "latency", "--lm", str(lm), "--device", "cpu", "--frames", "1"]) == 2
    assert "is a Moshi 7B: it needs Kyutai's Mimi" in capsys.readouterr().err


def test_benchmark_figures_come_with_their_caveats():
    from codec.eval.bench import caveats

    err = "\n".join(caveats(50, [("batch 1", 10.0, 11.0), ("batch 8", 20.0, 40.0)]))
    assert "with 50 timed frames, p99 is about the largest one" in err
    assert "batch 8: p90 40.0 ms against p50 20.0 ms; the machine was probably busy" in err and "batch 1:" not in err
    assert caveats(200, [("batch 1", 10.0, 11.0)]) == []
