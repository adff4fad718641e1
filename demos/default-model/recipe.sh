#!/usr/bin/env bash
# The default model's recipe, from nothing: stages of `duplex` commands (docs/training.md, "The default model").
#
#   demos/default-model/recipe.sh [OUT]     (default OUT: default-model-run)
#
# Stage 1 is the shipped default model's recipe (a v1 corpus, 20 h; 4000 steps from random weights, on the codes of
# the shipped codec): RUN/lm1/best is the shipped model. The shipped codec is the codec stage's (STAGES="codec 1",
# from nothing: the first codec, 6500 steps on a 3 h corpus, then 1200 steps of transcript distillation on another
# 3 h corpus, so that its first codebook carries the words: docs/training.md, "The second default model ships"); the
# stages after it then encode with it. Stage 2 is a candidate successor (issue 28): it goes on from stage 1's best
# export on a corpus made for turn-taking (the v2 mix, 16 h) together with stage 1's corpus (4000 steps), a fine-tune, so
# that it gets the first model's compute as well as its own. Its first run (v2 alone) forgot what v1 taught and was
# not shipped (docs/training.md, "Fine-tuned candidates on the v2 mix"). Each step is skipped when its result is there, and a stopped training run resumes, so running
# the script again after a stop (a Ctrl-C, a session that ended) goes on where it was. Same seeds, same corpora,
# byte for byte; the training is deterministic for one machine and thread count.
#
# Stage 3 (STAGES=3, or "1 2 3") is a larger model from random weights (temporal 384 x 6, depth 192 x 1: lm3.json
# beside this script, 33.8 M parameters) on 62.9 h: stage 1's corpus and two more v2 corpora (the noise 25-45 dB
# under the speech; one without the room, one with it), 12000 steps in bfloat16 autocast, stage 1's tokenizer
# (docs/training.md, "Stage 3: a larger model"); it needs stage 1's tokenizer only, not its training.
#
# On the 2-core CPU: the codec stage about 2 h (synthesis 2 x 15 s, training 99 + 11 min), stage 1 about 1 h
# (synthesis 2 min, encoding 15 min, training 42 min), stage 2 about 1 h 25 min (synthesis 16 min, encoding 17 min,
# training 50 min), stage 3 about 4 h (synthesis 18 + 25 min, encoding 21 + 30
# min, training about 2.7 h): a run over several sessions. On a GPU (DEVICE=cuda) the training steps should take
# minutes (not measured yet); gpu.sh beside this script runs stages 1-3 on a lent GPU machine (the codec stage runs
# here: UNTIL=data with STAGES="codec 1" trains the codec on this machine first, about 2 h).
#
# Environment:
#   DUPLEX=duplex       the command (or: DUPLEX="python -m duplex" with the repository on PYTHONPATH)
#   DEVICE=cpu          where the codec encodes and the LM trains (cpu, cuda, cuda:N)
#   THREADS=0           torch CPU threads for training (0: torch's choice)
#   ENCODE=1            0: the corpora's codes were made elsewhere (demos/default-model/gpu.sh carries them, not the
#                       WAVs, to a GPU machine); the encoding steps are skipped
#   UNTIL=              data: stop once both corpora are made and encoded (to train elsewhere: gpu.sh)
#   BASE=               a model file to start stage 2 from instead of running stage 1 (the first default model's
#                       duplex-lm.safetensors, its duplex-lm.json beside it), with
#   BASE_TOKENIZER=     its tokenizer (the first default model's duplex-tokenizer.model; stage 3 uses it too)
#   STAGES="1 2"        which stages run: codec, 1, 2 and 3 in any set (stage 2 runs stage 1 first unless BASE is
#                       given)
#   CODEC=              the codec file to encode with (default: the codec stage's RUN/codec-words/codec-fp16.safetensors
#                       when it runs, else the shipped codec/weights/duplex-codec-small.safetensors, which is that file)
set -euo pipefail

OUT=${1:-default-model-run}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DUPLEX=${DUPLEX:-duplex}
DEVICE=${DEVICE:-cpu}
THREADS=${THREADS:-0}
ENCODE=${ENCODE:-1}
BASE=${BASE:-}
BASE_TOKENIZER=${BASE_TOKENIZER:-}
mkdir -p "$OUT"

# A corpus: synthesised once (a half-made one, from a stop midway, is removed by `data synth` itself), then its
# codes (`data encode` skips the files it already encoded).
corpus() {  # corpus DIR SYNTH-OPTIONS...
    local dir=$1; shift
    [ -f "$dir/manifest.jsonl" ] || $DUPLEX data synth "$dir" "$@"
}

encode() {  # encode DIR
    [ "$ENCODE" = 0 ] || $DUPLEX data encode "$1" --checkpoint "$CODEC" --device "$DEVICE"
}

# A training run (WHAT: lm or codec): started, or resumed where a checkpoint is, with the same options (a run goes on
# as planned); done when its log has its last step.
run_training() {  # run_training WHAT RUN STEPS OPTIONS...
    local what=$1 run=$2 steps=$3; shift 3
    local resume=()
    [ -f "$run/trainer.pt" ] && resume=(--resume)
    $DUPLEX train "$what" --out "$run" --steps "$steps" --device "$DEVICE" --threads "$THREADS" \
        ${resume[@]+"${resume[@]}"} "$@"
}
train() { run_training lm "$@"; }  # train RUN STEPS OPTIONS...
train_codec() { run_training codec "$@"; }  # train_codec RUN STEPS OPTIONS...

STAGES=" ${STAGES:-1 2} "
for stage in $STAGES; do
    case "$stage" in codec|1|2|3) ;; *) echo "error: STAGES: $stage is not a stage (codec, 1, 2, 3)" >&2; exit 2 ;; esac
done
wants() { [[ "$STAGES" == *" $1 "* ]]; }

# The codec stage: the shipped codec from nothing. The first codec (README, "Training your own codec"), then its
# fine-tune with the transcript head (docs/training.md: a first codebook that carries the words), on a corpus of
# another seed.
if wants codec; then
    corpus "$OUT/codec-corpus" --hours 3 --seed 0
    train_codec "$OUT/codec" 6500 --data "$OUT/codec-corpus" --lr 3e-4
    corpus "$OUT/codec-words-corpus" --hours 3 --seed 41 --heldout-every 8
    train_codec "$OUT/codec-words" 1200 --data "$OUT/codec-words-corpus" --init "$OUT/codec/codec-fp16.safetensors" \
        --transcript-weight 0.25 --lr 1e-4 --lr-schedule constant
    CODEC=${CODEC:-"$OUT/codec-words/codec-fp16.safetensors"}
fi
# the codec the corpora are encoded with: the shipped one (the codec stage's), which the default model is trained on
CODEC=${CODEC:-"$ROOT/codec/weights/duplex-codec-small.safetensors"}
if [ -n "$BASE" ] && [ -z "$BASE_TOKENIZER" ]; then
    echo "error: BASE=$BASE needs BASE_TOKENIZER= (the tokenizer it was trained with)" >&2
    exit 2
fi

# The data of both stages first (UNTIL=data stops there: demos/default-model/gpu.sh then carries the codes to a GPU).
# Stage 1's corpus, v1: question-answer exchanges, pauses, interruptions, backchannels (and, for stage 1, its
# tokenizer). Stage 2 trains on it too, so it is made with BASE as well.
if wants 1 || wants 2 || wants 3; then
    corpus "$OUT/corpus1" --hours 20 --seed 0
    # its tokenizer: stage 1's (and so stage 2's without BASE), and stage 3's unless BASE_TOKENIZER gives it
    if { { [ -z "$BASE" ] && { wants 1 || wants 2; }; } || { wants 3 && [ -z "$BASE_TOKENIZER" ]; }; } \
            && [ ! -f "$OUT/corpus1/tokenizer.model" ]; then
        $DUPLEX train tokenizer --data "$OUT/corpus1" --out "$OUT/corpus1/tokenizer.model" --vocab-size 1000
    fi
    encode "$OUT/corpus1"
fi
# Stage 2's corpus, the v2 mix: greetings, answers as sentences, pauses cued by words and prosody, barge-ins anywhere,
# the user's backchannels, many voices, room and noise on the user's channel.
if wants 2; then
    corpus "$OUT/corpus2" --hours 16 --seed 28 --mix v2 --heldout-every 40
    encode "$OUT/corpus2"
fi
# Stage 3's two more: the v2 mix with the background noise 25-45 dB under the speech (10-40 talked over the user
# longer, docs/training.md), the room left out of one (seed 28: stage 2's conversations) and kept in the other
# (seed 29, new conversations).
if wants 3; then
    corpus "$OUT/corpus2-dry" --hours 16 --seed 28 --mix v2 --heldout-every 40 --user-noise-snr 25 45 --no-user-room
    encode "$OUT/corpus2-dry"
    corpus "$OUT/corpus3" --hours 24 --seed 29 --mix v2 --heldout-every 40 --user-noise-snr 25 45
    encode "$OUT/corpus3"
fi
[ "${UNTIL:-}" = data ] && exit 0

# Stage 1: the first default model, from random weights.
if [ -z "$BASE" ] && { wants 1 || wants 2; }; then
    train "$OUT/lm1" 4000 --data "$OUT/corpus1" --batch-size 8 --segment-seconds 10 --lr 8e-4 --eval-every 250
    BASE="$OUT/lm1/best/model.safetensors"
    BASE_TOKENIZER="$OUT/lm1/best/tokenizer.model"
fi
# Stage 2: on from stage 1's best export, on both corpora as one (v2 alone made it forget what v1 taught: yielding
# to a barge-in on clean speech; docs/training.md), the text tokenized with stage 1's tokenizer (its text
# embeddings keep their meaning: every v2 word is spelt with its pieces).
if wants 2; then
    train "$OUT/lm2" 4000 --data "$OUT/corpus1" --data "$OUT/corpus2" --tokenizer "$BASE_TOKENIZER" --init "$BASE" \
        --batch-size 8 --segment-seconds 10 --lr 5e-4 --eval-every 250
fi
# Stage 3: the larger model, from random weights on the three corpora, with stage 1's tokenizer (the one its corpus
# trained, which stage 1's export carries), lr 6e-4 (stage 1's 8e-4 lowered for the 1.5x width), in bfloat16 autocast.
if wants 3; then
    train "$OUT/lm3" 12000 --data "$OUT/corpus1" --data "$OUT/corpus2-dry" --data "$OUT/corpus3" \
        --tokenizer "${BASE_TOKENIZER:-$OUT/corpus1/tokenizer.model}" --config "$ROOT/demos/default-model/lm3.json" \
        --batch-size 8 --segment-seconds 10 --lr 6e-4 --eval-every 500 --autocast bfloat16
fi

if wants codec; then
    echo "the codec: $CODEC (its config beside it, .json); to ship it (with an LM trained on its codes: stage 1):"
    echo "  cp $CODEC $ROOT/codec/weights/duplex-codec-small.safetensors"
    echo "  cp ${CODEC%.safetensors}.json $ROOT/codec/weights/duplex-codec-small.json"
fi
wants 1 || wants 2 || wants 3 || exit 0
last=$(for stage in $STAGES; do echo "$stage"; done | grep -v codec | sort | tail -1)
echo "the models: $OUT/lmN/best for the stages run ($STAGES), each model.safetensors, config.json and"
echo "tokenizer.model; to ship stage $last's (once it measures better: docs/training.md; with the codec its corpora"
echo "were encoded with, $CODEC):"
echo "  cp $OUT/lm$last/best/model.safetensors $ROOT/duplex/weights/duplex-lm.safetensors"
echo "  cp $OUT/lm$last/best/config.json $ROOT/duplex/weights/duplex-lm.json"
echo "  cp $OUT/lm$last/best/tokenizer.model $ROOT/duplex/weights/duplex-tokenizer.model"
