"""What ``duplex data synth | encode`` leave to the library: how many conversations make the hours asked for, the
one-line summaries, and the encoding progress bar (on a terminal only). No espeak-ng needed."""

import io

import pytest

from duplex.data import encode
from duplex.data.synth.conversation import SynthOptions, conversations_for_hours, format_corpus


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_conversations_for_hours_count_the_overshoot():
    options = SynthOptions(min_seconds=20, max_seconds=40)  # 30 s targets, about 32 s made
    assert conversations_for_hours(1.0, options) == 113  # ceil(3600 / 32)
    assert conversations_for_hours(0.0001, options) == 1  # never none


def test_the_corpus_summary():
    rows = [{"duration": 30.0, "split": "train"}, {"duration": 42.0, "split": "heldout"}]
    assert format_corpus(rows, 12.4, "c") == "2 conversations (1 held out), 0.02 h of audio in 12 s -> c"
    assert format_corpus(rows[:1], 3.0, "c").startswith("1 conversation (0 held out)")


def test_the_encoding_summary():
    assert encode.format_encoded(1, 2, 3.4, 8) == ("1 file encoded in 3 s, 2 already encoded with this codec "
                                                   "(8 codebooks) -> NAME.codes.safetensors beside each WAV")
    assert encode.format_encoded(0, 5, 0.0, 32).startswith("0 files encoded")


@pytest.mark.parametrize("stream, bar", [(Terminal(), True), (io.StringIO(), False)])
def test_the_encoding_bar_shows_on_a_terminal_and_ends_with_the_block(monkeypatch, stream, bar):
    monkeypatch.setattr("sys.stderr", stream)
    with encode.ConsoleProgress() as progress:
        progress(1, 4)
        progress(3, 4)
        assert (progress.bar is not None) == bar and (not bar or progress.bar.n == 3)
    assert progress.bar is None
    assert ("3/4" in stream.getvalue()) == bar
