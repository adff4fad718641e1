#!/usr/bin/env bash
# A default-model candidate's turn-taking figures, measured as docs/training.md measures every candidate: three
# sets (v1set and v2set, a v1-mix and a v2-mix set cut from corpora of seeds no model was trained on, with the
# held-out user voice, and the shipped set demos/fdb-synthetic), each run with sampling seeds 0, 1 and 2 (on 20
# samples a seed alone moves a TOR by up to 0.3), and FDB's real examples with seed 0 when given; then the table of
# means (`duplex bench turns compare`).
#
#   demos/default-model/evaluate.sh MODEL OUT [FDB_EXAMPLES]
#
# MODEL: an LM file with its config.json and tokenizer.model beside it (a training run's RUN/lm2/best/model.safetensors)
#        or "default" (the shipped default model, as `duplex serve` runs it)
# OUT: where the runs go (OUT/SET-SEED/ and its report OUT/SET-SEED.json), for this MODEL only (OUT/model says
#      which); a run whose report is there is skipped and a stopped one resumes, so the script goes on where it was
# FDB_EXAMPLES: a folder of Full-Duplex-Bench sample folders (e.g. v1_v1.5/evaluation/example_data of
#      DanielLin94144/Full-Duplex-Bench, inputs and annotations), run once with seed 0
#
# Beside the shipped model's runs: duplex bench turns compare OUT/*.json \
#     benchmarks/results/turns-first-model-fdb-timing-2026-12-06.json   (measured as this script measures today:
#     the output one frame later, answers by their keys; the bundles before it were measured otherwise)
#
# Environment:
#   DUPLEX=duplex   the command (or: DUPLEX="python -m duplex" with the repository on PYTHONPATH; split at spaces)
#   SETS=OUT/sets   where the two fresh-seed sets are made once (about 10 min on 2 cores) and kept; give the same
#                   SETS to every evaluation, or each remakes them (the same samples: same seeds, same generator)
#   THREADS=2       torch CPU threads (the figures of docs/training.md: 2; another count sums in another order, so
#                   samples differ here and there)
#   SEEDS="0 1 2"   the sampling seeds of each set
#   OPTIONS=        more options of every `bench turns run`, split at spaces (e.g. "--temp-text 0.3": the sampling
#                   options; such runs go to an OUT of their own, which OUT/model names with them)
set -euo pipefail

MODEL=${1:?usage: evaluate.sh MODEL OUT [FDB_EXAMPLES]}
OUT=${2:?usage: evaluate.sh MODEL OUT [FDB_EXAMPLES]}
FDB=${3:-}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DUPLEX=${DUPLEX:-duplex}
SETS=${SETS:-$OUT/sets}
THREADS=${THREADS:-2}
SEEDS=${SEEDS:-0 1 2}
read -r -a options <<< "${OPTIONS:-}"
MARK=.duplex-turns-run.json  # what an unfinished run leaves in its folder (duplex.bench.turntaking.runner.MARK)

model=()
if [ "$MODEL" != default ]; then
    [ -f "$MODEL" ] || { echo "error: $MODEL: no such model file (or give 'default')" >&2; exit 2; }
    MODEL=$(cd "$(dirname "$MODEL")" && pwd)/$(basename "$MODEL")
    model=(--lm "$MODEL")
fi
# The options this script sets itself stay its own (a second --seed would make three runs of one seed, a --json
# another report than the one it waits for).
# (argparse takes an option's prefix too: --thr is --threads)
for option in ${options[@]+"${options[@]}"}; do
    name=${option%%=*}
    case "$name" in --?*) ;; *) continue ;; esac
    for own in --seed --json --lm --slots --threads; do
        case "$own" in
        "$name"*) echo "error: OPTIONS: $name is $own, which evaluate.sh sets itself (SEEDS=, THREADS=, MODEL)" >&2
                  exit 2 ;;
        esac
    done
done
if [ -n "$FDB" ] && [ ! -d "$FDB" ]; then
    echo "error: $FDB: no such folder of FDB samples" >&2
    exit 2
fi
mkdir -p "$OUT" "$SETS"
# One model's runs per OUT: reports of another model in it would be skipped as done, and mixed into the table.
WHAT="$MODEL${options[*]+ ${options[*]}}"
if [ -f "$OUT/model" ] && [ "$(cat "$OUT/model")" != "$WHAT" ]; then
    echo "error: $OUT holds the runs of $(cat "$OUT/model"), not $WHAT: give another OUT" >&2
    exit 2
fi
echo "$WHAT" > "$OUT/model"

# The fresh-seed sets: 80 conversations each, every one held out (the held-out user voice), cut into 20 samples a
# task; a set is made under NAME.part and named NAME once whole, so a stop midway leaves nothing taken for done.
fresh_set() {  # fresh_set NAME SEED SYNTH-OPTIONS...
    local name=$1 seed=$2; shift 2
    [ -d "$SETS/$name" ] && return
    # (`data synth` removes a corpus it did not finish itself)
    [ -f "$SETS/corpus-$name/manifest.jsonl" ] ||
        $DUPLEX data synth "$SETS/corpus-$name" --conversations 80 --heldout-every 1 --seed "$seed" ${1+"$@"}
    rm -rf "${SETS:?}/$name.part"
    $DUPLEX bench turns make-set "$SETS/corpus-$name" "$SETS/$name.part" --per-task 20
    mv "$SETS/$name.part" "$SETS/$name"
}
fresh_set v1set 2801
fresh_set v2set 2802 --mix v2

run() {  # run SET-DIR NAME SEED
    local report="$OUT/$2-$3.json"
    [ -f "$report" ] && return
    # a run stopped midway (its mark still there) resumes by itself; a finished one whose report is missing is remade
    if [ -d "$OUT/$2-$3" ] && [ ! -f "$OUT/$2-$3/$MARK" ]; then rm -rf "${OUT:?}/$2-$3"; fi
    if ! $DUPLEX bench turns run "$1" "$OUT/$2-$3" --slots 8 --threads "$THREADS" --seed "$3" \
            ${model[@]+"${model[@]}"} ${options[@]+"${options[@]}"} --json "$report.part" > "$OUT/$2-$3.log" 2>&1; then
        echo "error: the run of $2 with seed $3 stopped: $OUT/$2-$3.log says why (the same command again resumes it;" \
             "a run that stopped after its last sample, while scoring, is made again)" >&2
        exit 1
    fi
    mv "$report.part" "$report"  # the report is there only once the run is whole
    echo "$2 seed $3 done"
}
for seed in $SEEDS; do
    run "$SETS/v1set" v1set "$seed"
    run "$SETS/v2set" v2set "$seed"
    run "$ROOT/demos/fdb-synthetic" shipped "$seed"
done
[ -z "$FDB" ] || run "$FDB" fdb-examples 0

# the table of this script's own reports (not any other JSON left in OUT)
reports=()
for report in "$OUT"/v1set-*.json "$OUT"/v2set-*.json "$OUT"/shipped-*.json "$OUT"/fdb-examples-*.json; do
    [ -f "$report" ] && reports+=("$report")
done
$DUPLEX bench turns compare "${reports[@]}"
