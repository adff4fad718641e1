#!/usr/bin/env bash
# The default model's recipe (recipe.sh) with its training on a lent GPU machine: the corpora are made and encoded
# here (espeak-ng and the WAVs stay here), their codes travel (int16, 1.4 MB per hour of conversation, about half
# that in xz), the training runs take minutes there, and their exports come back.
#
#   here:     UNTIL=data demos/default-model/recipe.sh RUN  the corpora, made and encoded (stages 1 and 2: about 35
#                                                           min on 2 cores; STAGES=3: about 1 h 40 min more)
#   here:     bash demos/default-model/gpu.sh --pack RUN    the corpora's manifests, alignments and codes (no WAVs)
#                                                           into .device-train/corpora.tar.xz, which git ignores,
#                                                           with the stages to run there (STAGES=, as recipe.sh:
#                                                           "1 2" by default; for 3, BASE_TOKENIZER= the tokenizer
#                                                           stage 3 trains with travels too, or RUN/corpus1's)
#   here:     bash demos/default-model/gpu.sh --aside       what the training does not read leaves the checkout (the
#                                                           shipped weights, the tests, the docs), so that all that
#                                                           travels stays under the device tool's 64 MiB
#   machine:  run(command="bash .ci/device --train-default-model", carry=[".device", ".device-train"], timeout_s=540)
#   here:     bash demos/default-model/gpu.sh --back        what was set aside comes back
#   here:     bash demos/default-model/gpu.sh --unpack FILES_AT RUN
#                                                           the reply's files (runs.tar.00, .01, ...: the device tool
#                                                           brings back at most 8 files of 16 MiB, 64 MiB in all)
#                                                           joined and unpacked into RUN: the best export of the last
#                                                           stage that exported (lm1/best, lm2/best or lm3/best:
#                                                           model.safetensors, config.json, tokenizer.model) and every
#                                                           run's log.jsonl and loss.png; an earlier stage's export
#                                                           stays there (lm1's, 38 MB, is the shipped model's
#                                                           reproduction). Ship the best export as recipe.sh says
# There the stages are the pack's (STAGES given on the machine is not read) and the training has TRAIN_LIMIT seconds
# (default 420; TRAIN_LIMIT=N bash .ci/device --train-default-model), then stops as a Ctrl-C stops it (the step it is
# in ends; its best export so far is kept) and the call exits 3, so that what was made is packed and comes back
# within the call's time. A second call while the machine is still warm resumes the training (RUN stays there); a
# fresh machine starts it over. PACK, and RUN and OUT there, are relative to the repository's root.
set -euo pipefail
CALLER=$PWD
here() { case "$1" in /*) echo "$1" ;; *) echo "$CALLER/$1" ;; esac; }  # a path given, from where it was given
cd "$(dirname "$0")/../.."
PACK=${PACK:-.device-train/corpora.tar.xz}   # (PACK=: elsewhere, as the tests do)
PARKED=../duplex-device-aside-train
ASIDE="duplex/weights codec/weights tests docs demos/fdb-synthetic demos/lora-persona demos/hello.wav"
LIMIT=$((64 * 1024 * 1024))

# The corpora the stages read (recipe.sh's folder names): stage 3 trains on corpus1 with its two own corpora.
corpora_of() {  # corpora_of "STAGES"
    local stages=" $1 " list=""
    for stage in $1; do
        case "$stage" in 1|2|3) ;; *) echo "error: STAGES: $stage is not a stage (1, 2, 3)" >&2; return 2 ;; esac
    done
    list="corpus1"
    [[ "$stages" == *" 2 "* ]] && list="$list corpus2"
    [[ "$stages" == *" 3 "* ]] && list="$list corpus2-dry corpus3"
    echo "$list"
}

case "${1:-}" in
--pack)
    RUN=$(here "${2:?usage: gpu.sh --pack RUN}")
    STAGES=${STAGES:-1 2}
    corpora=$(corpora_of "$STAGES")
    BASE_TOKENIZER=${BASE_TOKENIZER:-}
    [ -z "$BASE_TOKENIZER" ] || BASE_TOKENIZER=$(here "$BASE_TOKENIZER")
    # (with stage 1 or 2 the machine trains stage 1's tokenizer itself, as recipe.sh does)
    if [[ " $STAGES " == *" 3 "* ]] && [ -z "$BASE_TOKENIZER" ] && [[ " $STAGES " != *" 1 "* ]] \
            && [[ " $STAGES " != *" 2 "* ]] && [ ! -f "$RUN/corpus1/tokenizer.model" ]; then
        echo "error: stage 3 trains with stage 1's tokenizer: give BASE_TOKENIZER= (the shipped" \
             "duplex/weights/duplex-tokenizer.model), or run stage 1's data first ($RUN/corpus1/tokenizer.model)" >&2
        exit 2
    fi
    [ -z "$BASE_TOKENIZER" ] || [ -f "$BASE_TOKENIZER" ] || { echo "error: BASE_TOKENIZER=$BASE_TOKENIZER: no such file" >&2; exit 2; }
    files=$(mktemp)
    for corpus in $corpora; do
        [ -f "$RUN/$corpus/manifest.jsonl" ] || { echo "error: $RUN/$corpus: no corpus (run recipe.sh first)" >&2; exit 2; }
        # every conversation with its codes, or the training there would stop at the first one missing
        # (no `head` on this pipe: closing it early would end the script through pipefail, without a word)
        missing=$(cd "$RUN/$corpus" && find train heldout -name '*.wav' | while read -r wav; do
            [ -f "${wav%.wav}.codes.safetensors" ] || echo "$wav"; done)
        if [ -n "$missing" ]; then
            echo "error: $RUN/$corpus is not encoded yet ($(echo "$missing" | wc -l) conversations without codes," \
                 "e.g. $(echo "$missing" | sed -n 1p)): run the recipe until its encoding is done" >&2
            exit 2
        fi
        (cd "$RUN" && ls "$corpus"/*.jsonl && ls "$corpus"/tokenizer.model 2>/dev/null || true) >> "$files"
        (cd "$RUN" && find "$corpus/train" "$corpus/heldout" \( -name '*.json' -o -name '*.codes.safetensors' \)) >> "$files"
    done
    # what the machine runs: the stages, and the tokenizer stage 3 trains with (the machine has no duplex/weights)
    meta=$(mktemp -d)
    echo "$STAGES" > "$meta/stages"
    [ -z "$BASE_TOKENIZER" ] || cp "$BASE_TOKENIZER" "$meta/base-tokenizer.model"
    mkdir -p "$(dirname "$PACK")"
    XZ_OPT="-6 -T0" tar -cJf "$PACK" -C "$meta" stages ${BASE_TOKENIZER:+base-tokenizer.model} -C "$RUN" -T "$files"
    rm -rf "$files" "$meta"
    echo "$PACK: $(du -h "$PACK" | cut -f1) ($(tar -tJf "$PACK" | wc -l) files)"
    ;;
--aside)
    for p in $ASIDE; do [ -e "$p" ] && mkdir -p "$PARKED/$(dirname "$p")" && mv "$p" "$PARKED/$p"; done
    # what travels: the tracked files still here, .device (the wheels) and .device-train
    # (the files set aside are still listed by git: stat skips them)
    total=$( { git ls-files -z | xargs -0 -r stat -c %s 2>/dev/null || true
               find .device .device-train -type f -exec stat -c %s {} + 2>/dev/null || true; } \
        | awk '{s += $1} END {print s + 0}')
    echo "travels: $((total / 1024 / 1024)) MiB of $((LIMIT / 1024 / 1024)) MiB"
    if [ "$total" -gt "$LIMIT" ]; then echo "error: over the device tool's limit" >&2; exit 1; fi
    ;;
--back)
    for p in $ASIDE; do [ -e "$PARKED/$p" ] && mv "$PARKED/$p" "$p"; done
    exit 0
    ;;
--unpack)
    FROM=$(here "${2:?usage: gpu.sh --unpack FILES_AT RUN}")
    RUN=$(here "${3:?usage: gpu.sh --unpack FILES_AT RUN}")
    parts=("$FROM"/runs.tar.[0-9][0-9])
    [ -f "${parts[0]}" ] || { echo "error: $FROM: no runs.tar.NN parts (did the training there end?)" >&2; exit 2; }
    # every part, in order (the device tool leaves out what is over its limits: a gap would unpack as garbage)
    for i in "${!parts[@]}"; do
        [ "${parts[$i]}" = "$FROM/runs.tar.$(printf %02d "$i")" ] \
            || { echo "error: $FROM: runs.tar.$(printf %02d "$i") is missing (the reply is incomplete)" >&2; exit 2; }
    done
    mkdir -p "$RUN"
    # xz-compressed since stage 3 (its export alone is 67.5 MB; an older reply's plain tar reads the same way)
    cat "${parts[@]}" | python3 -c 'import sys, tarfile
tarfile.open(fileobj=sys.stdin.buffer, mode="r|*").extractall(sys.argv[1], filter="data")' "$RUN"
    echo "$RUN: $(cd "$RUN" && find lm1 lm2 lm3 -type f 2>/dev/null | sort | tr '\n' ' ')"
    ;;
"")  # on the GPU machine (.ci/device --train-default-model installs the missing packages first)
    OUT=${OUT:-/tmp/duplex-train}
    RUN=${RUN:-/tmp/default-model-run}
    [ -f "$PACK" ] || { echo "error: no $PACK (bash demos/default-model/gpu.sh --pack RUN, here)" >&2; exit 2; }
    mkdir -p "$RUN" "$OUT"
    # (a machine still warm from an earlier call keeps RUN, so that a second call resumes its training: what that
    # call's pack said is not this one's)
    rm -f "$RUN/stages" "$RUN/base-tokenizer.model" "$OUT"/runs.tar.*
    # Python's tarfile reads xz whether or not the machine has the xz program
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' "$PACK" "$RUN"
    STAGES=$(cat "$RUN/stages" 2>/dev/null || echo "1 2")  # a pack from before the stages travelled: 1 and 2
    base=()
    [ -f "$RUN/base-tokenizer.model" ] && base=(BASE_TOKENIZER="$RUN/base-tokenizer.model")
    status=0
    # timeout signals its whole process group: the training ends its step and saves, as after a Ctrl-C
    env "${base[@]}" STAGES="$STAGES" ENCODE=0 DEVICE="${DEVICE:-cuda}" DUPLEX="${DUPLEX:-python3 -m duplex}" \
        timeout -s INT -k 60 "${TRAIN_LIMIT:-420}" bash demos/default-model/recipe.sh "$RUN" || status=$?
    # (not 124 or 137 for the device tool, which reads those as its own time limit cutting the call)
    if [ $status -eq 124 ]; then
        echo "the training stopped at TRAIN_LIMIT=${TRAIN_LIMIT:-420} s; its best export so far comes back"; status=3
    elif [ $status -eq 137 ]; then
        echo "warning: the training did not stop within 60 s of TRAIN_LIMIT and was killed: an export being" \
             "written then may be incomplete (its step.json says which step it is)" >&2; status=4
    fi
    # What was made comes back, finished or not, as one xz tar in parts of 15 MiB (the device tool returns at most 8
    # files of 16 MiB, 64 MiB in all): the last stage's best export and every run's log and loss curve; the
    # checkpoints (hundreds of MB) and stage 1's export when stage 2 ran (the shipped model's reproduction, 38 MB
    # more) stay there. xz's fastest preset: stage 3's 67.5 MB export is 49.6 MB in it (preset 6 gains 2 MB for 2.6x
    # the time).
    # (the last stage's, or, when the time ran out before it exported, the stage before it's; of this call's
    # stages only, stage 2 running stage 1 first)
    ran=" $STAGES "
    [[ "$ran" == *" 2 "* ]] && ran="$ran 1 "
    wanted=() last=
    for stage in 1 2 3; do
        [[ "$ran" == *" $stage "* ]] || continue
        for f in lm$stage/log.jsonl lm$stage/loss.png; do [ -e "$RUN/$f" ] && wanted+=("$f"); done
        [ -e "$RUN/lm$stage/best" ] && last=$stage
    done
    [ -n "$last" ] && wanted+=("lm$last/best")
    if [ ${#wanted[@]} -gt 0 ]; then
        tar -cf - -C "$RUN" "${wanted[@]}" \
            | python3 -c 'import lzma, shutil, sys
with lzma.LZMAFile(sys.stdout.buffer, "w", preset=1) as packed: shutil.copyfileobj(sys.stdin.buffer, packed)' \
            | split -b 15M -d -a 2 - "$OUT/runs.tar."
        ls -l "$OUT"
        size=$(cat "$OUT"/runs.tar.* | wc -c)
        if [ "$size" -gt "$LIMIT" ]; then
            echo "warning: $((size / 1024 / 1024)) MiB to bring back, over the device tool's 64 MiB: the reply will" \
                 "be incomplete" >&2
        fi
    fi
    exit $status
    ;;
*)
    echo "usage: gpu.sh [--pack RUN | --aside | --back | --unpack FILES_AT RUN]" >&2; exit 2 ;;
esac
