"""Shared test fixtures. Reference data in tests/fixtures/ was produced by Kyutai's implementation (see README)."""

from __future__ import annotations

import os
import signal
import threading

import pytest
import torch
from helpers import FIXTURES, LM_SMALL, LM_SMALL_CONFIG, MIMI_SMALL, MIMI_SMALL_CONFIG

# Kyutai's moshi, the oracle of many tests, compiles a few small functions with torch.compile on their first call
# (Inductor: 15-25 s on 2 cores, paid by whichever test calls one first); eager gives the same tokens and keeps the
# suite inside its 10 minutes. Read when moshi is imported; a value set by the caller is kept.
os.environ.setdefault("NO_TORCH_COMPILE", "1")

# A suite started in the background without job control (`bash .ci/run &` in a script, some CI agents) inherits
# SIGINT ignored, and so would every command it starts (an ignored signal stays ignored across exec): the Ctrl-C tests
# would see their commands run on to the end. Ctrl-C is given back to the suite, and so to its children (a handled
# signal is the default one after exec).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def small_mimi():
    """The small random-weight Mimi the reference vectors were made with (official layout, narrower)."""
    from codec import Mimi

    return Mimi.from_checkpoint(MIMI_SMALL, config=MIMI_SMALL_CONFIG)


@pytest.fixture(scope="session")
def mimi_io():
    from safetensors.torch import load_file

    return load_file(str(FIXTURES / "mimi_small_io.safetensors"))


@pytest.fixture
def speechlike():
    """Deterministic test audio [B, 1, frames * 1920]: a few harmonics with a moving pitch plus a little noise."""

    def make(batch: int, frames: int, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        t = torch.arange(frames * 1920) / 24000
        rows = []
        for _ in range(batch):
            f0 = 100 + 150 * torch.rand(1, generator=g)
            phase = 2 * torch.pi * torch.cumsum(f0 * (1 + 0.2 * torch.sin(2 * torch.pi * 1.5 * t)), 0) / 24000
            wave = sum(torch.sin(k * phase) / k for k in range(1, 6))
            rows.append(0.2 * wave + 0.01 * torch.randn(t.shape, generator=g))
        return torch.stack(rows)[:, None].float()

    return make




@pytest.fixture(scope="session")
def small_lm():
    """The small random-weight Moshi LM the reference vectors were made with (official layout), float32."""
    from duplex.model.lm import MoshiLM

    return MoshiLM.from_checkpoint(LM_SMALL, config=LM_SMALL_CONFIG, dtype=torch.float32)


@pytest.fixture(scope="session")
def lm_io():
    from safetensors.torch import load_file

    return load_file(str(FIXTURES / "lm_small_io.safetensors"))


TOKENIZER_TEXT = """hello there, how are you today?
the codec turns speech into tokens and back again.
what time is it? it is half past three in the afternoon.
can you spell duplex? d u p l e x.
two plus two is four and three plus five is eight.
""" * 20


@pytest.fixture(scope="session")
def small_tokenizer_path(tmp_path_factory):
    """A 50-piece SentencePiece model trained here (ids 0 unk, 1 bos, 2 eos, 3 pad, as Moshi's tokenizer)."""
    import sentencepiece as spm

    folder = tmp_path_factory.mktemp("spm")
    corpus = folder / "corpus.txt"
    corpus.write_text(TOKENIZER_TEXT)
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "tok"), vocab_size=50,
                                   model_type="unigram", bos_id=1, eos_id=2, unk_id=0, pad_id=3, minloglevel=2)
    return folder / "tok.model"


def _threads_of_a_new_thread() -> int:
    """The thread count a thread started now computes with: torch keeps the last ``set_num_threads`` of any thread
    as the process's, and each new thread takes it (the asking thread keeps its own)."""
    import torch

    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


@pytest.fixture(autouse=True)
def _torch_threads_as_they_were():
    """Commands run in-process here (``main(["serve", ...])``) set torch's thread count, as they may in their own
    process, on this thread or another (a server's); the next test gets the count it would have had, here and in
    the threads it starts (a server's clock thread computing with another count than a reference engine stepped
    here gives other float sums: tests/serving/test_adapters.py compares them bit for bit)."""
    import torch

    before, before_new = torch.get_num_threads(), _threads_of_a_new_thread()
    yield
    if torch.get_num_threads() != before or _threads_of_a_new_thread() != before_new:
        torch.set_num_threads(before)
