"""``duplex train lm`` on a tiny dataset in Kyutai's layout: the data reader, the loss, the schedule, exact resume,
fine-tuning with --init, and an export Kyutai's loader reads."""

import json
import math
import os
import shutil
import signal

import pytest
import torch

from duplex.cli import main
from duplex.data.encode import STEREO_CODES_FORMAT, codes_path
from duplex.data.lm_dataset import DatasetError, SegmentSource, load_conversations, read_alignments
from duplex.errors import UsageError
from duplex.model.config import LMConfig
from duplex.model.lm import LMOutput, MoshiLM
from duplex.training.lm import LMTrainer, LMTrainingOptions, drop_user_acoustic, one_cycle_lr, train_lm
from duplex.training.lm_loss import LossWeights, lm_loss

TINY = {"dim": 32, "num_heads": 2, "num_layers": 2, "context": 40, "text_card": 64, "card": 32,
        "depformer_dim": 32, "depformer_num_heads": 2, "depformer_num_layers": 1, "depformer_dim_feedforward": 64}
WORDS = ["hello", "there", "how", "are", "you", "today", "two", "plus", "is", "four"]


def write_dataset(folder, tokenizer_path, files=3, seconds=6.0, codebooks=8, card=32, seed=0):
    """A dataset in Kyutai's fine-tuning layout with codes already cached: the model's words every 0.5 s and
    codes that follow them (the model's semantic code is the word's index), so there is something to learn."""
    g = torch.Generator().manual_seed(seed)
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    frames = round(seconds * 12.5)
    for split, count in (("train", files), ("heldout", 1)):
        lines = []
        for i in range(count):
            wav = folder / "audio" / f"{split}{i}.wav"
            words = [[WORDS[(i + k) % len(WORDS)], [0.5 * k + 0.1, 0.5 * k + 0.4], "SPEAKER_MAIN"]
                     for k in range(int(seconds / 0.5))]
            words.append(["ignored", [0.2, 0.3], "SPEAKER_OTHER"])
            wav.with_suffix(".json").write_text(json.dumps({"alignments": words}))
            codes = torch.randint(0, card, (2, codebooks, frames), generator=g)
            for k in range(frames):
                codes[0, 0, k] = (i + int(k / 6.25)) % card
            from codec.io.checkpoint import write_safetensors

            write_safetensors({"codes": codes.to(torch.int16)}, codes_path(wav), metadata={
                "format": STEREO_CODES_FORMAT, "codec": "test", "frame_rate": "12.5"})
            lines.append(json.dumps({"path": f"audio/{wav.name}", "duration": seconds}))
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    shutil.copyfile(tokenizer_path, folder / "tokenizer.model")
    (folder / "tiny.json").write_text(json.dumps(TINY))
    return folder


@pytest.fixture
def dataset(tmp_path, small_tokenizer_path):
    return write_dataset(tmp_path / "data", small_tokenizer_path)


def options(dataset, out, **kw):
    base = dict(data=str(dataset), out=str(out), config=str(dataset / "tiny.json"), steps=8, batch_size=2,
                segment_seconds=2.0, lr=3e-3, eval_every=4, save_every=4)
    return LMTrainingOptions(**{**base, **kw})


def test_the_reader_keeps_the_model_words_and_cuts_segments(dataset, small_tokenizer_path):
    words = read_alignments(dataset / "audio" / "train0.json")
    assert [w for w, _, _ in words][:3] == ["hello", "there", "how"] and "ignored" not in [w for w, _, _ in words]
    convs = load_conversations(dataset / "train.jsonl", 8, 12.5)
    assert len(convs) == 3 and convs[0].codes.shape == (2, 8, 75)
    from duplex.model.tokenizer import TextTokenizer

    tok = TextTokenizer(small_tokenizer_path)
    source = SegmentSource(convs, tok.encode, 50, 12.5, "consecutive")
    assert [start for i, start in sorted(source.epoch(0))] == [0, 50] * 3
    last = source.segment(0, 50)
    assert last.shape == (17, 50) and (last[:, 25:] == -1).all() and (last[:, :25] >= 0).all()
    first = source.segment(0, 0)
    assert first[0, 0].item() == 0 and first[0, 1].item() == tok.encode("hello")[0]  # EPAD, then the word (0.1 s)
    assert torch.equal(first[1:9], convs[0].codes[0, :, :50].long())
    assert torch.equal(first[9:], convs[0].codes[1, :, :50].long())


def test_random_segments_lie_inside_the_file_and_repeat_with_the_seed(dataset):
    convs = load_conversations(dataset / "train.jsonl", 8, 12.5)
    a = SegmentSource(convs, lambda w: [5], 25, 12.5, "random", seed=3)
    b = SegmentSource(convs, lambda w: [5], 25, 12.5, "random", seed=3)
    assert a.epoch(1) == b.epoch(1) and a.epoch(0) != a.epoch(1)
    assert all(0 <= start <= 75 - 25 for _, start in a.epoch(0)) and len(a.epoch(0)) == 9
    assert torch.equal(a.next_batch(4), b.next_batch(4)) and a.position == (0, 4)


def test_a_crop_places_each_word_in_the_frame_it_has_in_the_whole_file(dataset):
    # A word at 0.24 s (frame 3) in a crop from frame 1: shifting by 0.08 s in floats and flooring gives frame 1,
    # not 2 (0.16 * 12.5 = 1.9999...); the word's frame in the file less the crop's first frame is exact
    convs = load_conversations(dataset / "train.jsonl", 8, 12.5)
    conv = convs[0]
    conv.words[:] = [("a", 0.24, 0.3), ("b", 1.2, 1.3), ("c", 2.4, 2.5)]  # frames 3, 15, 30 in the file
    source = SegmentSource([conv], lambda w: [7], 40, 12.5, "random")
    assert math.floor((0.24 - 1 / 12.5) * 12.5) == 1  # what the shift in seconds gave
    for start in range(0, 3):
        row = source.segment(0, start)[0].tolist()
        assert [i for i, t in enumerate(row) if t == 7] == [3 - start, 15 - start, 30 - start]


def test_damaged_datasets_are_named(tmp_path, dataset):
    (tmp_path / "bad.jsonl").write_text('{"path": "x.wav"}\n')
    with pytest.raises(DatasetError, match="line 1"):
        load_conversations(tmp_path / "bad.jsonl", 8, 12.5)
    (dataset / "audio" / "train1.json").write_text('{"alignments": [["w", 1.0, "SPEAKER_MAIN"]]}')
    with pytest.raises(DatasetError, match="train1.json: alignment 0"):
        load_conversations(dataset / "train.jsonl", 8, 12.5)
    codes_path(dataset / "audio" / "train2.wav").unlink()
    (dataset / "audio" / "train1.json").write_text('{"alignments": []}')
    with pytest.raises(DatasetError, match="train2.codes.safetensors.*duplex data encode"):
        load_conversations(dataset / "train.jsonl", 8, 12.5)


@pytest.mark.parametrize("damage, words", [
    ("folder", "train.jsonl is a folder, expected a file"),
    ("latin-1", "train.jsonl: the manifest is not UTF-8 text"),
    ("path", 'train.jsonl, line 1: "path" must be a file name, got 5'),
    ("alignments folder", "train0.json is a folder, expected a file"),
    ("alignments latin-1", "train0.json: the alignments file is not UTF-8 text"),
])
def test_unreadable_dataset_files_are_named_in_one_line(dataset, damage, words):
    manifest, alignments = dataset / "train.jsonl", dataset / "audio" / "train0.json"
    if damage == "folder":
        manifest.unlink()
        manifest.mkdir()
    elif damage == "latin-1":
        manifest.write_bytes('{"path": "audio/train0.wav", "duration": 6} # caf\xe9\n'.encode("latin-1"))
    elif damage == "path":
        manifest.write_text('{"path": 5, "duration": 6}\n')
    elif damage == "alignments folder":
        alignments.unlink()
        alignments.mkdir()
    else:
        alignments.write_bytes('{"alignments": [["caf\xe9", [0.1, 0.4], "SPEAKER_MAIN"]]}'.encode("latin-1"))
    with pytest.raises(DatasetError, match=words):
        load_conversations(manifest, 8, 12.5)


def test_codes_of_another_codec_are_named_before_the_first_step(tmp_path, small_tokenizer_path):
    # codes of a 64-entry codec for an LM whose codebooks hold 32: an IndexError at step 1 otherwise
    dataset = write_dataset(tmp_path / "data", small_tokenizer_path, card=64)
    with pytest.raises(DatasetError, match=r"train0.codes.safetensors: codes from 0 to \d+, the LM's codebooks hold "
                                           r"0..31"):
        train_lm(options(dataset, tmp_path / "run"), torch.device("cpu"))
    assert not (tmp_path / "run" / "trainer.pt").exists()


def test_codes_of_two_codecs_of_one_shape_are_refused_before_the_first_step(tmp_path, small_tokenizer_path, capsys):
    """Two datasets encoded apart, one with another codec of the same shape (a fine-tuned one): the LM would learn
    two codecs' codes as one. Files that do not record the weights (older ones, other tools') pass, with a note when
    others do."""
    from safetensors import safe_open

    from codec.io.checkpoint import write_safetensors

    first = write_dataset(tmp_path / "a", small_tokenizer_path)
    second = write_dataset(tmp_path / "b", small_tokenizer_path, seed=1)
    train_lm(options(first, tmp_path / "unrecorded", data=[str(first), str(second)], steps=1, eval_every=0),
             torch.device("cpu"))
    for folder, weights in ((first, "aaaa"), (second, "bbbb")):
        for path in sorted((folder / "audio").glob("*.codes.safetensors")):
            with safe_open(str(path), framework="pt") as f:
                codes, meta = f.get_tensor("codes"), f.metadata()
            write_safetensors({"codes": codes}, path, metadata={**meta, "codec_weights": weights})
    train_lm(options(first, tmp_path / "one", steps=1, eval_every=0), torch.device("cpu"))
    assert "does not record" not in capsys.readouterr().err
    unrecorded = write_dataset(tmp_path / "c", small_tokenizer_path, seed=2)
    train_lm(options(first, tmp_path / "mixed", data=[str(first), str(unrecorded)], steps=1, eval_every=0),
             torch.device("cpu"))
    assert "c/audio/train0.codes.safetensors (and maybe others) does not record which codec's weights made it" in \
        capsys.readouterr().err
    with pytest.raises(DatasetError, match=r"^the codes were made by two codecs: .*a/audio/train0.codes.safetensors "
                                           r"by codec weights aaaa, .*b/audio/train0.codes.safetensors by bbbb "
                                           r"\(encode every dataset with the LM's codec"):
        train_lm(options(first, tmp_path / "two", data=[str(first), str(second)]), torch.device("cpu"))
    assert not (tmp_path / "two" / "trainer.pt").exists()


def test_loss_weights_semantic_and_text_padding():
    # Two positions, a text PAD target and a word target; the semantic codebook counts 100x.
    text_logits = torch.zeros(1, 1, 2, 8)
    text_logits[0, 0, 1, 5] = 2.0  # the word target (5) is likelier than uniform at position 1
    logits = torch.zeros(1, 2, 2, 4)
    logits[0, 0, :, 1] = 3.0  # semantic: right; acoustic: uniform
    out = LMOutput(logits, torch.ones(1, 2, 2, dtype=torch.bool), text_logits, torch.ones(1, 1, 2, dtype=torch.bool))
    codes = torch.tensor([[[3, 5], [1, 1], [0, 0]]])
    losses = lm_loss(out, codes, LossWeights())
    ce_uniform8, ce_word = math.log(8), -math.log(math.exp(2) / (math.exp(2) + 7))
    assert losses["text"].item() == pytest.approx((0.5 * ce_uniform8 + ce_word) / 1.5, rel=1e-5)
    ce_sem, ce_uniform4 = -math.log(math.exp(3) / (math.exp(3) + 3)), math.log(4)
    assert losses["audio"].item() == pytest.approx((200 * ce_sem + 2 * ce_uniform4) / 202, rel=1e-5)
    assert losses["loss"].item() == pytest.approx(losses["text"].item() + losses["audio"].item())


def test_the_schedule_is_one_cycle_cosine():
    lrs = [one_cycle_lr(s, 100, 1e-3) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-3 / 25) and max(lrs) == pytest.approx(1e-3) and lrs.index(max(lrs)) == 4
    assert lrs[-1] == pytest.approx(1e-3 / 25 / 1e4) and all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3), 1e-3, total_steps=100, pct_start=0.05,
        cycle_momentum=False)
    reference = []
    for _ in range(100):
        reference.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx(reference, rel=1e-9)


@pytest.mark.slow
def test_loss_decreases_and_resume_is_exact(dataset, tmp_path):
    train_lm(options(dataset, tmp_path / "straight", steps=24, eval_every=8, save_every=8), torch.device("cpu"))
    log = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 24 and sum(r["loss"] for r in log[-4:]) < sum(r["loss"] for r in log[:4])
    held = [r["heldout"]["loss"] for r in log if "heldout" in r]
    assert len(held) == 3 and held[-1] < held[0]
    for name in ("model.safetensors", "config.json", "tokenizer.model", "loss.png", "lm.safetensors", "trainer.pt",
                 "best/model.safetensors", "best/config.json", "best/tokenizer.model"):
        assert (tmp_path / "straight" / name).is_file(), name
    best = json.loads((tmp_path / "straight" / "best" / "step.json").read_text())
    assert best["heldout"]["loss"] == min(held) and best["step"] == 8 * (held.index(min(held)) + 1)

    train_lm(options(dataset, tmp_path / "split", steps=24, stop_at=10, eval_every=8, save_every=8),
             torch.device("cpu"))
    with pytest.raises(UsageError, match="already holds a training run"):
        train_lm(options(dataset, tmp_path / "split", steps=24), torch.device("cpu"))
    train_lm(options(dataset, tmp_path / "split", steps=24, eval_every=8, save_every=8, resume=True),
             torch.device("cpu"))
    resumed = [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == list(range(1, 25))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in log]
    a = MoshiLM.from_checkpoint(tmp_path / "straight" / "lm.safetensors", tmp_path / "straight" / "config.json",
                                dtype=torch.float32).state_dict()
    b = MoshiLM.from_checkpoint(tmp_path / "split" / "lm.safetensors", tmp_path / "split" / "config.json",
                                dtype=torch.float32).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_run_shaping_options(dataset, tmp_path, capsys):
    """A resumed run goes on as planned: another --steps (a default one, say) or --lr is refused, naming the run's
    values and the call's, before any step; what may change (--stop-at, --save-every, --eval-every, the paths)
    does."""
    run = tmp_path / "run"
    train_lm(options(dataset, run, steps=6, stop_at=2, eval_every=0), torch.device("cpu"))
    before = (run / "trainer.pt").read_bytes()
    with pytest.raises(UsageError, match=r"^--resume: this run was planned with --steps 6 and --lr 0.003; this call "
                                         r"gives --steps 2000 and --lr 0.0005 \(give the run's values to go on\)$"):
        train_lm(LMTrainingOptions(data=str(dataset), out=str(run), batch_size=2, segment_seconds=2.0, resume=True),
                 torch.device("cpu"))
    with pytest.raises(UsageError, match="planned with --seed 0; this call gives --seed 1"):
        train_lm(options(dataset, run, steps=6, eval_every=0, seed=1, resume=True), torch.device("cpu"))
    assert (run / "trainer.pt").read_bytes() == before
    assert len((run / "log.jsonl").read_text().splitlines()) == 2
    capsys.readouterr()
    train_lm(options(dataset, run, steps=6, stop_at=4, eval_every=2, save_every=3, data=[str(dataset)],
                     resume=True), torch.device("cpu"))
    assert "resumed" in capsys.readouterr().err
    assert torch.load(run / "trainer.pt", weights_only=False)["step"] == 4


def test_user_acoustic_dropout_leaves_out_the_users_acoustic_codebooks_of_drawn_segments():
    codes = torch.randint(0, 32, (64, 17, 5))
    kept = codes.clone()
    out = drop_user_acoustic(codes, 16, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(codes, kept)  # the caller's batch is left as it is
    dropped = (out[:, 10:] == -1).flatten(1).all(1)
    assert 16 < int(dropped.sum()) < 48  # about half the segments
    assert torch.equal(out[~dropped], codes[~dropped])
    assert torch.equal(out[:, :10], codes[:, :10])  # text, the model's 8, the user's semantic codebook: all kept
    assert torch.equal(out, drop_user_acoustic(codes, 16, 0.5, torch.Generator().manual_seed(0)))
    assert drop_user_acoustic(codes, 16, 0.0, torch.Generator()) is codes
    assert (drop_user_acoustic(codes, 16, 1.0, torch.Generator())[:, 10:] == -1).all()
    assert (drop_user_acoustic(codes[:, :9], 8, 1.0, torch.Generator())[:, 6:] == -1).all()  # 4 + 4 codebooks


def test_user_acoustic_dropout_trains_resumes_exactly_and_never_touches_held_out_losses(dataset, tmp_path,
                                                                                     monkeypatch):
    seen = []  # (a training batch?, the batch the loss saw)
    losses = LMTrainer._losses
    monkeypatch.setattr(LMTrainer, "_losses",
                        lambda self, batch: (seen.append((torch.is_grad_enabled(), batch.clone())),
                                             losses(self, batch))[1])
    train_lm(options(dataset, tmp_path / "straight", steps=6, eval_every=3, save_every=3,
                     user_acoustic_dropout=0.5), torch.device("cpu"))
    training = [b for grad, b in seen if grad]
    held = [b for grad, b in seen if not grad]
    assert len(training) == 6 and held
    assert any((b[:, 10:] == -1).flatten(1).all(1).any() for b in training)  # some segments lost them
    for b in held:  # held-out segments keep every codebook (-1 only where a segment is padded past its file's end)
        assert torch.equal(b[:, 10:] == -1, (b[:, 9:10] == -1).expand_as(b[:, 10:]))
    log = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    train_lm(options(dataset, tmp_path / "split", steps=6, stop_at=2, eval_every=3, save_every=3,
                     user_acoustic_dropout=0.5), torch.device("cpu"))
    with pytest.raises(UsageError, match="planned with --user-acoustic-dropout 0.5; this call gives "
                                         "--user-acoustic-dropout 0.0"):
        train_lm(options(dataset, tmp_path / "split", steps=6, resume=True), torch.device("cpu"))
    train_lm(options(dataset, tmp_path / "split", steps=6, eval_every=3, save_every=3, user_acoustic_dropout=0.5,
                     resume=True), torch.device("cpu"))
    resumed = [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in log]
    with pytest.raises(UsageError, match="from 0 to 1, got 1.5"):
        train_lm(options(dataset, tmp_path / "bad", user_acoustic_dropout=1.5), torch.device("cpu"))


def test_the_tokenizer_is_copied_whole_and_only_when_it_differs(dataset, tmp_path, small_tokenizer_path):
    from duplex.training.lm import export_model

    model = MoshiLM.random(LMConfig.load(str(dataset / "tiny.json")))
    folder, copy = tmp_path / "out", tmp_path / "out" / "tokenizer.model"
    export_model(model, str(folder), small_tokenizer_path, torch.float32)
    assert copy.read_bytes() == open(small_tokenizer_path, "rb").read()
    os.utime(copy, (1, 1))
    export_model(model, str(folder), small_tokenizer_path, torch.float32)  # every save exports: not rewritten
    assert copy.stat().st_mtime == 1
    copy.write_bytes(b"another tokenizer")
    inode = copy.stat().st_ino
    export_model(model, str(folder), small_tokenizer_path, torch.float32)
    # replaced by a rename (a whole new file), not rewritten in place
    assert copy.read_bytes() == open(small_tokenizer_path, "rb").read() and copy.stat().st_ino != inode


def test_bfloat16_autocast_trains_on_the_cpu_when_asked(dataset, tmp_path, capsys):
    losses = {}
    for mode in ("auto", "bfloat16"):
        train_lm(options(dataset, tmp_path / mode, steps=3, stop_at=2, eval_every=0, autocast=mode),
                 torch.device("cpu"))
        log = [json.loads(line) for line in (tmp_path / mode / "log.jsonl").read_text().splitlines()]
        losses[mode] = log[0]["loss"]
    # the same first batch, computed in bfloat16: close to float32's loss, not equal to it
    assert losses["bfloat16"] != losses["auto"] and math.isclose(losses["bfloat16"], losses["auto"], rel_tol=0.05)
    # resumed in another precision: said
    capsys.readouterr()
    train_lm(options(dataset, tmp_path / "bfloat16", steps=3, eval_every=0, resume=True), torch.device("cpu"))
    assert "note: --autocast auto from here; the run's steps so far used bfloat16" in capsys.readouterr().err
    with pytest.raises(UsageError, match="autocast must be one of"):
        train_lm(options(dataset, tmp_path / "odd", autocast="bf16"), torch.device("cpu"))


def test_init_loads_a_checkpoint_and_continues(dataset, tmp_path):
    train_lm(options(dataset, tmp_path / "first", steps=16), torch.device("cpu"))
    first = [json.loads(line) for line in (tmp_path / "first" / "log.jsonl").read_text().splitlines()]
    # fine-tune the export (config.json found beside it), as one would a Moshi 7B file
    code = main(["train", "lm", "--data", str(dataset), "--out", str(tmp_path / "tuned"), "--init",
                 str(tmp_path / "first" / "model.safetensors"), "--steps", "4", "--batch-size", "2",
                 "--segment-seconds", "2", "--lr", "1e-4", "--eval-every", "0", "--device", "cpu"])
    assert code == 0
    tuned = [json.loads(line) for line in (tmp_path / "tuned" / "log.jsonl").read_text().splitlines()]
    fresh = [json.loads(line) for line in (tmp_path / "first" / "log.jsonl").read_text().splitlines()][:4]
    assert tuned[0]["loss"] < fresh[0]["loss"]  # it starts where the first run ended, not from scratch
    assert tuned[0]["loss"] < first[0]["loss"]
    assert LMConfig.load(str(tmp_path / "tuned" / "config.json")) == LMConfig.load(str(tmp_path / "first" /
                                                                                          "config.json"))


def test_init_from_quantized_weights_is_refused(dataset, tmp_path):
    """Full fine-tuning cannot train int8 codes: a quantized --init is refused in one line, before any step."""
    MoshiLM.random(LMConfig.load(str(dataset / "tiny.json"))).quantize_("int8").save(tmp_path / "q8")
    with pytest.raises(UsageError, match="holds int8 weights, which full fine-tuning cannot train"):
        train_lm(options(dataset, tmp_path / "run", init=str(tmp_path / "q8" / "model.safetensors"),
                         config=None), torch.device("cpu"))


def test_a_preset_is_sized_to_the_tokenizer_and_a_fixed_config_must_hold_it(dataset, tmp_path):
    from duplex.model.tokenizer import TextTokenizer

    pieces = TextTokenizer(dataset / "tokenizer.model").vocab_size
    small = dict(TINY, text_card=pieces - 1)
    (dataset / "narrow.json").write_text(json.dumps(small))
    with pytest.raises(UsageError, match=f"tokenizer has {pieces} pieces"):
        train_lm(options(dataset, tmp_path / "narrow", config=str(dataset / "narrow.json")), torch.device("cpu"))
    assert LMConfig.default().validate() is None


@pytest.mark.slow
def test_the_export_loads_strictly_in_kyutais_implementation_with_the_same_greedy_tokens(dataset, tmp_path):
    loaders = pytest.importorskip("moshi.models.loaders")
    from moshi.models.lm import LMGen

    train_lm(options(dataset, tmp_path / "run", steps=4, eval_every=0), torch.device("cpu"))
    folder = tmp_path / "run"
    config = json.loads((folder / "config.json").read_text())
    theirs = loaders.get_moshi_lm(str(folder / "model.safetensors"), lm_kwargs=config, device="cpu",
                                  dtype=torch.float32)
    ours = MoshiLM.from_checkpoint(folder / "model.safetensors", folder / "config.json", dtype=torch.float32)
    user = torch.randint(0, TINY["card"], (1, 8, 20), generator=torch.Generator().manual_seed(0))
    reference = LMGen(theirs, use_sampling=False)
    expected = []
    with reference.streaming(1), torch.no_grad():
        for s in range(20):
            out = reference.step(user[:, :, s:s + 1])
            if out is not None:
                expected.append(out[0, :, 0])
    gen = ours.generator(1, greedy=True)
    got = [gen.step(user[:, :, s])[0] for s in range(20)][1:]
    assert torch.equal(torch.stack(got), torch.stack(expected))


def test_a_missing_data_folder_is_named_before_the_tokenizer(tmp_path, capsys):
    code = main(["train", "lm", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"),
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "nowhere: no such dataset folder" in err and "tokenizer" not in err


def test_several_datasets_train_as_one(dataset, tmp_path, small_tokenizer_path, capsys):
    # A fine-tune on a new corpus beside its base's (the default model's stage 2): --data twice is both folders'
    # files, their held-out files together; a missing second folder is named before anything runs.
    other = write_dataset(tmp_path / "other", small_tokenizer_path, files=2, seed=1)
    code = main(["train", "lm", "--data", str(dataset), "--data", str(other), "--out", str(tmp_path / "both"),
                 "--config", str(dataset / "tiny.json"), "--steps", "2", "--batch-size", "2", "--segment-seconds",
                 "2", "--eval-every", "2", "--device", "cpu"])
    assert code == 0 and "(5 files, 2 held out, from 2 datasets)" in capsys.readouterr().err
    from duplex.training.lm import _data, data_folders

    both = LMTrainingOptions(**{**vars(options(dataset, tmp_path / "x")), "data": [str(dataset), str(other)]})
    assert data_folders(both) == [dataset, other] and data_folders(options(dataset, tmp_path / "y")) == [dataset]
    from duplex.model.tokenizer import TextTokenizer

    train, heldout, _, _ = _data(both, LMConfig.load(str(dataset / "tiny.json")),
                                 TextTokenizer(small_tokenizer_path), 12.5)
    assert [c.path.parent.parent.name for c in train] == ["data"] * 3 + ["other"] * 2 and len(heldout) == 2
    code = main(["train", "lm", "--data", str(dataset), "--data", str(tmp_path / "nowhere"), "--out",
                 str(tmp_path / "run"), "--device", "cpu"])
    assert code == 2 and "nowhere: no such dataset folder" in capsys.readouterr().err


def test_held_out_losses_are_shown_when_evaluated(dataset, tmp_path, capsys):
    train_lm(options(dataset, tmp_path / "run", steps=4, eval_every=2, save_every=4), torch.device("cpu"))
    err = capsys.readouterr().err
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    for step in (2, 4):
        held = log[step - 1]["heldout"]
        assert f"step {step} held-out: loss {held['loss']:.4f} text {held['text']:.4f}" in err
    assert "step 1 held-out" not in err


def test_ctrl_c_saves_the_step_and_exits_130(dataset, tmp_path, capsys, monkeypatch):
    """The first Ctrl-C stops the run at the next step boundary; the step is saved (resume continues from it)
    and the command exits 130, saying so."""
    next_batch, calls = SegmentSource.next_batch, []

    def ctrl_c_in_step_3(self, batch_size):
        calls.append(batch_size)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return next_batch(self, batch_size)

    monkeypatch.setattr(SegmentSource, "next_batch", ctrl_c_in_step_3)
    code = main(["train", "lm", "--data", str(dataset), "--out", str(tmp_path / "run"), "--config",
                 str(dataset / "tiny.json"), "--steps", "8", "--batch-size", "2", "--segment-seconds", "2",
                 "--eval-every", "0", "--save-every", "4", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 130 and "interrupted: stopped at step 3, saved in" in err
    assert torch.load(tmp_path / "run" / "trainer.pt", weights_only=False)["step"] == 3
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 3


def test_moshi_lm_save_writes_kyutais_layout_into_a_folder_or_a_file(tmp_path):
    from duplex.model.config import lm_config_beside

    model = MoshiLM.random(LMConfig.load(TINY), seed=1)
    path = model.save(tmp_path / "run", torch.bfloat16)
    assert path == str(tmp_path / "run" / "model.safetensors")
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == model.config.to_dict()
    back = MoshiLM.from_checkpoint(path, lm_config_beside(path), dtype=torch.float32).state_dict()
    ours = model.state_dict()
    assert all(torch.equal(back[k], ours[k].to(torch.bfloat16).float()) for k in ours)
    named = model.save(tmp_path / "other" / "tiny.safetensors")  # the model's own dtype
    back = MoshiLM.from_checkpoint(named, tmp_path / "other" / "config.json", dtype=torch.float32).state_dict()
    assert all(torch.equal(back[k], ours[k]) for k in ours)


def test_a_new_best_model_takes_the_place_of_the_last_whole(tmp_path):
    """best/ is replaced whole: a stop while the new one is written leaves the last one as it was (weights and
    step.json of one step), and a stop between the two renames is put right when the run resumes."""
    from duplex.training.lm import BestModel

    def export(folder, text):
        with open(os.path.join(folder, "model.safetensors"), "w") as f:
            f.write(text)

    best = BestModel(str(tmp_path / "best"), resume=False)
    best.offer(100, {"loss": 3.0}, lambda folder: export(folder, "step 100"))
    with pytest.raises(RuntimeError):
        best.offer(200, {"loss": 2.0}, lambda folder: (_ for _ in ()).throw(RuntimeError("stopped while writing")))
    assert (tmp_path / "best" / "model.safetensors").read_text() == "step 100"
    assert json.loads((tmp_path / "best" / "step.json").read_text())["step"] == 100
    best.offer(300, {"loss": 1.5}, lambda folder: export(folder, "step 300"))
    assert (tmp_path / "best" / "model.safetensors").read_text() == "step 300"
    assert not (tmp_path / "best.new").exists() and not (tmp_path / "best.old").exists()
    os.replace(tmp_path / "best", tmp_path / "best.old")  # as if stopped between the renames
    assert BestModel(str(tmp_path / "best"), resume=True).loss == 1.5
    assert (tmp_path / "best" / "model.safetensors").read_text() == "step 300"
