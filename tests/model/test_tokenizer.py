"""The SentencePiece wrapper and Moshi's display rules, on a tokenizer trained here."""

import pytest

from duplex.model.tokenizer import TextTokenizer, TokenizerError


@pytest.fixture(scope="module")
def tokenizer(small_tokenizer_path):
    return TextTokenizer(small_tokenizer_path)


def test_round_trip(tokenizer):
    ids = tokenizer.encode("hello there")
    assert tokenizer.decode(ids) == "hello there"


def test_display_rules(tokenizer):
    ids = tokenizer.encode("hello")
    pieces = [tokenizer.piece(i) for i in ids]
    assert "".join(pieces) == " hello"  # the word-start mark becomes a space
    assert tokenizer.piece(0) is None and tokenizer.piece(3) is None  # end-of-padding and padding
    assert tokenizer.piece(tokenizer.vocab_size) is None  # e.g. the initial token (text_card)
    assert tokenizer.decode([3, *ids, 0, 3]) == "hello"


def test_bad_files(tmp_path):
    with pytest.raises(TokenizerError, match="not found"):
        TextTokenizer(tmp_path / "missing.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="not a SentencePiece model"):
        TextTokenizer(bad)
