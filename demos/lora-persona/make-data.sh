#!/usr/bin/env bash
# The data of the persona adapter (demos/lora-persona/README.md): a small synthetic corpus in which the assistant
# speaks with one voice the default model never heard (espeak-ng's en-us-nyc accent with the Annie variant) and
# opens six conversations in ten with a signature greeting, encoded with the shipped codec and paired with the
# shipped tokenizer, in the layout 'duplex train lm --data' reads. Same seed, same corpus, byte for byte.
#
#   demos/lora-persona/make-data.sh [OUT]        (default OUT: lora-persona-data; about 5 min on 2 cores)
set -euo pipefail

OUT=${1:-lora-persona-data}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DUPLEX=${DUPLEX:-duplex}   # or: DUPLEX="python -m duplex" with the repository on PYTHONPATH

# 4 h of 12-24 s conversations (720; every 20th held out, with a user voice the training split never hears):
# about 1 min of synthesis.
$DUPLEX data synth "$OUT" --hours 4 --seed 26 --min-seconds 12 --max-seconds 24 \
    --assistant-voice en-us-nyc+Annie --assistant-rate 160 --assistant-pitch 60 \
    --greeting "hi, this is duplex, your friendly helper" --greeting-share 0.6

# The base model's vocabulary: an adapter cannot add text pieces, so the corpus's text is tokenized with the shipped
# tokenizer ('duplex train lm' reads DATA/tokenizer.model unless --tokenizer is given).
cp "$ROOT/duplex/weights/duplex-tokenizer.model" "$OUT/tokenizer.model"

# The codes of both channels, with the codec the default model was trained on (not $DUPLEX_MIMI): about 3 min.
$DUPLEX data encode "$OUT" --checkpoint "$ROOT/codec/weights/duplex-codec-small.safetensors" --device cpu
