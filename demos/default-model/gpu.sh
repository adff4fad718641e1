#!/usr/bin/env bash
# The default model's recipe (recipe.sh) with its training on a lent GPU machine: the corpora are made and encoded
# here (espeak-ng and the WAVs stay here), their codes travel (int16, 1.4 MB per hour of conversation), the two
# training runs take minutes there, and their exports come back.
#
#   here:     UNTIL=data demos/default-model/recipe.sh RUN  both corpora, made and encoded (about 35 min on 2 cores)
#   here:     bash demos/default-model/gpu.sh --pack RUN    both corpora's manifests, alignments and codes (no WAVs)
#                                                           into .device-train/corpora.tar.xz, which git ignores
#   here:     bash demos/default-model/gpu.sh --aside       what the training does not read leaves the checkout (the
#                                                           shipped weights, the tests, the docs), so that all that
#                                                           travels stays under the device tool's 64 MiB
#   machine:  run(command="bash .ci/device --train-default-model", carry=[".device", ".device-train"], timeout_s=540)
#   here:     bash demos/default-model/gpu.sh --back        then the runs are under the reply's files_at: lm1/ and
#                                                           lm2/ (best/, model.safetensors, config.json,
#                                                           tokenizer.model, log.jsonl, loss.png); ship lm2/best as
#                                                           recipe.sh says
set -euo pipefail
cd "$(dirname "$0")/../.."
PACK=${PACK:-.device-train/corpora.tar.xz}   # (PACK=: elsewhere, as the tests do)
PARKED=../duplex-device-aside-train
ASIDE="duplex/weights codec/weights tests docs demos/fdb-synthetic demos/lora-persona demos/hello.wav"
LIMIT=$((64 * 1024 * 1024))

case "${1:-}" in
--pack)
    RUN=${2:?usage: gpu.sh --pack RUN}
    files=$(mktemp)
    for corpus in corpus1 corpus2; do
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
    mkdir -p "$(dirname "$PACK")"
    XZ_OPT="-6 -T0" tar -cJf "$PACK" -C "$RUN" -T "$files"
    rm -f "$files"
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
"")  # on the GPU machine (.ci/device --train-default-model installs the missing packages first)
    OUT=${OUT:-/tmp/duplex-train}
    RUN=${RUN:-/tmp/default-model-run}
    [ -f "$PACK" ] || { echo "error: no $PACK (bash demos/default-model/gpu.sh --pack RUN, here)" >&2; exit 2; }
    mkdir -p "$RUN" "$OUT"
    # Python's tarfile reads xz whether or not the machine has the xz program
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' "$PACK" "$RUN"
    status=0
    ENCODE=0 DEVICE=${DEVICE:-cuda} DUPLEX=${DUPLEX:-python3 -m duplex} bash demos/default-model/recipe.sh "$RUN" \
        || status=$?
    # what was made comes back, finished or not (the checkpoints, hundreds of MB, stay there)
    for run in lm1 lm2; do
        [ -d "$RUN/$run" ] || continue
        mkdir -p "$OUT/$run"
        for f in best model.safetensors config.json tokenizer.model log.jsonl loss.png; do
            [ -e "$RUN/$run/$f" ] && cp -r "$RUN/$run/$f" "$OUT/$run/"
        done
    done
    exit $status
    ;;
*)
    echo "usage: gpu.sh [--pack RUN | --aside | --back]" >&2; exit 2 ;;
esac
