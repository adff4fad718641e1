"""Codec training: losses go down, EMA codebooks, exact resume, trained checkpoints load and stream."""

import json
import warnings

import pytest
import torch
from helpers import MIMI_SMALL_CONFIG

from codec import Mimi
from codec.modules.quantizer import Codebook
from codec.train.trainer import CodecTrainer, TrainConfig, _ema_update


def tiny_codec(seed=0):
    torch.manual_seed(seed)
    mimi = Mimi(str(MIMI_SMALL_CONFIG))
    mimi.refresh_derived()
    return mimi


def tones(generator, batch=4, samples=3 * 1920):
    t = torch.arange(samples) / 24000
    f0 = 120 + 300 * torch.rand(batch, 1, 1, generator=generator)
    amp = 0.1 + 0.3 * torch.rand(batch, 1, 1, generator=generator)
    return (amp * torch.sin(2 * torch.pi * f0 * t)).float()


def cfg(**kw):
    base = dict(learning_rate=2e-3, min_codebooks=4, max_codebooks=4, mel_scales=[256, 512], warmup_unquantized_steps=0)
    base.update(kw)
    return TrainConfig(**base)


def test_a_few_steps_decrease_the_loss():
    trainer = CodecTrainer(tiny_codec(), cfg(), seed=0)
    data = torch.Generator().manual_seed(0)
    fixed = tones(torch.Generator().manual_seed(99))
    before = trainer.evaluate(fixed, n_q=4)["mel"]
    losses = [trainer.train_step(tones(data))["loss"] for _ in range(25)]
    after = trainer.evaluate(fixed, n_q=4)["mel"]
    assert sum(losses[-5:]) < sum(losses[:5])
    assert after < before


def test_ema_codebook_update_and_dead_code_replacement():
    book = Codebook(dim=2, bins=4)
    g = torch.Generator().manual_seed(0)
    inputs = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    _ema_update(book, inputs, torch.tensor([0, 0, 1]), 0.5, 0.01, g)  # first call: initialised from inputs
    assert float(book._initialized) == 1.0 and torch.allclose(book.cluster_usage, torch.full((4,), 0.02))
    assert all(min((c - x).norm() for x in inputs) < 0.5 for c in book.centroids)  # near the inputs
    book.embedding_sum.copy_(torch.tensor([[1.0, 1.0], [0.0, 1.0], [5.0, 5.0], [3.0, 3.0]]))
    book.cluster_usage.copy_(torch.tensor([1.0, 1.0, 1.0, 0.015]))
    _ema_update(book, inputs, torch.tensor([0, 0, 1]), 0.5, 0.01, g)
    assert torch.allclose(book.cluster_usage[:3], torch.tensor([0.5 + 1.0, 0.5 + 0.5, 0.5]))
    assert torch.allclose(book.embedding_sum[0], torch.tensor([0.5 + 1.0, 0.5 + 0.0]))  # 0.5*[1,1] + 0.5*[2,0]
    # code 3 fell below the threshold (0.0075 < 0.01): re-seeded with one of the inputs
    assert float(book.cluster_usage[3]) == pytest.approx(0.02)
    assert any(torch.allclose(book.centroids[3], x) for x in inputs)
    assert torch.allclose(book.centroids, book.embedding_sum / book.cluster_usage[:, None])


def test_resume_is_exact(tmp_path):
    def batches(g):
        return [tones(g) for _ in range(6)]

    straight = CodecTrainer(tiny_codec(), cfg(min_codebooks=1, max_codebooks=8), seed=5)
    data = batches(torch.Generator().manual_seed(1))
    losses = [straight.train_step(b)["loss"] for b in data]

    first = CodecTrainer(tiny_codec(), cfg(min_codebooks=1, max_codebooks=8), seed=5)
    head = [first.train_step(b)["loss"] for b in data[:3]]
    first.save(str(tmp_path / "run"))
    second = CodecTrainer(tiny_codec(seed=123), cfg(min_codebooks=1, max_codebooks=8), seed=0)
    second.load(str(tmp_path / "run"))
    assert second.step == 3
    tail = [second.train_step(b)["loss"] for b in data[3:]]
    assert head + tail == losses


def test_trained_checkpoint_loads_and_streams(tmp_path):
    trainer = CodecTrainer(tiny_codec(), cfg(), seed=0)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        trainer.train_step(tones(g))
    trainer.save(str(tmp_path / "run"))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert set(config) == {"sample_rate", "channels", "frame_rate", "seanet", "quantizer", "transformer"}
    mimi = Mimi.from_checkpoint(tmp_path / "run" / "codec.safetensors", config=str(tmp_path / "run" / "config.json"))
    pcm = tones(torch.Generator().manual_seed(3), batch=2, samples=10 * 1920)
    codes = mimi.encode(pcm)
    stream = mimi.stream(2)
    assert torch.equal(torch.cat([stream.encode(f) for f in pcm.split(1920, -1)], -1), codes)
    torch.testing.assert_close(torch.cat([stream.decode(c) for c in codes.split(1, -1)], -1), mimi.decode(codes),
                               atol=1e-5, rtol=0)


@pytest.mark.slow
def test_train_codec_cli(tmp_path, capsys):
    pytest.importorskip("duplex.data.synth.espeak")
    from duplex.cli import main
    from duplex.data.synth.espeak import EspeakError, Synthesizer

    try:
        Synthesizer()
    except EspeakError:
        pytest.skip("needs espeak-ng")
    corpus, run = tmp_path / "corpus", tmp_path / "run"
    assert main(["data", "synth", str(corpus), "--conversations", "3", "--heldout-every", "3",
                 "--min-seconds", "4", "--max-seconds", "5", "--workers", "1"]) == 0
    args = ["train", "codec", "--data", str(corpus), "--out", str(run), "--config", str(MIMI_SMALL_CONFIG),
            "--steps", "4", "--batch-size", "2", "--segment-seconds", "0.5", "--eval-every", "2", "--save-every", "2",
            "--device", "cpu"]
    assert main(["train", "codec", "--data", str(corpus), "--out", str(run), "--resume"]) == 2  # nothing to resume
    assert "holds no run to continue" in capsys.readouterr().err
    assert main(args) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and "heldout" in log[1]
    before = (run / "trainer.pt").read_bytes()
    assert main(args) == 2  # a finished run is not overwritten without --resume
    assert "already holds a training run" in capsys.readouterr().err
    assert (run / "trainer.pt").read_bytes() == before
    # --stop-at ends a run early with a checkpoint (6 is not a multiple of --save-every); --resume finishes it
    more = ["--batch-size", "2", "--segment-seconds", "0.5", "--eval-every", "2", "--save-every", "4",
            "--device", "cpu",
            "--resume", "--steps", "7"]
    assert main(args[:-8] + more + ["--stop-at", "6"]) == 0
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()][-2:] == [5, 6]
    assert torch.load(run / "trainer.pt", weights_only=False)["step"] == 6
    assert main(args[:-8] + more) == 0
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()][-2:] == [6, 7]
    assert (run / "codec.safetensors").exists()
    shipped = Mimi.from_checkpoint(str(run / "codec-fp16.safetensors"), config=str(run / "codec-fp16.json"))
    trained = Mimi.from_checkpoint(str(run / "codec.safetensors"), config=str(run / "config.json"))
    assert shipped.config == trained.config

    # A crash can cut the log's last line: --resume drops it with what came after the checkpoint.
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 8, "lo')
    assert main(args[:-8] + more + ["--steps", "8"]) == 0
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()][-2:] == [7, 8]
    # Weights and trainer state of different steps (a save cut short between the two files) are refused.
    import shutil

    shutil.copy(run / "trainer.pt", tmp_path / "trainer8.pt")
    assert main(args[:-8] + more + ["--steps", "9"]) == 0
    shutil.copy(tmp_path / "trainer8.pt", run / "trainer.pt")
    assert main(args[:-8] + more + ["--steps", "10"]) == 2
    assert "codec.safetensors is from step 9 but trainer.pt from step 8" in capsys.readouterr().err


@pytest.mark.parametrize("damage, words", [
    ("truncate", "where the manifest says"),
    ("garbage", "cannot read this audio file"),
    ("missing", "cannot read this audio file"),
    ("manifest", "manifest.jsonl, line 2: not a corpus entry"),
])
def test_damaged_corpus_is_named_in_the_error(tmp_path, capsys, damage, words):
    pytest.importorskip("duplex.data.synth.espeak")
    from duplex.cli import main
    from duplex.data.synth.espeak import EspeakError, Synthesizer

    try:
        Synthesizer()
    except EspeakError:
        pytest.skip("needs espeak-ng")
    corpus = tmp_path / "corpus"
    assert main(["data", "synth", str(corpus), "--conversations", "2", "--heldout-every", "0",
                 "--min-seconds", "3", "--max-seconds", "3", "--workers", "1"]) == 0
    wav = sorted((corpus / "train").glob("*.wav"))[1]
    if damage == "truncate":
        wav.write_bytes(wav.read_bytes()[:-24000])
    elif damage == "garbage":
        wav.write_bytes(b"not a wav file at all" * 100)
    elif damage == "missing":
        wav.unlink()
    else:
        manifest = corpus / "manifest.jsonl"
        lines = manifest.read_text().splitlines()
        manifest.write_text(lines[0] + "\n" + lines[1][:30] + "\n")
    assert main(["train", "codec", "--data", str(corpus), "--out", str(tmp_path / "run"), "--eval-every", "0",
                 "--steps", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_quality_metrics():
    import numpy as np

    from codec.eval.quality import perplexity, si_snr, stoi

    rng = np.random.default_rng(0)
    t = np.arange(24000 * 2) / 24000
    clean = (np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    noisy = clean + 0.3 * rng.standard_normal(clean.shape).astype(np.float32)
    assert si_snr(clean, clean) > 60 and si_snr(2 * clean, clean) > 60  # scale-invariant
    assert 0 < si_snr(noisy, clean) < 20
    assert stoi(clean, clean) > 0.99 and stoi(noisy, clean) < stoi(clean, clean)
    uniform = torch.arange(64).repeat(10)[None]
    assert perplexity(uniform, 64)[0] == pytest.approx(64.0)
    assert perplexity(torch.zeros(1, 100, dtype=torch.long), 64)[0] == pytest.approx(1.0)


def harmonic_tone(f0, seconds=1.5, sample_rate=24000, fundamental=1.0):
    import numpy as np

    t = np.arange(int(seconds * sample_rate)) / sample_rate
    x = sum((fundamental if k == 1 else 1.0) * np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 30)
            if f0 * k < 5000)
    return (0.1 * x / np.abs(x).max()).astype(np.float32)


def test_pitch_tracking_and_pitch_error():
    import numpy as np

    from codec.eval.quality import pitch_errors, pitch_ratios, pitch_track

    for f0 in (70.0, 85.0, 130.0, 230.0, 380.0):
        for fundamental in (1.0, 0.1):  # a weak fundamental must not read an octave up
            track = pitch_track(harmonic_tone(f0, fundamental=fundamental))
            assert len(track) > 50 and np.all(np.abs(track / f0 - 1) < 0.02), (f0, fundamental, track[:5])
    assert not pitch_track(np.zeros(24000, dtype=np.float32)).any()  # silence is unvoiced
    rng = np.random.default_rng(0)
    assert (pitch_track(0.1 * rng.standard_normal(24000)) > 0).mean() < 0.1  # so is white noise
    brown = np.cumsum(rng.standard_normal(48000))
    assert (pitch_track(0.1 * brown / np.abs(brown).max()) > 0).mean() < 0.1  # and low-frequency noise
    t = np.arange(48000) / 24000
    assert not pitch_track(0.05 + 0.05 * np.sin(2 * np.pi * 50 * t)).any()  # a DC offset and mains hum
    assert np.array_equal(pitch_track(harmonic_tone(130.0)[None]), pitch_track(harmonic_tone(130.0)))  # [1, T]
    with pytest.raises(ValueError, match="mono"):
        pitch_track(np.zeros((2, 24000)))
    # The output an octave-exact 100 Hz grid would give for a 130 Hz voice: 23% too low everywhere.
    ratios = pitch_ratios(harmonic_tone(100.0), harmonic_tone(130.0))
    report = pitch_errors(ratios)
    assert report["pitch_error"] == pytest.approx(0.23, abs=0.02) and report["gross_pitch_error"] == 1.0
    assert pitch_errors(pitch_ratios(harmonic_tone(130.0), harmonic_tone(130.0)))["gross_pitch_error"] == 0.0
    assert pitch_errors(pitch_ratios(np.zeros(24000), harmonic_tone(130.0)))["pitch_error"] is None
    assert len(pitch_track(np.zeros(100))) == 0  # shorter than one window


@pytest.mark.slow
def test_codec_quality_bench_cli(tmp_path, capsys):
    from duplex.cli import main
    from duplex.data.synth.espeak import EspeakError, Synthesizer

    try:
        Synthesizer()
    except EspeakError:
        pytest.skip("needs espeak-ng")
    trainer = CodecTrainer(tiny_codec(), cfg(), seed=0)
    trainer.save(str(tmp_path / "run"))
    assert main(["data", "synth", str(tmp_path / "c"), "--conversations", "2", "--heldout-every", "2",
                 "--min-seconds", "4", "--max-seconds", "5", "--workers", "1"]) == 0
    out, png = tmp_path / "q.json", tmp_path / "q.png"
    assert main(["bench", "codec-quality", "--data", str(tmp_path / "c"), "--checkpoint",
                 str(tmp_path / "run" / "codec.safetensors"), "--json", str(out), "--plot", str(png)]) == 0
    report = json.loads(out.read_text())
    assert report["clips"] == 2 and len(report["perplexity"]) == 8 and 0 <= report["stoi"] <= 1
    assert len(report["speech_perplexity"]) == 8 and 0 < report["speech_frames_fraction"] < 1
    assert report["voiced_frames"] > 0 and 0 <= report["gross_pitch_error"] <= 1 and report["pitch_error"] >= 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_unquantized_warmup_leaves_the_codebooks_alone():
    trainer = CodecTrainer(tiny_codec(), cfg(warmup_unquantized_steps=2), seed=0)
    g = torch.Generator().manual_seed(0)
    books = trainer.mimi.quantizer.rvq_first.codebooks + trainer.mimi.quantizer.rvq_rest.codebooks
    for _ in range(2):
        assert trainer.train_step(tones(g))["codebooks"] == 0
    assert all(float(b._initialized) == 0 for b in books)
    assert trainer.train_step(tones(g))["codebooks"] == 4  # quantized from here on; codebooks start now
    assert all(float(b._initialized) == 1 for b in books[:4])


def test_quantizer_dropout_still_trains_every_codebook():
    from codec.train.trainer import forward_train

    mimi = tiny_codec()
    books = mimi.quantizer.rvq_first.codebooks + mimi.quantizer.rvq_rest.codebooks
    pcm = tones(torch.Generator().manual_seed(0))
    _, _, codes = forward_train(mimi, pcm, 1, cfg(min_codebooks=1, max_codebooks=4), torch.Generator().manual_seed(0))
    assert codes.shape == (4, 1, 3)  # one codebook decoded...
    assert all(float(b._initialized) == 1 for b in books[:4])  # ...but the first four all learnt from the batch
    assert all(float(b._initialized) == 0 for b in books[4:])  # beyond max_codebooks: untouched
    _, _, codes = forward_train(mimi, pcm, 3, cfg(min_codebooks=1, max_codebooks=4), torch.Generator().manual_seed(0))
    assert codes.shape == (4, 3, 3)


def test_cosine_learning_rate_schedule():
    c = TrainConfig(learning_rate=1e-3, lr_schedule="cosine", total_steps=100, final_lr_fraction=0.1)
    assert c.lr_at(0) == pytest.approx(1e-3) and c.lr_at(50) == pytest.approx(5.5e-4)
    assert c.lr_at(100) == pytest.approx(1e-4) and c.lr_at(500) == pytest.approx(1e-4)
    assert TrainConfig(learning_rate=1e-3).lr_at(10_000) == 1e-3  # constant by default
    trainer = CodecTrainer(tiny_codec(), cfg(learning_rate=1e-3, lr_schedule="cosine", total_steps=4), seed=0)
    g = torch.Generator().manual_seed(0)
    lrs = [trainer.train_step(tones(g))["lr"] for _ in range(3)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[0] > lrs[1] > lrs[2]
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(lrs[2])
    with pytest.raises(ValueError, match="unknown lr_schedule"):
        TrainConfig(lr_schedule="linear", total_steps=3).lr_at(1)


def test_export_for_inference_is_half_precision_and_codes_agree(tmp_path):
    from safetensors import safe_open

    from codec.shipped import export_for_inference

    trainer = CodecTrainer(tiny_codec(), cfg(), seed=0)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        trainer.train_step(tones(g))
    mimi = trainer.mimi.eval()
    path = tmp_path / "ship.safetensors"
    export_for_inference(mimi, str(path))
    with safe_open(str(path), framework="pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
        usage = f.get_tensor("quantizer.rvq_first.vq.layers.0._codebook.cluster_usage")
    assert dtypes == {torch.float16} and bool((usage == 1).all())
    assert path.stat().st_size < 0.6 * sum(v.numel() * 4 for v in mimi.state_dict().values())
    loaded = Mimi.from_checkpoint(str(path), config=str(tmp_path / "ship.json"))
    original = mimi.quantizer.rvq_first.codebooks[0].centroids
    assert torch.equal(loaded.quantizer.rvq_first.codebooks[0].centroids, original.half().float())
    pcm = tones(torch.Generator().manual_seed(5), batch=1)
    mimi.num_codebooks = loaded.num_codebooks = 4
    with torch.no_grad():
        a, b = mimi.encode(pcm), loaded.encode(pcm)
        assert (a == b).float().mean() > 0.9  # half-precision weights: nearly all codes unchanged
        ya, yb = mimi.decode(a), loaded.decode(a)
    assert float((ya - yb).abs().max()) < 1e-2 * max(1.0, float(ya.abs().max()))


def test_speech_perplexity_counts_only_speech_frames():
    import numpy as np

    from codec.io.audio import speech_frames

    clip = np.zeros(5 * 1920 + 100, dtype=np.float32)
    clip[1920:3840] = 0.1  # frame 1: speech-level
    clip[3 * 1920:4 * 1920] = 1e-4  # frame 3: -80 dBFS, silence
    clip[5 * 1920:] = 0.1  # a partial last frame, zero-padded: 100 samples at 0.1 -> ~-36 dBFS
    assert speech_frames(clip, 1920, 6).tolist() == [False, True, False, False, False, True]


def test_training_init_makes_the_output_depend_on_the_input():
    """With PyTorch's default initialisation a fresh codec's output ignores its input (training then starts on a
    plateau); after init_for_training it depends on it, near speech level, and the init is deterministic."""
    from codec.train.trainer import forward_train, init_for_training

    pcm = tones(torch.Generator().manual_seed(3))

    def dependence(mimi):
        run = dict(n_q=4, cfg=cfg(), generator=torch.Generator(), update_codebooks=False, bypass=True)
        with torch.no_grad():
            y = forward_train(mimi, pcm, **run)[0]
            y0 = forward_train(mimi, torch.zeros_like(pcm), **run)[0]
        return float((y - y0).pow(2).mean().sqrt()), float(y.pow(2).mean().sqrt())

    changed, _ = dependence(tiny_codec())
    assert changed < 1e-3 * float(pcm.pow(2).mean().sqrt())  # the default init: practically input-independent
    a, b = tiny_codec(seed=1), tiny_codec(seed=2)
    init_for_training(a, seed=5)
    init_for_training(b, seed=5)
    for part in ("encoder", "decoder"):  # the convolutions are drawn from the seed alone
        assert all(torch.equal(x, y) for x, y in zip(getattr(a, part).parameters(), getattr(b, part).parameters()))
    assert all(float(m.bias.detach().abs().max()) == 0 for m in a.decoder.modules()
               if isinstance(m, torch.nn.Conv1d) and m.bias is not None)
    changed, level = dependence(a)
    assert changed > 0.9 * level and 0.1 < level / float(pcm.pow(2).mean().sqrt()) < 10


def test_multi_period_discriminator_shapes_and_losses():
    from codec.train.discriminator import (
        MultiPeriodDiscriminator,
        discriminator_loss,
        feature_matching_loss,
        generator_loss,
    )

    torch.manual_seed(0)
    d = MultiPeriodDiscriminator().requires_grad_(False)
    real, fake = tones(torch.Generator().manual_seed(1)), tones(torch.Generator().manual_seed(2))
    out_real, out_fake = d(real), d(fake)
    assert len(out_real) == 5  # periods 2, 3, 5, 7, 11
    for (logits, maps), period in zip(out_real, (2, 3, 5, 7, 11)):
        assert logits.shape[0] == 4 and maps[0].shape[-1] == period  # columns = one phase of the period each
    assert float(feature_matching_loss(out_real, out_real)) == 0.0
    assert float(feature_matching_loss(out_real, out_fake)) > 0
    # hinge values: confident and right costs nothing, confident and wrong costs 2 per side
    sure = [(torch.full((4, 3), 5.0), [])]
    assert float(discriminator_loss(sure, [(-s, m) for s, m in sure])) == 0.0
    assert float(discriminator_loss([(-s, m) for s, m in sure], sure)) == 12.0
    assert float(generator_loss(sure)) == 0.0 and float(generator_loss([(-s, m) for s, m in sure])) == 6.0


def test_adversarial_training_steps_and_exact_resume(tmp_path):
    adversarial = dict(min_codebooks=1, max_codebooks=8, adversarial_weight=0.1, feature_matching_weight=0.2)
    data = [tones(torch.Generator().manual_seed(i)) for i in range(4)]

    torch.manual_seed(3)
    straight = CodecTrainer(tiny_codec(), cfg(**adversarial), seed=5)
    d_before = [p.detach().clone() for p in straight.discriminator.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. logging a loss that still requires grad
        logs = [straight.train_step(b) for b in data]
    assert all(k in logs[0] for k in ("adversarial", "feature_matching", "discriminator"))
    assert all(torch.isfinite(torch.tensor(log["loss"])) for log in logs)
    assert any(not torch.equal(a, b) for a, b in zip(d_before, straight.discriminator.parameters()))

    torch.manual_seed(3)
    first = CodecTrainer(tiny_codec(), cfg(**adversarial), seed=5)
    head = [first.train_step(b)["loss"] for b in data[:2]]
    first.save(str(tmp_path / "run"))
    second = CodecTrainer(tiny_codec(seed=9), cfg(**adversarial), seed=0)  # another discriminator init too
    second.load(str(tmp_path / "run"))
    tail = [second.train_step(b)["loss"] for b in data[2:]]
    assert head + tail == [log["loss"] for log in logs]

    # A checkpoint made without a discriminator continues with a fresh one.
    plain = CodecTrainer(tiny_codec(), cfg(min_codebooks=1, max_codebooks=8), seed=5)
    plain.train_step(data[0])
    plain.save(str(tmp_path / "plain"))
    added = CodecTrainer(tiny_codec(), cfg(**adversarial), seed=5)
    added.load(str(tmp_path / "plain"))
    assert "adversarial" in added.train_step(data[1])
