"""``duplex bench teacher-forced``: an LM's predictions of a corpus's reply words given the true past."""

import json
from types import SimpleNamespace

import pytest
import torch

from codec.io.checkpoint import write_safetensors
from duplex.bench.teacher_forced import NUMBER_WORDS, format_summary, reply_key, teacher_forced
from duplex.cli import main
from duplex.data.encode import STEREO_CODES_FORMAT, codes_path
from duplex.data.lm_dataset import DatasetError
from duplex.model.config import LMConfig
from duplex.model.lm import MoshiLM
from duplex.model.tokenizer import TextTokenizer

TINY = {"dim": 32, "num_heads": 2, "num_layers": 2, "context": 40, "text_card": 64, "card": 32,
        "depformer_dim": 32, "depformer_num_heads": 2, "depformer_num_layers": 1, "depformer_dim_feedforward": 64}


def _words(text, start, step=0.4):
    return [{"word": w, "start": start + step * i, "end": start + step * i + 0.3} for i, w in enumerate(text.split())]


def _turn(channel, text, start, **extra):
    words = _words(text, start)
    return {"channel": channel, "start": words[0]["start"], "end": words[-1]["end"], "text": text, "words": words,
            **extra}


@pytest.fixture
def corpus(tmp_path):
    """One 8 s conversation in the layout of 'duplex data synth' + 'duplex data encode': a question, an
    arithmetic reply with its key, a fact reply with its key; the codes random."""
    folder = tmp_path / "corpus"
    (folder / "heldout").mkdir(parents=True)
    turns = [_turn("user", "what is two plus two", 0.0),
             _turn("assistant", "two plus two is four", 2.0, topic="arithmetic", key=["two", "is", "four"]),
             _turn("assistant", "the sky is blue", 4.5, topic="facts", key=["blue"])]
    alignments = [[w["word"], [w["start"], w["end"]], "SPEAKER_MAIN"] for t in turns[1:] for w in t["words"]]
    wav = folder / "heldout" / "c0.wav"
    wav.with_suffix(".json").write_text(json.dumps({
        "turns": turns, "alignments": alignments,
        "scenarios": [{"type": "smooth", "topic": "arithmetic", "start": 0.0, "end": 4.4}]}))
    write_safetensors({"codes": torch.randint(0, 32, (2, 8, 100), dtype=torch.int16)}, codes_path(wav),
                      metadata={"format": STEREO_CODES_FORMAT, "codec": "test", "frame_rate": "12.5"})
    (folder / "heldout.jsonl").write_text(json.dumps({"path": "heldout/c0.wav", "duration": 8.0}) + "\n")
    return folder


class Oracle:
    """A stand-in LM whose text logits put everything on ``predict(true_text)``."""

    def __init__(self, predict):
        self.config, self.training, self.predict = LMConfig.load(TINY), True, predict

    def eval(self):
        self.training = False

    def train(self, mode=True):
        self.training = mode

    def forward_train(self, codes):
        logits = torch.nn.functional.one_hot(self.predict(codes[:, :1].clamp(min=0)), 64).float()
        return SimpleNamespace(text_logits=logits)


def test_reply_keys_are_the_turns_own_or_an_arithmetic_replys_result():
    turn = {"words": _words("well six plus one equals seven", 0), "key": ["one", "is", "seven"], "topic": "arithmetic"}
    assert reply_key(turn) == [3, 4, 5]  # "equals" said for the key's "is"
    assert reply_key({"words": _words("the sky is blue", 0), "key": ["blue"], "topic": "facts"}) == [3]
    assert reply_key({"words": _words("the sky is green", 0), "key": ["blue"], "topic": "facts"}) is None
    # a corpus made before keys were kept: the last number, "is" and the result
    assert reply_key({"words": _words("twenty seven plus three is thirty", 0)}) == [3, 4, 5]
    assert reply_key({"words": _words("the sky is blue", 0)}) is None
    # "and" ("one hundred and five") is no number of its own: a reply opening with it has not restated the sum
    assert "and" not in NUMBER_WORDS and {"hundred", "thirty", "zero"} <= NUMBER_WORDS
    assert reply_key({"words": _words("hello there", 0), "topic": "greeting", "key": None}) is None


def test_a_model_that_predicts_the_true_text_gets_every_key_and_one_that_pads_none(corpus, small_tokenizer_path):
    tokenize = TextTokenizer(small_tokenizer_path).encode
    model = Oracle(lambda text: text)
    report = teacher_forced(model, tokenize, corpus / "heldout.jsonl")
    assert model.training  # put back as it was
    assert report["files"] == 1 and report["words"]["rate"] == 1.0 and report["words"]["total"] > 8
    assert report["keys"]["arithmetic"] == {"right": 1, "total": 1, "not_in_stream": 0, "rate": 1.0}
    assert report["keys"]["facts"]["rate"] == 1.0 and report["heard"] == {"right": 1, "total": 1, "rate": 1.0}
    padding = teacher_forced(Oracle(lambda text: torch.full_like(text, 3)), tokenize, corpus / "heldout.jsonl")
    assert padding["words"]["rate"] == 0.0 and padding["keys"]["arithmetic"]["right"] == 0
    assert "keys right 0% (0/1 replies)" in format_summary(padding)
    (corpus / "heldout" / "c0.json").write_text(json.dumps({"alignments": []}))  # a Kyutai dataset, no turns
    with pytest.raises(DatasetError, match="c0.json: not a corpus file of 'duplex data synth'"):
        teacher_forced(model, tokenize, corpus / "heldout.jsonl")


def test_the_command_measures_a_checkpoint_and_names_a_missing_split(corpus, small_tokenizer_path, tmp_path, capsys):
    lm = tmp_path / "lm.safetensors"
    torch.manual_seed(0)
    MoshiLM(TINY).save(lm)  # with config.json beside it
    report = tmp_path / "report.json"
    assert main(["bench", "teacher-forced", "--data", str(corpus), "--lm", str(lm), "--tokenizer",
                 str(small_tokenizer_path), "--device", "cpu", "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["files"] == 1 and 0 <= data["words"]["rate"] <= 1 and set(data["keys"]) == {"arithmetic", "facts"}
    assert "1 conversations, teacher-forced" in capsys.readouterr().out
    assert main(["bench", "teacher-forced", "--data", str(corpus), "--split", "train", "--lm", str(lm)]) == 2
    assert "train.jsonl: no such manifest" in capsys.readouterr().err


def test_the_listening_experiment_fine_tunes_and_exports_a_plain_lm(corpus, small_tokenizer_path, tmp_path, capsys):
    # demos/default-model/listening.py: two steps with the user transcription head, then the export is measured
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "listening", Path(__file__).parents[2] / "demos" / "default-model" / "listening.py")
    listening = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(listening)
    (corpus / "train.jsonl").write_text((corpus / "heldout.jsonl").read_text())
    init = tmp_path / "init"
    MoshiLM(TINY).save(init)
    (init / "tokenizer.model").write_bytes(small_tokenizer_path.read_bytes())
    assert [w for w, _, _ in listening.user_words(corpus / "heldout" / "c0.wav")] == "what is two plus two".split()
    listening.main(["--init", str(init), "--data", str(corpus), "--out", str(tmp_path / "out"), "--steps", "2",
                    "--batch-size", "2", "--segment-seconds", "4"])
    log = capsys.readouterr().out
    assert "step 2: loss" in log and "user transcription 0.0000" not in log
    assert main(["bench", "teacher-forced", "--data", str(corpus), "--lm", str(tmp_path / "out" / "model.safetensors"),
                 "--device", "cpu"]) == 0


def test_the_codes_probe_reads_user_turns_and_reports_word_error_rates(corpus, tmp_path, capsys):
    # demos/default-model/probe.py: a CTC reader of the user's turns from the codes (issue 28's diagnosis)
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "probe", Path(__file__).parents[2] / "demos" / "default-model" / "probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    (corpus / "train.jsonl").write_text((corpus / "heldout.jsonl").read_text())
    turns = probe.user_turns(corpus / "train.jsonl", "codes1")
    assert [words for _, words in turns] == ["what is two plus two".split()] and turns[0][0].shape[0] == 1
    assert probe.edit_distance("a b c".split(), "a c d".split()) == 2
    report = tmp_path / "probe.json"
    probe.main(["--data", str(corpus), "--test", str(corpus), "--features", "codes", "codes1", "--steps", "2",
                "--batch-size", "2", "--dim", "8", "--acoustic-dropout", "0.5", "--json", str(report)])
    runs = json.loads(report.read_text())["runs"]
    assert [r["feature"] for r in runs] == ["codes", "codes1"]
    assert all(0 <= r[split]["wer"] and r[split]["number_words"] == 2 for r in runs
               for split in ("heldout", "test", "train_sample"))
    assert "codes1, heldout: WER" in capsys.readouterr().out
