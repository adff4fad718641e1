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
#   here:     bash demos/default-model/gpu.sh --back        what was set aside comes back
#   here:     bash demos/default-model/gpu.sh --unpack FILES_AT RUN
#                                                           the reply's files (runs.tar.00, .01, ...: the device tool
#                                                           brings back at most 8 files of 16 MiB, 64 MiB in all)
#                                                           joined and unpacked into RUN: lm2/best (model.safetensors,
#                                                           config.json, tokenizer.model) and both runs' log.jsonl and
#                                                           loss.png; lm1's export (38 MB more) stays there, as it is
#                                                           the shipped model's reproduction. Ship lm2/best as
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
--unpack)
    FROM=${2:?usage: gpu.sh --unpack FILES_AT RUN}
    RUN=${3:?usage: gpu.sh --unpack FILES_AT RUN}
    parts=("$FROM"/runs.tar.[0-9][0-9])
    [ -f "${parts[0]}" ] || { echo "error: $FROM: no runs.tar.NN parts (did the training there end?)" >&2; exit 2; }
    mkdir -p "$RUN"
    cat "${parts[@]}" | tar -xf - -C "$RUN"
    echo "$RUN: $(cd "$RUN" && find lm1 lm2 -type f 2>/dev/null | sort | tr '\n' ' ')"
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
    # What was made comes back, finished or not, as one tar in parts of 15 MiB (the device tool returns at most 8
    # files of 16 MiB, 64 MiB in all): stage 2's export and both runs' logs and loss curves; the checkpoints
    # (hundreds of MB) and stage 1's export (the shipped model's reproduction, 38 MB more than fits) stay there.
    wanted=()
    for f in lm1/log.jsonl lm1/loss.png lm2/best lm2/log.jsonl lm2/loss.png; do
        [ -e "$RUN/$f" ] && wanted+=("$f")
    done
    if [ ${#wanted[@]} -gt 0 ]; then
        tar -cf - -C "$RUN" "${wanted[@]}" | split -b 15M -d -a 2 - "$OUT/runs.tar."
        ls -l "$OUT"
    fi
    exit $status
    ;;
*)
    echo "usage: gpu.sh [--pack RUN | --aside | --back | --unpack FILES_AT RUN]" >&2; exit 2 ;;
esac
