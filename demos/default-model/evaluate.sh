#!/usr/bin/env bash
# A default-model candidate's turn-taking figures, measured as docs/training.md measures every candidate: three
# sets (a v1-mix and a v2-mix set cut from corpora of seeds no model was trained on, with the held-out user voice,
# and the shipped set demos/fdb-synthetic), each run with sampling seeds 0, 1 and 2 (on 20 samples a seed alone
# moves a TOR by up to 0.3), and FDB's real examples with seed 0 when given; then the table of means.
#
#   demos/default-model/evaluate.sh MODEL OUT [FDB_EXAMPLES]
#
# MODEL: an LM file with its config.json and tokenizer.model beside it (a training run's RUN/lm2/best/model.safetensors)
#        or "default" (the shipped default model, as `duplex serve` runs it)
# OUT: where the runs go (OUT/SET-SEED/ and its report OUT/SET-SEED.json); a run whose report is there is skipped,
#      so the script goes on where it stopped
# FDB_EXAMPLES: a folder of Full-Duplex-Bench sample folders (e.g. v1_v1.5/evaluation/example_data of
#      DanielLin94144/Full-Duplex-Bench, inputs and annotations), run once with seed 0
#
# To compare with another model's runs: duplex bench turns compare OUT/*.json OTHER/*.json
#
# Environment:
#   DUPLEX=duplex   the command (or: DUPLEX="python -m duplex" with the repository on PYTHONPATH)
#   SETS=OUT/sets   where the two fresh-seed sets are made once (about 10 min on 2 cores) and kept; give the same
#                   SETS to every evaluation, or each remakes them (the same samples: same seeds, same generator)
#   THREADS=2       torch CPU threads (the figures of docs/training.md: 2; another count sums in another order, so
#                   samples differ here and there)
#   SEEDS="0 1 2"   the sampling seeds of each set
set -euo pipefail

MODEL=${1:?usage: evaluate.sh MODEL OUT [FDB_EXAMPLES]}
OUT=${2:?usage: evaluate.sh MODEL OUT [FDB_EXAMPLES]}
FDB=${3:-}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DUPLEX=${DUPLEX:-duplex}
SETS=${SETS:-$OUT/sets}
THREADS=${THREADS:-2}
SEEDS=${SEEDS:-0 1 2}
MARK=.duplex-turns-run.json  # what an unfinished run leaves in its folder (duplex.bench.turntaking.runner.MARK)

model=()
if [ "$MODEL" != default ]; then
    [ -f "$MODEL" ] || { echo "error: $MODEL: no such model file (or give 'default')" >&2; exit 2; }
    model=(--lm "$MODEL")
fi
if [ -n "$FDB" ] && [ ! -d "$FDB" ]; then
    echo "error: $FDB: no such folder of FDB samples" >&2
    exit 2
fi
mkdir -p "$OUT" "$SETS"

# The fresh-seed sets: 80 conversations each, every one held out (the held-out user voice), cut into 20 samples a task.
fresh_set() {  # fresh_set NAME SEED SYNTH-OPTIONS...
    local name=$1 seed=$2; shift 2
    [ -d "$SETS/$name" ] && return
    [ -f "$SETS/corpus-$name/manifest.jsonl" ] ||
        $DUPLEX data synth "$SETS/corpus-$name" --conversations 80 --heldout-every 1 --seed "$seed" "$@"
    $DUPLEX bench turns make-set "$SETS/corpus-$name" "$SETS/$name" --per-task 20
}
fresh_set set-v1 2801
fresh_set set-v2 2802 --mix v2

run() {  # run SET-DIR NAME SEED
    local report="$OUT/$2-$3.json"
    [ -f "$report" ] && return
    # a run stopped midway (its mark still there) resumes by itself; a finished one whose report is missing is remade
    if [ -d "$OUT/$2-$3" ] && [ ! -f "$OUT/$2-$3/$MARK" ]; then rm -rf "${OUT:?}/$2-$3"; fi
    $DUPLEX bench turns run "$1" "$OUT/$2-$3" --slots 8 --threads "$THREADS" --seed "$3" "${model[@]}" \
        --json "$report.part" > "$OUT/$2-$3.log" 2>&1
    mv "$report.part" "$report"  # the report is there only once the run is whole
    echo "$2 seed $3 done"
}
for seed in $SEEDS; do
    run "$SETS/set-v1" set-v1 "$seed"
    run "$SETS/set-v2" set-v2 "$seed"
    run "$ROOT/demos/fdb-synthetic" fdb-synthetic "$seed"
done
[ -z "$FDB" ] || run "$FDB" fdb-examples 0

$DUPLEX bench turns compare "$OUT"/*.json
