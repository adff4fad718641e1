"""``duplex train``: its options' defaults are the library's (declared once, in the options dataclasses and
``train_tokenizer``), the parsed options fill the dataclass the trainer takes, and the tokenizer's summary line
is the library's."""

import dataclasses

import pytest

from duplex.cli import build_parser
from duplex.cli.options import defaults_of, lazy, options_from_args
from duplex.runtime.checkpoints import SHIPPED_TOKENIZER
from duplex.training.codec import CodecTrainingOptions
from duplex.training.lm import LMTrainingOptions
from duplex.training.tokenizer import describe, train_tokenizer


@pytest.mark.parametrize("command, options_class", [("lm", LMTrainingOptions), ("codec", CodecTrainingOptions)])
def test_the_trainers_take_the_librarys_defaults(command, options_class):
    data = ["d"] if command == "lm" else "d"  # the LM trainer takes --data again for more datasets: a list
    args = build_parser().parse_args(["train", command, "--data", "d", "--out", "o"])
    assert options_from_args(options_class, args) == options_class(data=data, out="o")
    args = build_parser().parse_args(["train", command, "--data", "d", "--out", "o", "--steps", "7"])
    assert options_from_args(options_class, args) == options_class(data=data, out="o", steps=7)


def test_the_tokenizer_command_takes_the_functions_defaults():
    args = build_parser().parse_args(["train", "tokenizer", "--data", "d", "--out", "t.model"])
    assert args.vocab_size == defaults_of("duplex.training.tokenizer:train_tokenizer")()["vocab_size"] == 256


def test_lazy_names_and_defaults_of():
    assert lazy("duplex.training.lm:LMTrainingOptions")() is LMTrainingOptions
    assert lazy("duplex.training.tokenizer:train_tokenizer")() is train_tokenizer
    defaults = defaults_of("duplex.training.lm:LMTrainingOptions")()
    assert "data" not in defaults  # required: no default
    assert defaults == {f.name: f.default for f in dataclasses.fields(LMTrainingOptions)
                        if f.default is not dataclasses.MISSING}


def test_the_tokenizer_summary():
    line = describe(SHIPPED_TOKENIZER)
    assert line.endswith(f"pieces (0 EPAD/unknown, 1 BOS, 2 EOS, 3 PAD) -> {SHIPPED_TOKENIZER}")
    assert int(line.split()[0]) > 4
