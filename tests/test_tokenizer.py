"""The SentencePiece wrapper and Moshi's display rules, on a tokenizer trained here."""

import pytest

from duplex.tokenizer import TextTokenizer, TokenizerError

TEXT = """hello there, how are you today?
the codec turns speech into tokens and back again.
what time is it? it is half past three in the afternoon.
can you spell duplex? d u p l e x.
two plus two is four and three plus five is eight.
""" * 20


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    import sentencepiece as spm

    folder = tmp_path_factory.mktemp("spm")
    corpus = folder / "corpus.txt"
    corpus.write_text(TEXT)
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "tok"), vocab_size=50,
                                   model_type="unigram", bos_id=1, eos_id=2, unk_id=0, pad_id=3,
                                   minloglevel=2)
    return TextTokenizer(folder / "tok.model")


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
