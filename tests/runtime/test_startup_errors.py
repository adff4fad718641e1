"""Start-up errors (issue 23, deliverable 6): every bad model path and config value is one line, ``duplex: error:
...``, and exit status 2, at once, from every command that takes model files (``serve``, ``mic``, ``bench latency``,
``codec``), and the same error class from the library.

The cases are tables: each kind of bad path (missing, a folder, a named pipe, an empty path, an empty, text or
binary file, a device) given to each file option, then configs with values of the wrong type or size. A named pipe
used to hang the command (opening one for reading waits for a writer): every call here runs under ``no_hang``,
which on a regression unblocks the reader and fails the test instead of hanging the suite.
"""

import json
import os
import threading

import pytest
from helpers import LM_SMALL, LM_SMALL_CONFIG, MIMI_SMALL, MIMI_SMALL_CONFIG

from codec import CheckpointError, ConfigError, Mimi, MimiConfig
from codec.io import files as files_module
from duplex.cli import main
from duplex.errors import LMConfigError, ModelFilesError, TokenizerError
from duplex.model.config import LMConfig
from duplex.model.lm import MoshiLM
from duplex.model.tokenizer import TextTokenizer
from duplex.runtime.checkpoints import ModelFiles, codec_files

HANG_SECONDS = 60  # only ever reached by a regression: a passing call returns in well under a second
DEMO = os.path.join(os.path.dirname(__file__), "..", "..", "demos", "hello.wav")


def no_hang(call, fifos=()):
    """``call()``'s result (or exception), run in a thread; if it has not returned after HANG_SECONDS (blocked on
    one of ``fifos``), the pipes are opened for writing and closed, which lets a blocked reader go on, and the test
    fails."""
    outcome = {}

    def run():
        try:
            outcome["value"] = call()
        except BaseException as e:  # noqa: BLE001  (handed to the test as it is)
            outcome["error"] = e

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(HANG_SECONDS)
    if worker.is_alive():
        for fifo in fifos:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        worker.join(HANG_SECONDS)
        pytest.fail(f"still running after {HANG_SECONDS} s: blocked opening a named pipe")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@pytest.fixture
def bad(tmp_path, monkeypatch):
    """The bad paths, by kind; no $DUPLEX_MIMI (it would stand in for the codec not given)."""
    monkeypatch.delenv("DUPLEX_MIMI", raising=False)
    folder = tmp_path / "folder"
    folder.mkdir()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "text.txt").write_text("hello, not a model\n")
    (tmp_path / "binary.bin").write_bytes(bytes(range(256)) * 8)
    os.symlink(tmp_path / "gone", tmp_path / "link")
    return {"missing": str(tmp_path / "missing.json"), "folder": str(folder), "fifo": str(fifo),
            "empty path": "", "empty": str(tmp_path / "empty"), "text": str(tmp_path / "text.txt"),
            "binary": str(tmp_path / "binary.bin"), "broken link": str(tmp_path / "link"), "device": os.devnull}


# What the message says, by the kind of bad path (``name`` is the file's name in it) ...
PATH_WORDS = {"missing": "{name} not found: {path}", "folder": "{name} {path} is a folder, expected a file",
              "fifo": "{name} {path} is a named pipe (FIFO), expected a regular file",
              "empty path": "{name}: the path is empty",
              "broken link": "{name} not found: {path} (a symbolic link to a missing file)",
              "device": "{name} {path} is a character device, expected a regular file"}
# ... and by the kind of file expected, for a file that is there but is not one.
CONTENT_WORDS = {
    "checkpoint": {kind: "{path} is neither a safetensors file nor a" for kind in ("empty", "text", "binary")},
    "config": {"empty": "{name} {path} is not valid JSON", "text": "{name} {path} is not valid JSON",
               "binary": "{name} {path} is not a JSON file: not UTF-8 text"},
    "tokenizer": {kind: "{path} is not a SentencePiece model" for kind in ("empty", "text", "binary")},
}
BAD_KINDS = ("missing", "folder", "fifo", "empty path", "empty", "text", "binary", "broken link", "device")

# Each file option: the arguments that give it ``path`` (the other files good), the kind of file, and its name in
# the message.
MODEL_OPTIONS = {
    "--lm": (lambda p: ["--lm", p], "checkpoint", "LM checkpoint"),
    "--lm-config": (lambda p: ["--lm", str(LM_SMALL), "--lm-config", p], "config", "LM config"),
    "--mimi": (lambda p: ["--lm", str(LM_SMALL), "--lm-config", str(LM_SMALL_CONFIG), "--mimi", p], "checkpoint",
               "Mimi checkpoint"),
    "--mimi-config": (lambda p: ["--lm", str(LM_SMALL), "--lm-config", str(LM_SMALL_CONFIG), "--mimi",
                                 str(MIMI_SMALL), "--mimi-config", p], "config", "Mimi config"),
    "--tokenizer": (lambda p: ["--lm", str(LM_SMALL), "--lm-config", str(LM_SMALL_CONFIG), "--tokenizer", p],
                    "tokenizer", "tokenizer"),
}
CODEC_OPTIONS = {
    "--checkpoint": (lambda p: ["--checkpoint", p], "checkpoint", "Mimi checkpoint"),
    "--config": (lambda p: ["--checkpoint", str(MIMI_SMALL), "--config", p], "config", "Mimi config"),
}


def expected_words(kind, file_kind, name, path):
    words = PATH_WORDS[kind] if kind in PATH_WORDS else CONTENT_WORDS[file_kind][kind]
    return words.format(name=name, path=path)


def command(name, tmp_path):
    """The arguments of each command before its model options."""
    return {"serve": ["serve", "--port", "0", "--slots", "1", "--device", "cpu"],
            "mic": ["mic", "--input-file", DEMO, "--output-file", str(tmp_path / "reply.wav"), "--device", "cpu"],
            "bench latency": ["bench", "latency", "--device", "cpu", "--frames", "1", "--warmup", "0",
                              "--batch-sizes", "1"],
            "codec roundtrip": ["codec", "roundtrip", DEMO, str(tmp_path / "out.wav"), "--device", "cpu"]}[name]


def one_error_line(capsys, argv, fifos) -> str:
    """Runs ``duplex ARGV``: exit status 2 and one error line, the last on stderr (a command may have said what
    it does before, such as the benchmark's notes); returns it."""
    assert no_hang(lambda: main(argv), fifos) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and [line for line in lines if line.startswith("duplex: error:")] == lines[-1:], err
    return lines[-1]


@pytest.mark.parametrize("kind, option", [(kind, option) for option in MODEL_OPTIONS for kind in BAD_KINDS])
def test_every_bad_model_file_of_serve_is_one_line(bad, tmp_path, capsys, kind, option):
    arguments, file_kind, name = MODEL_OPTIONS[option]
    line = one_error_line(capsys, command("serve", tmp_path) + arguments(bad[kind]), [bad["fifo"]])
    assert expected_words(kind, file_kind, name, bad[kind]) in line


@pytest.mark.parametrize("name", ["mic", "bench latency"])
@pytest.mark.parametrize("kind, option", [(kind, option) for option in MODEL_OPTIONS
                                          for kind in ("fifo", "folder", "binary")])
def test_every_bad_model_file_of_the_other_commands_is_one_line(bad, tmp_path, capsys, name, kind, option):
    arguments, file_kind, what = MODEL_OPTIONS[option]
    line = one_error_line(capsys, command(name, tmp_path) + arguments(bad[kind]), [bad["fifo"]])
    assert expected_words(kind, file_kind, what, bad[kind]) in line


@pytest.mark.parametrize("kind, option", [(kind, option) for option in CODEC_OPTIONS for kind in BAD_KINDS])
def test_every_bad_codec_file_is_one_line(bad, tmp_path, capsys, kind, option):
    arguments, file_kind, name = CODEC_OPTIONS[option]
    line = one_error_line(capsys, command("codec roundtrip", tmp_path) + arguments(bad[kind]), [bad["fifo"]])
    assert expected_words(kind, file_kind, name, bad[kind]) in line


def test_the_codec_named_by_the_environment_is_checked_as_a_given_one(bad, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DUPLEX_MIMI", bad["fifo"])
    line = one_error_line(capsys, command("codec roundtrip", tmp_path), [bad["fifo"]])
    assert f"Mimi checkpoint ($DUPLEX_MIMI) {bad['fifo']} is a named pipe (FIFO)" in line


def test_an_empty_model_option_is_an_error_not_the_default_model(bad, tmp_path, capsys):
    """``--lm "$MODEL"`` with the variable unset used to run the default model without a word."""
    line = one_error_line(capsys, command("bench latency", tmp_path) + ["--lm", ""], [])
    assert "LM checkpoint: the path is empty" in line
    line = one_error_line(capsys, command("bench latency", tmp_path) + ["--tokenizer", ""], [])
    assert "--tokenizer needs --lm" in line


def test_a_file_that_cannot_be_read_says_so(bad, tmp_path, capsys, monkeypatch):
    private = tmp_path / "private.json"
    private.write_text(LM_SMALL_CONFIG.read_text())
    private.chmod(0)
    if os.geteuid() == 0:  # root reads any file: the access check answers as it does for anyone else
        access = os.access
        monkeypatch.setattr(files_module.os, "access", lambda path, mode: path != str(private) and access(path, mode))
    line = one_error_line(capsys, command("serve", tmp_path) + MODEL_OPTIONS["--lm-config"][0](str(private)), [])
    assert f"LM config {private} cannot be read (permission denied)" in line


def test_a_checkpoint_given_as_config_is_not_read_whole(bad, tmp_path, capsys):
    """A 15 GB checkpoint passed as the config was read into memory to find it is not JSON."""
    large = tmp_path / "model.safetensors"
    with open(large, "wb") as f:
        f.truncate(64 << 20)  # sparse: nothing on disk
    line = one_error_line(capsys, command("serve", tmp_path) + MODEL_OPTIONS["--lm-config"][0](str(large)), [])
    assert f"LM config {large} is not a config: {64 << 20} bytes" in line


def test_an_lm_config_name_that_is_neither_file_nor_preset(bad, tmp_path, capsys):
    line = one_error_line(capsys, command("serve", tmp_path) + MODEL_OPTIONS["--lm-config"][0]("moshi7b"), [])
    assert "LM config not found: moshi7b (neither a file nor a preset: moshi_7b, personaplex_7b, small, default)" in line


# ------------------------------------------------------------------------------------------- config values
def lm_config(**changes):
    data = json.loads(LM_SMALL_CONFIG.read_text())
    data.update(changes)
    return data


LM_CONFIGS = [
    (lm_config(dim="abc"), "dim must be an integer, got the string 'abc'"),
    (lm_config(dim=None), "dim must be an integer, got null"),
    (lm_config(dim=256.5), "dim must be an integer, got 256.5"),
    (lm_config(dim=True), "dim must be an integer, got true"),
    (lm_config(dim=-256), "dim must be at least 1, got -256"),
    (lm_config(num_heads=0), "num_heads must be at least 1, got 0"),
    (lm_config(card=-1), "card must be at least 1, got -1"),
    (lm_config(num_layers=-1), "num_layers must be at least 1, got -1"),
    (lm_config(text_card="32000"), "text_card must be an integer, got the string '32000'"),
    (lm_config(hidden_scale="x"), "hidden_scale must be a finite number, got the string 'x'"),
    (lm_config(hidden_scale=float("nan")), "hidden_scale must be a finite number, got nan"),
    (lm_config(max_period=0), "max_period must be positive, got 0"),
    (lm_config(causal="yes"), "causal must be true or false, got the string 'yes'"),
    (lm_config(delays="abc"), "delays must be a list, got the string 'abc'"),
    (lm_config(delays=[None] * 17), "delays must be a list of integers"),
    (lm_config(depformer_context="8"), "depformer_context must be an integer or null, got the string '8'"),
    (lm_config(existing_text_padding_id=10 ** 6), "existing_text_padding_id must be a text token id"),
    (lm_config(mimi_name=5), "mimi_name must be a string or null, got 5"),
    (lm_config(lm_gen_config=[]), "lm_gen_config must be an object or null, got a list"),
    (lm_config(bogus=1), "unknown key(s) ['bogus']"),
    ([lm_config()], "expected a JSON object, got a list"),
    (None, "expected a JSON object, got null"),
]


@pytest.mark.parametrize("data, words", LM_CONFIGS)
def test_every_bad_lm_config_value_is_one_line(bad, tmp_path, capsys, data, words):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    line = one_error_line(capsys, command("serve", tmp_path) + MODEL_OPTIONS["--lm-config"][0](str(path)), [])
    assert f"LM config {path}: {words}" in line
    with pytest.raises(LMConfigError) as caught:
        LMConfig.from_dict(data)
    assert str(caught.value).startswith("LM config: ") and words in str(caught.value)


def mimi_config(section=None, **changes):
    data = json.loads(MIMI_SMALL_CONFIG.read_text())
    (data[section] if section else data).update(changes)
    return data


MIMI_CONFIGS = [
    (mimi_config(sample_rate="abc"), "sample_rate must be an integer, got the string 'abc'"),
    (mimi_config(frame_rate=0), "frame_rate must be positive, got 0"),
    (mimi_config(seanet=[1]), "section 'seanet': expected a JSON object, got a list"),
    (mimi_config("seanet", ratios="abc"), "seanet.ratios must be a list, got the string 'abc'"),
    (mimi_config("seanet", ratios=["8", 6, 5, 4]), "seanet.ratios must be a list of integers"),
    (mimi_config("seanet", n_filters=-16), "seanet.n_filters must be at least 1, got -16"),
    (mimi_config("seanet", kernel_size=0), "seanet.kernel_size must be at least 1, got 0"),
    (mimi_config("quantizer", n_q="8"), "quantizer.n_q must be an integer, got the string '8'"),
    (mimi_config("quantizer", bins=None), "quantizer.bins must be an integer, got null"),
    (mimi_config("quantizer", dimension=0), "quantizer.dimension must be at least 1, got 0"),
    (mimi_config("transformer", d_model=None), "transformer.d_model must be an integer, got null"),
    (mimi_config("transformer", num_heads=0), "transformer.num_heads must be at least 1, got 0"),
    (mimi_config("transformer", context="x"), "transformer.context must be an integer, got the string 'x'"),
    (mimi_config("transformer", layer_scale=None), "transformer.layer_scale must be a finite number, got null"),
    (mimi_config("transformer", output_dimensions=[None]), "transformer.output_dimensions must be a list of "
                                                           "integers"),
    (mimi_config(bogus=1), "unknown key(s) ['bogus']"),
    ([1], "expected a JSON object, got a list"),
]


@pytest.mark.parametrize("data, words", MIMI_CONFIGS)
def test_every_bad_mimi_config_value_is_one_line(bad, tmp_path, capsys, data, words):
    path = tmp_path / "codec.json"
    path.write_text(json.dumps(data))
    line = one_error_line(capsys, command("codec roundtrip", tmp_path) + CODEC_OPTIONS["--config"][0](str(path)), [])
    assert f"Mimi config {path}: {words}" in line
    with pytest.raises(ConfigError) as caught:
        MimiConfig.from_dict(data)
    assert str(caught.value).startswith("Mimi config") and words in str(caught.value)


def test_a_bad_mimi_config_through_the_model_options_is_one_line(bad, tmp_path, capsys):
    path = tmp_path / "codec.json"
    path.write_text(json.dumps(mimi_config("transformer", num_heads=0)))
    line = one_error_line(capsys, command("serve", tmp_path) + MODEL_OPTIONS["--mimi-config"][0](str(path)), [])
    assert f"Mimi config {path}: transformer.num_heads must be at least 1, got 0" in line


def test_a_config_nested_too_deeply_is_one_line(bad, tmp_path, capsys):
    path = tmp_path / "deep.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    line = one_error_line(capsys, command("serve", tmp_path) + MODEL_OPTIONS["--lm-config"][0](str(path)), [])
    assert f"LM config {path} is not a config: JSON nested too deeply" in line


# --------------------------------------------------------------------------------------------------- library
LIBRARY = [
    (lambda p: LMConfig.load(p), LMConfigError, "LM config"),
    (lambda p: MimiConfig.load(p), ConfigError, "Mimi config"),
    (lambda p: Mimi.from_checkpoint(p, config=str(MIMI_SMALL_CONFIG)), CheckpointError, "checkpoint"),
    (lambda p: MoshiLM.from_checkpoint(p, config=str(LM_SMALL_CONFIG)), CheckpointError, "checkpoint"),
    (lambda p: TextTokenizer(p), TokenizerError, "tokenizer model"),
    (lambda p: ModelFiles.for_lm(p), ModelFilesError, "LM checkpoint"),
    (lambda p: ModelFiles.for_lm(LM_SMALL, lm_config=p), ModelFilesError, "LM config"),
    (lambda p: ModelFiles.for_lm(LM_SMALL, lm_config=LM_SMALL_CONFIG, mimi=p), ModelFilesError, "Mimi checkpoint"),
    (lambda p: ModelFiles.for_lm(LM_SMALL, lm_config=LM_SMALL_CONFIG, mimi=MIMI_SMALL, mimi_config=p),
     ModelFilesError, "Mimi config"),
    (lambda p: ModelFiles.for_lm(LM_SMALL, lm_config=LM_SMALL_CONFIG, tokenizer=p), ModelFilesError, "tokenizer"),
    (lambda p: codec_files(p), ModelFilesError, "Mimi checkpoint"),
    (lambda p: codec_files(MIMI_SMALL, p), ModelFilesError, "Mimi config"),
    (lambda p: ModelFiles(lm=p, lm_config=str(LM_SMALL_CONFIG), mimi=str(MIMI_SMALL),
                          mimi_config=str(MIMI_SMALL_CONFIG)).load(), ModelFilesError, "LM checkpoint"),
    (lambda p: ModelFiles(lm=str(LM_SMALL), lm_config=p, mimi=str(MIMI_SMALL),
                          mimi_config=str(MIMI_SMALL_CONFIG)).load(), LMConfigError, "LM config"),
    (lambda p: ModelFiles(lm=str(LM_SMALL), lm_config=str(LM_SMALL_CONFIG), mimi=p,
                          mimi_config=str(MIMI_SMALL_CONFIG)).load(), CheckpointError, "checkpoint"),
    (lambda p: ModelFiles(lm=str(LM_SMALL), lm_config=str(LM_SMALL_CONFIG), mimi=str(MIMI_SMALL),
                          mimi_config=p).load(), ConfigError, "Mimi config"),
]


@pytest.mark.parametrize("kind", ["fifo", "folder", "missing", "device"])
@pytest.mark.parametrize("index", range(len(LIBRARY)))
def test_the_library_names_every_bad_path(bad, kind, index):
    """The same checks without the command line, each raising its package's error class (a FIFO blocked every
    one of these)."""
    call, error, name = LIBRARY[index]
    with pytest.raises(error) as caught:
        no_hang(lambda: call(bad[kind]), [bad["fifo"]])
    assert expected_words(kind, None, name, bad[kind]) in str(caught.value)


def test_a_bad_codec_is_told_before_the_lm_is_read(bad, monkeypatch):
    """A 7B takes minutes to read: the small files (tokenizer, codec) are read first, so that a wrong one is told
    at once."""
    def read_lm(*args, **kwargs):
        raise AssertionError("the LM was read before the codec")

    monkeypatch.setattr(MoshiLM, "from_checkpoint", read_lm)
    files = ModelFiles(lm=str(LM_SMALL), lm_config=str(LM_SMALL_CONFIG), mimi=bad["text"])
    with pytest.raises(CheckpointError, match="is neither a safetensors file nor a readable torch checkpoint"):
        files.load()
    files = ModelFiles(lm=str(LM_SMALL), lm_config=str(LM_SMALL_CONFIG), mimi=str(MIMI_SMALL),
                       mimi_config=str(MIMI_SMALL_CONFIG), tokenizer=bad["binary"])
    with pytest.raises(TokenizerError, match="is not a SentencePiece model"):
        files.load()
