"""demos/default-model/recipe.sh, the shipped default model's recipe, with a stand-in ``duplex`` that records its
calls and writes what each would (no model, no audio): the two stages in order with the options docs/training.md
gives, the second from the first's export and tokenizer, on both corpora; a second run after a stop skips what is done and resumes
the training; a BASE without its tokenizer is refused."""

import json
import os
import shlex
import stat
import subprocess
import textwrap
from pathlib import Path

from helpers import run_with_stand_in

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "demos" / "default-model" / "recipe.sh"

# Writes each command's result where the recipe looks for it; "train lm" stops after its first call when
# STOP_TRAINING names its run (as a Ctrl-C would: the checkpoint is there, the export is not).
STAND_IN = textwrap.dedent("""\
    #!/usr/bin/env bash
    echo "$*" >> "$CALLS"
    arg() { local want=$1; shift; while [ $# -gt 0 ]; do [ "$1" = "$want" ] && { echo "$2"; return; }; shift; done; }
    case "$1 $2" in
      "data synth") mkdir -p "$3" && touch "$3/manifest.jsonl" ;;
      "train tokenizer") touch "$(arg --out "$@")" ;;
      "data encode") ;;
      "train codec")
        out=$(arg --out "$@"); mkdir -p "$out"; touch "$out/trainer.pt" "$out/codec-fp16.safetensors" ;;
      "train lm")
        out=$(arg --out "$@"); mkdir -p "$out"; touch "$out/trainer.pt"
        if [ "${STOP_TRAINING:-}" = "$out" ]; then exit 130; fi
        mkdir -p "$out/best"; touch "$out/best/model.safetensors" "$out/best/tokenizer.model" ;;
    esac
""")


def run(tmp_path, *args, **env):
    return run_with_stand_in(RECIPE, STAND_IN, tmp_path, *args, **env)


def option(call, name):
    return call[call.index(name) + 1]


def options_of(call, name):
    return [call[i + 1] for i, word in enumerate(call) if word == name]


def test_both_stages_in_order_the_second_from_the_firsts_export(tmp_path):
    out = tmp_path / "run"
    result, calls = run(tmp_path, out)
    assert result.returncode == 0, result.stderr
    assert [c[:2] for c in calls] == [["data", "synth"], ["train", "tokenizer"], ["data", "encode"],
                                      ["data", "synth"], ["data", "encode"], ["train", "lm"], ["train", "lm"]]
    synth1, _, _, synth2, encode2, train1, train2 = calls
    assert synth1[2] == str(out / "corpus1") and option(synth1, "--seed") == "0" and "--mix" not in synth1
    assert synth2[2] == str(out / "corpus2") and option(synth2, "--mix") == "v2" and option(synth2, "--seed") == "28"
    assert "--init" not in train1 and "--resume" not in train1 and option(train1, "--steps") == "4000"
    assert option(train2, "--init") == str(out / "lm1" / "best" / "model.safetensors")
    # stage 2 trains on both corpora (v2 alone forgot v1's lessons), tokenized with the first model's tokenizer
    assert options_of(train2, "--data") == [str(out / "corpus1"), str(out / "corpus2")]
    assert option(train2, "--out") == str(out / "lm2") and options_of(train1, "--data") == [str(out / "corpus1")]
    assert option(train2, "--tokenizer") == str(out / "lm1" / "best" / "tokenizer.model")
    assert option(encode2, "--checkpoint").endswith("codec/weights/duplex-codec-small.safetensors")
    assert "lm2/best" in result.stdout


def test_a_second_run_after_a_stop_skips_what_is_done_and_resumes(tmp_path):
    out = tmp_path / "run"
    result, calls = run(tmp_path, out, STOP_TRAINING=str(out / "lm2"))
    assert result.returncode != 0 and calls[-1][:2] == ["train", "lm"]
    result, calls = run(tmp_path, out)
    assert result.returncode == 0, result.stderr
    # no synthesis again; encode runs (it skips encoded files itself); stage 1's run resumes (its checkpoint is
    # there: resuming a finished run ends at once), and so does the stopped one
    assert [c[:2] for c in calls] == [["data", "encode"], ["data", "encode"], ["train", "lm"], ["train", "lm"]]
    assert "--resume" in calls[2] and "--resume" in calls[3]


def test_until_data_makes_both_corpora_and_trains_nothing_and_encode_0_skips_the_codec(tmp_path):
    result, calls = run(tmp_path, tmp_path / "run", UNTIL="data")
    assert result.returncode == 0, result.stderr
    assert [c[:2] for c in calls] == [["data", "synth"], ["train", "tokenizer"], ["data", "encode"],
                                      ["data", "synth"], ["data", "encode"]]
    result, calls = run(tmp_path, tmp_path / "run", ENCODE="0")  # as on the GPU machine (gpu.sh)
    assert result.returncode == 0, result.stderr
    assert [c[:2] for c in calls] == [["train", "lm"], ["train", "lm"]]


def test_a_base_model_skips_stage_one_and_needs_its_tokenizer(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "duplex-lm.safetensors").touch()
    (base / "duplex-tokenizer.model").write_text("pieces")
    result, calls = run(tmp_path, tmp_path / "run", BASE=str(base / "duplex-lm.safetensors"))
    assert result.returncode == 2 and "BASE_TOKENIZER" in result.stderr and calls == []
    result, calls = run(tmp_path, tmp_path / "run", BASE=str(base / "duplex-lm.safetensors"),
                        BASE_TOKENIZER=str(base / "duplex-tokenizer.model"))
    assert result.returncode == 0, result.stderr
    # both corpora (stage 2 trains on both), no tokenizer trained, stage 2 only, from the base and its tokenizer
    assert [c[:2] for c in calls] == [["data", "synth"], ["data", "encode"], ["data", "synth"], ["data", "encode"],
                                      ["train", "lm"]]
    assert option(calls[-1], "--init") == str(base / "duplex-lm.safetensors")
    assert option(calls[-1], "--tokenizer") == str(base / "duplex-tokenizer.model")
    assert options_of(calls[-1], "--data") == [str(tmp_path / "run" / c) for c in ("corpus1", "corpus2")]


def test_stage_three_alone_makes_its_corpora_and_trains_the_larger_model_with_stage_ones_tokenizer(tmp_path):
    out = tmp_path / "run"
    result, calls = run(tmp_path, out, STAGES="3")
    assert result.returncode == 0, result.stderr
    assert [c[:2] for c in calls] == [["data", "synth"], ["train", "tokenizer"], ["data", "encode"],
                                      ["data", "synth"], ["data", "encode"], ["data", "synth"], ["data", "encode"],
                                      ["train", "lm"]]
    dry, more, train = calls[3], calls[5], calls[-1]
    assert dry[2] == str(out / "corpus2-dry") and option(dry, "--seed") == "28" and "--no-user-room" in dry
    assert more[2] == str(out / "corpus3") and option(more, "--seed") == "29" and "--no-user-room" not in more
    assert option(dry, "--user-noise-snr") == option(more, "--user-noise-snr") == "25"
    assert options_of(train, "--data") == [str(out / c) for c in ("corpus1", "corpus2-dry", "corpus3")]
    assert option(train, "--out") == str(out / "lm3") and option(train, "--steps") == "12000" and "--init" not in train
    assert option(train, "--tokenizer") == str(out / "corpus1" / "tokenizer.model")
    assert option(train, "--autocast") == "bfloat16" and "lm3/best" in result.stdout
    # its shape: the shipped model's config with the sizes changed (a shape Kyutai's LMModel builds)
    from duplex.model.config import LMConfig
    shipped, larger = (json.loads(p.read_text()) for p in (ROOT / "duplex" / "weights" / "duplex-lm.json",
                                                           Path(option(train, "--config"))))
    assert {k for k in larger if larger[k] != shipped[k]} == {"dim", "num_heads", "depformer_dim",
                                                               "depformer_num_heads", "depformer_dim_feedforward"}
    assert LMConfig.load(option(train, "--config")).dim == 384
    result, calls = run(tmp_path, tmp_path / "other", STAGES="1 4")
    assert result.returncode == 2 and "4 is not a stage (codec, 1, 2, 3)" in result.stderr and calls == []


def test_the_codec_stage_makes_the_shipped_codec_from_nothing_and_stage_one_encodes_with_it(tmp_path):
    """The first codec, then its transcript distillation from that codec's export on a corpus of another seed; the
    stages after it encode with the distilled codec; run again, both codec runs resume (nothing is made twice)."""
    out = tmp_path / "run"
    result, calls = run(tmp_path, out, STAGES="codec 1")
    assert result.returncode == 0, result.stderr
    assert [c[:2] for c in calls] == [["data", "synth"], ["train", "codec"], ["data", "synth"], ["train", "codec"],
                                      ["data", "synth"], ["train", "tokenizer"], ["data", "encode"], ["train", "lm"]]
    synth, first, words_synth, words, _, _, encode, _ = calls
    assert synth[2] == str(out / "codec-corpus") and option(synth, "--seed") == "0" and option(synth, "--hours") == "3"
    assert option(first, "--data") == str(out / "codec-corpus") and option(first, "--steps") == "6500"
    assert "--init" not in first and "--transcript-weight" not in first
    assert words_synth[2] == str(out / "codec-words-corpus") and option(words_synth, "--seed") == "41"
    assert option(words, "--init") == str(out / "codec" / "codec-fp16.safetensors")
    assert option(words, "--transcript-weight") == "0.25" and option(words, "--steps") == "1200"
    assert option(words, "--data") == str(out / "codec-words-corpus")
    assert option(encode, "--checkpoint") == str(out / "codec-words" / "codec-fp16.safetensors")
    assert "lm1/best" in result.stdout
    assert "codec/weights/duplex-codec-small.safetensors" in result.stdout  # both to ship, together
    for stages in ("codec", "codec ", "codec codec"):
        result, calls = run(tmp_path, out, STAGES=stages)
        assert result.returncode == 0, result.stderr
        assert [c[:2] for c in calls] == [["train", "codec"], ["train", "codec"]]
        assert all("--resume" in c for c in calls)
        assert "codec/weights/duplex-codec-small.safetensors" in result.stdout and "duplex-lm" not in result.stdout


GPU = ROOT / "demos" / "default-model" / "gpu.sh"


def fake_corpora(run_dir, encoded=True, corpora=("corpus1", "corpus2")):
    for corpus in corpora:
        folder = run_dir / corpus
        (folder / "train").mkdir(parents=True)
        (folder / "heldout").mkdir()
        for name in ("manifest.jsonl", "train.jsonl", "heldout.jsonl", "tokenizer.model"):
            (folder / name).write_text(name)
        for split in ("train", "heldout"):
            (folder / split / "c1.wav").write_bytes(b"\0" * 1000)
            (folder / split / "c1.json").write_text("{}")
            if encoded:
                (folder / split / "c1.codes.safetensors").write_bytes(b"codes")


def test_the_gpu_pack_holds_codes_and_alignments_not_audio_and_the_gpu_run_trains_both_stages(tmp_path):
    run_dir, pack = tmp_path / "run", tmp_path / "pack" / "corpora.tar.xz"
    fake_corpora(run_dir, encoded=False)
    for n in range(2, 12):  # many conversations without codes are refused in words too (not cut short)
        (run_dir / "corpus1" / "train" / f"c{n}.wav").write_bytes(b"\0")
    result = subprocess.run(["bash", str(GPU), "--pack", str(run_dir)], env={**os.environ, "PACK": str(pack)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "not encoded" in result.stderr and "12 conversations" in result.stderr
    assert not pack.exists()
    for n in range(2, 12):
        (run_dir / "corpus1" / "train" / f"c{n}.wav").unlink()
    for codes in ("train", "heldout"):
        for corpus in ("corpus1", "corpus2"):
            (run_dir / corpus / codes / "c1.codes.safetensors").write_bytes(b"codes")
    result = subprocess.run(["bash", str(GPU), "--pack", str(run_dir)], env={**os.environ, "PACK": str(pack)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    names = subprocess.run(["tar", "-tJf", str(pack)], capture_output=True, text=True, check=True).stdout.split()
    assert "corpus2/train/c1.codes.safetensors" in names and "corpus1/heldout/c1.json" in names
    assert "corpus1/tokenizer.model" in names and "corpus2/manifest.jsonl" in names
    assert not [n for n in names if n.endswith(".wav")]

    # there: unpacked, both trainings (no synthesis, no encoding), the exports copied to OUT
    stand_in = tmp_path / "duplex"
    stand_in.write_text(STAND_IN)
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR)
    out, calls = tmp_path / "out", tmp_path / "calls.txt"
    result = subprocess.run(["bash", str(GPU)], capture_output=True, text=True, timeout=60, env={
        **os.environ, "PACK": str(pack), "DUPLEX": str(stand_in), "CALLS": str(calls), "OUT": str(out),
        "RUN": str(tmp_path / "there")})
    assert result.returncode == 0, result.stderr
    made = [shlex.split(line) for line in calls.read_text().splitlines()]
    assert [c[:2] for c in made] == [["train", "lm"], ["train", "lm"]]
    assert option(made[0], "--device") == "cuda"
    # what comes back: one tar in parts the device tool returns (at most 8 files of 16 MiB), unpacked here
    assert sorted(p.name for p in out.iterdir()) == ["runs.tar.00"]
    result = subprocess.run(["bash", str(GPU), "--unpack", str(out), str(tmp_path / "back")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "back" / "lm2" / "best" / "model.safetensors").exists()
    assert not (tmp_path / "back" / "lm1" / "best").exists()
    result = subprocess.run(["bash", str(GPU), "--unpack", str(tmp_path / "nothing"), str(tmp_path / "back")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "no runs.tar.NN parts" in result.stderr


def test_stage_three_on_a_gpu_packs_its_three_corpora_and_the_tokenizer_and_brings_back_its_export(tmp_path):
    """STAGES=3: the pack holds corpus1, corpus2-dry and corpus3 (not stage 2's corpus2), the stages and the
    tokenizer stage 3 trains with (the machine has no duplex/weights); there, one training run, lm3, with that
    tokenizer; its export comes back xz-compressed (67.5 MB would not fit the device tool's 64 MiB) and unpacks."""
    run_dir, pack = tmp_path / "run", tmp_path / "pack" / "corpora.tar.xz"
    fake_corpora(run_dir, corpora=("corpus1", "corpus2", "corpus2-dry", "corpus3"))
    (run_dir / "corpus1" / "tokenizer.model").unlink()
    env = {**os.environ, "PACK": str(pack), "STAGES": "3"}
    result = subprocess.run(["bash", str(GPU), "--pack", str(run_dir)], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "BASE_TOKENIZER" in result.stderr and not pack.exists()
    tokenizer = tmp_path / "shipped-tokenizer.model"
    tokenizer.write_text("the shipped tokenizer")
    result = subprocess.run(["bash", str(GPU), "--pack", "run"], env={**env, "BASE_TOKENIZER": str(tokenizer)},
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)  # a relative RUN too
    assert result.returncode == 0, result.stderr
    names = subprocess.run(["tar", "-tJf", str(pack)], capture_output=True, text=True, check=True).stdout.split()
    assert {"stages", "base-tokenizer.model", "corpus3/train/c1.codes.safetensors",
            "corpus2-dry/heldout/c1.json", "corpus1/manifest.jsonl"} <= set(names)
    assert not [n for n in names if n.startswith("corpus2/") or n.endswith(".wav")]

    there, out, calls = tmp_path / "there", tmp_path / "out", tmp_path / "calls.txt"
    stand_in = tmp_path / "duplex"
    stand_in.write_text(STAND_IN)
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR)
    result = subprocess.run(["bash", str(GPU)], capture_output=True, text=True, timeout=60, env={
        **os.environ, "PACK": str(pack), "DUPLEX": str(stand_in), "CALLS": str(calls), "OUT": str(out),
        "RUN": str(there)})
    assert result.returncode == 0, result.stderr
    made = [shlex.split(line) for line in calls.read_text().splitlines()]
    assert [c[:2] for c in made] == [["train", "lm"]]  # no tokenizer trained: the shipped one travelled
    assert option(made[0], "--out") == str(there / "lm3") and option(made[0], "--device") == "cuda"
    assert option(made[0], "--tokenizer") == str(there / "base-tokenizer.model")
    back = tmp_path / "back"
    result = subprocess.run(["bash", str(GPU), "--unpack", str(out), str(back)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert (back / "lm3" / "best" / "model.safetensors").exists()
    with open(out / "runs.tar.00", "rb") as f:
        assert f.read(6) == b"\xfd7zXZ\x00"

    # a second call on the still-warm machine (RUN kept), stages 1 and 2: its own export comes back, not lm3's
    result = subprocess.run(["bash", str(GPU), "--pack", str(run_dir)], env={**os.environ, "PACK": str(pack)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out2 = tmp_path / "out2"
    result = subprocess.run(["bash", str(GPU)], capture_output=True, text=True, timeout=60, env={
        **os.environ, "PACK": str(pack), "DUPLEX": str(stand_in), "CALLS": str(calls), "OUT": str(out2),
        "RUN": str(there)})
    assert result.returncode == 0, result.stderr
    again = tmp_path / "again"
    subprocess.run(["bash", str(GPU), "--unpack", str(out2), str(again)], check=True, capture_output=True, timeout=60)
    assert (again / "lm2" / "best").exists() and not (again / "lm3").exists()
    # a reply with a part missing is refused in words, not unpacked as garbage
    (out2 / "runs.tar.02").write_bytes(b"x")
    result = subprocess.run(["bash", str(GPU), "--unpack", str(out2), str(tmp_path / "gap")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "runs.tar.01 is missing" in result.stderr


def test_the_gpu_training_stops_at_its_limit_and_what_it_made_still_comes_back(tmp_path):
    """TRAIN_LIMIT: the training there is stopped as a Ctrl-C stops it, in time for its best export so far to be
    packed and returned within the device call."""
    run_dir, pack = tmp_path / "run", tmp_path / "pack" / "corpora.tar.xz"
    fake_corpora(run_dir)
    result = subprocess.run(["bash", str(GPU), "--pack", str(run_dir)], env={**os.environ, "PACK": str(pack)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    slow = STAND_IN.replace('mkdir -p "$out/best"; touch "$out/best/model.safetensors" "$out/best/tokenizer.model" ;;',
                            'mkdir -p "$out/best"; touch "$out/best/model.safetensors"; sleep 30 ;;')
    assert slow != STAND_IN
    stand_in = tmp_path / "duplex"
    stand_in.write_text(slow)
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR)
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(GPU)], capture_output=True, text=True, timeout=60, env={
        **os.environ, "PACK": str(pack), "DUPLEX": str(stand_in), "CALLS": str(tmp_path / "calls.txt"),
        "OUT": str(out), "RUN": str(tmp_path / "there"), "TRAIN_LIMIT": "2"})
    assert result.returncode == 3 and "stopped at TRAIN_LIMIT=2 s" in result.stdout  # not 124: the device tool's
    result = subprocess.run(["bash", str(GPU), "--unpack", str(out), str(tmp_path / "back")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "back" / "lm1" / "best" / "model.safetensors").exists()  # the last stage that ran
