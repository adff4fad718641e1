"""--quantize and --kv-dtype on every command that loads a model (issue 25, deliverable 4): parsed everywhere, passed
to the engine by each command (one real run per family on the small fixture model), a quantized file refused in
another format in one line, and what runs said by /api/stats, the server's log and the load benchmark's report."""

import asyncio
import json
import logging
import urllib.request
from importlib import resources

import pytest
import torch
from helpers import (
    LM_SMALL,
    LM_SMALL_CONFIG,
    MIMI_SMALL,
    MIMI_SMALL_CONFIG,
    SMALL_MODEL_ARGS,
    make_engine,
    serve,
    speech,
)

import duplex.cli.common as common
import duplex.cli.serve as serve_command
from duplex.cli import build_parser, main
from duplex.model.lm import MoshiLM
from duplex.runtime.quantization import KV_DTYPES
from duplex.serving.options import quantization_text

COMMANDS = [["serve"], ["mic"], ["offline", "in.wav", "out.wav"], ["voices", "make", "in.wav", "out.pt"],
            ["voices", "folder", "out"], ["bench", "turns", "run", "set", "out"], ["bench", "serve"],
            ["bench", "latency"]]


@pytest.fixture(scope="module")
def q8_file(tmp_path_factory):
    """The small LM saved with int8 codes (as Kyutai's q8 files hold them), its config beside it."""
    folder = tmp_path_factory.mktemp("q8")
    MoshiLM.from_checkpoint(LM_SMALL, config=LM_SMALL_CONFIG, dtype=torch.float32).quantize_("int8").save(folder)
    return folder / "model.safetensors"


@pytest.fixture
def wav(tmp_path):
    import soundfile as sf

    path = tmp_path / "in.wav"
    sf.write(path, speech(0.5), 24000)
    return path


@pytest.fixture
def built(monkeypatch):
    """The engines the commands build (through ``common.build_engine``, as each command imports it)."""
    engines = []
    real = common.build_engine

    def build(args, slots, files=None):
        engines.append(real(args, slots, files))
        return engines[-1]

    for module in ("offline", "mic", "voices", "turns", "bench", "serve"):
        monkeypatch.setattr(f"duplex.cli.{module}.build_engine", build)
    return engines


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:3]))
def test_every_command_that_loads_a_model_takes_both_options(command, capsys):
    parser = build_parser()
    args = parser.parse_args([*command, "--quantize", "int8", "--kv-dtype", "fp8"])
    assert args.quantize == "int8" and args.kv_dtype == "fp8"
    defaults = parser.parse_args(command)
    assert defaults.quantize is None and defaults.kv_dtype == "auto"  # the file as it is, the LM's dtype
    with pytest.raises(SystemExit):
        parser.parse_args([*command, "--quantize", "int4"])
    assert "invalid choice: 'int4' (choose from 'none', 'int8', 'fp8')" in capsys.readouterr().err.replace('"', "'")


def test_offline_runs_quantized_and_a_quantized_file_is_refused_in_another_format(tmp_path, wav, q8_file, built,
                                                                                  capsys):
    out = tmp_path / "out.wav"
    assert main(["offline", str(wav), str(out), *SMALL_MODEL_ARGS, "--quantize", "int8", "--kv-dtype", "fp8"]) == 0
    assert out.is_file() and built[-1].quantization == {"weights": "int8", "kv": "fp8", "compute": "float32"}
    q8 = ["--lm", str(q8_file), "--mimi", str(MIMI_SMALL), "--mimi-config", str(MIMI_SMALL_CONFIG), "--device", "cpu"]
    assert main(["offline", str(wav), str(out), *q8]) == 0  # a quantized file loads as it is
    assert built[-1].quantization["weights"] == "int8"
    capsys.readouterr()
    for option, words in (("fp8", "holds int8 weights: it cannot be loaded as fp8"),
                          ("none", "holds int8 weights: it cannot be loaded unquantized")):
        assert main(["offline", str(wav), str(out), *q8, "--quantize", option]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("duplex: error: ") and words in err, err


@pytest.mark.slow
def test_mic_and_voices_make_run_quantized(tmp_path, wav, built):
    out = tmp_path / "reply.wav"
    assert main(["mic", "--input-file", str(wav), "--output-file", str(out), *SMALL_MODEL_ARGS,
                 "--quantize", "fp8", "--kv-dtype", "bfloat16"]) == 0
    assert out.is_file() and built[-1].quantization == {"weights": "fp8", "kv": "bfloat16", "compute": "float32"}
    voice = tmp_path / "voice.pt"
    assert main(["voices", "make", str(wav), str(voice), *SMALL_MODEL_ARGS, "--quantize", "int8"]) == 0
    assert voice.is_file() and built[-1].quantization["weights"] == "int8"


class Served(Exception):
    pass


def test_serve_loads_the_quantization_asked_for_and_logs_it(monkeypatch, built, caplog):
    def server(engine, options):
        raise Served

    monkeypatch.setattr(serve_command, "VoiceServer", server)
    caplog.set_level(logging.INFO)
    with pytest.raises(Served):
        main(["serve", "--port", "0", "--slots", "1", *SMALL_MODEL_ARGS, "--quantize", "int8", "--kv-dtype", "fp8"])
    assert built[-1].quantization == {"weights": "int8", "kv": "fp8", "compute": "float32"}
    assert "model: fixtures/lm_small.safetensors (int8 weights, fp8 KV)" in caplog.text


def test_api_stats_says_which_quantization_runs():
    engine = make_engine(1, quantize="fp8", kv_dtype=KV_DTYPES["fp8"])

    async def test(server, url):
        def get():
            with urllib.request.urlopen(url.replace("ws://", "http://") + "/api/stats", timeout=5) as response:
                return json.loads(response.read())

        return await asyncio.get_running_loop().run_in_executor(None, get)  # the server runs on this loop

    stats = serve(test, engine=engine, model_name="small")
    assert stats["model"] == "small"
    assert stats["quantization"] == {"weights": "fp8", "kv": "fp8", "compute": "float32"}
    assert quantization_text(stats["quantization"]) == "fp8 weights, fp8 KV"
    plain = make_engine(1).quantization
    assert quantization_text(plain) == "float32 weights, float32 KV" and quantization_text(None) == ""


def test_the_page_shows_the_quantization_from_stats():
    page = resources.files("duplex.serving").joinpath("web/index.html").read_text(encoding="utf-8")
    assert '<span id="quantization"' in page
    assert '$("quantization").textContent = stats.quantization ?' in page
    assert 'q.weights === "none" ? q.compute : q.weights} weights, ${q.kv} KV' in page  # as quantization_text


@pytest.mark.parametrize("extra", [["--quantize", "int8"], ["--kv-dtype", "fp8"], ["--hf-repo", "a/b"]])
def test_bench_serve_against_a_running_server_refuses_the_options_of_one_started_here(extra, capsys):
    assert main(["bench", "serve", "--url", "ws://127.0.0.1:9", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--url loads a running server: {extra[0]} is for a server started here" in err


@pytest.mark.slow
def test_bench_serve_starts_its_server_quantized_and_says_so(tmp_path, built, capsys):
    out = tmp_path / "serve.json"
    assert main(["bench", "serve", "--clients", "1", "--seconds", "1", *SMALL_MODEL_ARGS, "--quantize", "int8",
                 "--kv-dtype", "fp8", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    expected = {"weights": "int8", "kv": "fp8", "compute": "float32"}
    assert built[-1].quantization == report["quantization"] == report["server"]["quantization"] == expected
    title = capsys.readouterr().out.splitlines()[0]
    assert title.startswith("# serve -- 1 x 1 s") and title.endswith(", int8 weights, fp8 KV)")
