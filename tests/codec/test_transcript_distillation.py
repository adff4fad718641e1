"""Transcript distillation of the codec's first codebook (codec.train.transcript, issue 28): the CTC head's
targets, its gradient reaching the encoder, training-only state that resumes exactly, crops with their words, and
``duplex train codec --transcript-weight --init``."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import MIMI_SMALL_CONFIG
from safetensors import safe_open

from codec import Mimi
from codec.train.trainer import CodecTrainer, TrainConfig
from codec.train.transcript import CHARACTERS, character_error_rate, encode_text


def tiny_codec(seed=0):
    torch.manual_seed(seed)
    mimi = Mimi(str(MIMI_SMALL_CONFIG))
    mimi.refresh_derived()
    return mimi


def cfg(**kw):
    base = dict(learning_rate=2e-3, min_codebooks=1, max_codebooks=4, mel_scales=[256, 512],
                warmup_unquantized_steps=0, transcript_weight=1.0, transcript_lr=2e-3)
    base.update(kw)
    return TrainConfig(**base)


def spoken(generator, batch=4, samples=4 * 1920):
    """Crops whose 'words' are tones: a low one says "a", a high one "b"."""
    t = torch.arange(samples) / 24000
    high = torch.rand(batch, generator=generator) < 0.5
    f0 = torch.where(high, 900.0, 150.0)[:, None, None]
    return (0.2 * torch.sin(2 * torch.pi * f0 * t)).float(), ["b" if h else "a" for h in high.tolist()]


def test_targets_and_error_rate():
    assert encode_text("Twenty-one, PLUS  three!").tolist() == [
        CHARACTERS.index(c) + 1 for c in "twenty one plus three"]
    assert encode_text("").numel() == 0
    assert character_error_rate(["two plus", "abc"], ["two plus", "abd"]) == pytest.approx(1 / 11)
    assert character_error_rate([""], ["x"]) == 1.0  # nothing to read: an insertion per character, over 1


def test_the_head_learns_to_read_the_first_codebook_and_its_gradient_reaches_the_encoder():
    # the transcript loss alone: what changes in the encoder comes through the straight-through quantizer
    trainer = CodecTrainer(tiny_codec(), cfg(mel_weight=0.0, waveform_weight=0.0, commitment_weight=0.0), seed=0)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="needs the words of each crop"):
        trainer.train_step(spoken(g)[0])
    encoder = [p.detach().clone() for p in trainer.mimi.encoder.parameters()]
    decoder = [p.detach().clone() for p in trainer.mimi.decoder.parameters()]
    fixed = spoken(torch.Generator().manual_seed(9), batch=8)
    before = trainer.evaluate(*fixed[:1], n_q=4, texts=fixed[1])
    losses = [trainer.train_step(*spoken(g))["transcript"] for _ in range(30)]
    after = trainer.evaluate(*fixed[:1], n_q=4, texts=fixed[1])
    assert sum(losses[-5:]) < sum(losses[:5]) and after["transcript"] < before["transcript"]
    assert after["transcript_cer"] < 1.0 and "transcript_cer" in before
    assert any(not torch.equal(a, b) for a, b in zip(encoder, trainer.mimi.encoder.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(decoder, trainer.mimi.decoder.parameters()))  # no gradient there
    assert "transcript" not in CodecTrainer(tiny_codec(), cfg(transcript_weight=0.0)).train_step(spoken(g)[0])


def test_the_head_is_training_state_only_and_resumes_exactly(tmp_path):
    data = [spoken(torch.Generator().manual_seed(i), batch=2, samples=3 * 1920) for i in range(3)]
    straight = CodecTrainer(tiny_codec(), cfg(), seed=5)
    losses = [straight.train_step(*b)["loss"] for b in data]
    first = CodecTrainer(tiny_codec(), cfg(), seed=5)
    head = [first.train_step(*b)["loss"] for b in data[:1]]
    first.save(str(tmp_path / "run"))
    second = CodecTrainer(tiny_codec(seed=9), cfg(), seed=0)  # another head initialisation too
    second.load(str(tmp_path / "run"))
    assert head + [second.train_step(*b)["loss"] for b in data[1:]] == losses
    with safe_open(str(tmp_path / "run" / "codec.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert keys and not any("transcript" in k or "rnn" in k for k in keys)
    assert "transcript_head" in torch.load(tmp_path / "run" / "trainer.pt", weights_only=False)
    # the official checkpoint loads as before
    Mimi.from_checkpoint(tmp_path / "run" / "codec.safetensors", config=str(tmp_path / "run" / "config.json"))


def hand_made_corpus(folder, seconds=3.0):
    """One conversation of 'duplex data synth''s layout: noise on both channels, the user's three words known."""
    rate = 24000
    (folder / "train").mkdir(parents=True)
    rng = np.random.default_rng(0)
    audio = (0.05 * rng.standard_normal((int(seconds * rate), 2))).astype(np.float32)
    words = [("what", 0.20, 0.50), ("is", 0.55, 0.70), ("two", 0.80, 1.20)]
    meta = {"turns": [{"channel": "user", "start": 0.2, "end": 1.2,
                       "words": [{"word": w, "start": a, "end": b} for w, a, b in words]},
                      {"channel": "assistant", "start": 1.5, "end": 2.0,
                       "words": [{"word": "four", "start": 1.5, "end": 2.0}]}]}
    for split in ("train", "heldout"):
        (folder / split).mkdir(exist_ok=True)
        sf.write(folder / split / "c0.wav", audio, rate, subtype="PCM_16")
        (folder / split / "c0.json").write_text(json.dumps(meta))
    (folder / "manifest.jsonl").write_text("".join(
        json.dumps({"id": "c0", "split": s, "duration": seconds, "wav": f"{s}/c0.wav", "json": f"{s}/c0.json"}) + "\n"
        for s in ("train", "heldout")))
    return words


def test_crops_come_with_the_words_whose_middle_they_hold(tmp_path):
    from duplex.data.codec_crops import CorpusAudio, crop_text

    words = hand_made_corpus(tmp_path / "corpus")
    audio = CorpusAudio(str(tmp_path / "corpus"))
    assert audio.transcribed
    samples = [(round(a * 24000), round(b * 24000), w) for w, a, b in words]
    assert crop_text(samples, 0, 36000) == "what is two"
    assert crop_text(samples, round(0.9 * 24000), 24000) == "two"  # its middle, 1.0 s, is inside
    assert crop_text(samples, round(1.05 * 24000), 24000) == ""
    plain = audio.batch(6, 1920 * 5, torch.Generator().manual_seed(3), speech=True)
    crops, texts = audio.batch(6, 1920 * 5, torch.Generator().manual_seed(3), speech=True, words=True)
    assert torch.equal(plain, crops) and len(texts) == 6  # the same crops as without words
    assert set(texts) <= {"", "what", "is", "two", "four", "what is", "is two", "what is two"}


def test_train_codec_with_the_transcript_loss_from_a_checkpoint(tmp_path):
    from duplex.cli import main

    hand_made_corpus(tmp_path / "corpus")
    init = tmp_path / "init"
    CodecTrainer(tiny_codec(), TrainConfig()).save(str(init))
    run = tmp_path / "run"
    assert main(["train", "codec", "--data", str(tmp_path / "corpus"), "--out", str(run), "--config",
                 str(MIMI_SMALL_CONFIG), "--init", str(init / "codec.safetensors"), "--transcript-weight", "1",
                 "--steps", "2", "--batch-size", "2", "--segment-seconds", "0.4", "--eval-every", "2",
                 "--lr", "1e-12", "--device", "cpu"]) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert "transcript" in log[0] and "transcript_cer" in log[1]["heldout"]
    assert log[0]["codebooks"] > 0  # a trained codec skips the unquantized warm-up
    # resumed without --init, the fine-tune keeps its quantizer (no warm-up from the start's options)
    assert main(["train", "codec", "--data", str(tmp_path / "corpus"), "--out", str(run), "--transcript-weight", "1",
                 "--steps", "3", "--batch-size", "2", "--segment-seconds", "0.4", "--eval-every", "0", "--lr",
                 "1e-12", "--device", "cpu", "--resume"]) == 0
    assert json.loads((run / "log.jsonl").read_text().splitlines()[-1])["codebooks"] > 0
    start, end = (Mimi.from_checkpoint(p / "codec.safetensors", config=str(MIMI_SMALL_CONFIG)) for p in (init, run))
    for a, b in zip(start.encoder.parameters(), end.encoder.parameters()):  # started from --init (lr ~0)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
