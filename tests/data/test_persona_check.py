"""demos/lora-persona/persona_check.py: reading the model's words from ``duplex offline --output-text`` and finding
the greeting in them."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

PATH = Path(__file__).resolve().parents[2] / "demos" / "lora-persona" / "persona_check.py"
spec = importlib.util.spec_from_file_location("persona_check", PATH)
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)


def test_words_from_pieces():
    # SentencePiece's lone "▁" before "hi" (NVIDIA's layout writes it as a space), pieces joined, PAD/EPAD silent
    pieces = ["PAD", "EPAD", " ", "hi", "PAD", " thi", "s", "EPAD", " is", " duplex", "PAD", " fri", "e", "nd"]
    words = check.words_of(pieces)  # a word starts at its first piece, the lone space included
    assert [w for w, _ in words] == ["hi", "this", "is", "duplex", "friend"]
    assert [t for _, t in words] == pytest.approx([0.16, 0.4, 0.64, 0.72, 0.88])
    assert check.words_of(["PAD"] * 4) == []


def test_greeting_in_order():
    wanted = "hi this is duplex your friendly helper".split()
    assert check.in_order(wanted, "okay hi this is duplex you friendly helper yeah".split()) == 6
    assert check.in_order(wanted, "helper friendly your duplex".split()) == 1
    assert check.in_order(wanted, []) == 0


def test_median_f0():
    rate = 24000
    t = np.arange(rate) / rate
    tone = (0.3 * np.sign(np.sin(2 * np.pi * 220 * t))).astype(np.float32)  # a buzz at 220 Hz, one second
    assert abs(check.median_f0(tone, rate) - 220) < 5
    assert check.median_f0(np.zeros(rate, np.float32), rate) == 0.0
