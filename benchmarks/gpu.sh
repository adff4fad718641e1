#!/usr/bin/env bash
# The GPU run of the quantization issue (25) in one go, under 8 minutes on an H200, ending in ONE table
# (benchmarks/summary.py): the engine's frame step with bf16/int8/fp8 weights x bf16/fp8 KV ring x batch 1/8/64/128
# (Moshi 7B shapes, random weights, CUDA graphs; 128 where memory allows), the peak memory of each against the
# computed figure (duplex bench memory), the shipped model's step, the fidelity figures (duplex bench fidelity, when
# this checkout has it), the GPU tests, and the issue's goals checked. Record the table in docs/benchmarks.md with
# the date, the hardware and this command.
#
#   bash benchmarks/gpu.sh          on a machine with CUDA (the lent device: bash .ci/device, which calls this)
#   bash benchmarks/gpu.sh --cpu    anywhere: the same run end to end with small shapes (the shipped model, a few
#                                   frames), the GPU-only cells marked; also what runs when CUDA is missing
#
# Also LoRA training steps (issue 26) on a random Moshi 7B, int8 and bf16 base (duplex bench lora), each in its own
# process with a time limit: step time, peak memory beside the computed figure (docs/training.md, "Memory").
#
# Also (issue 29) the 7B step at batch 1 and 64 with the depth stage compiled (bench latency --compile, Inductor's
# Triton kernels captured in the engine's CUDA graphs), beside the uncompiled rows; GPU only (on the CPU the compile
# alone takes minutes: docs/benchmarks.md, "Compiled stages"); up to 8 minutes more.
#
# And FDB v1 at scale (issue 29): `duplex bench turns run` over a set of FDB v1's size (730 samples, 8 h of audio)
# made on the machine from demos/fdb-synthetic (`bench turns scale-set`), Moshi 7B shapes (random weights), 64 slots,
# CUDA graphs, at most $FDB_LIMIT s (default 330): wall time, real-time factor, engine steps and slots used. On
# the CPU (--cpu) the same with the shipped model over 2 samples (11 s of audio). With it the whole run takes up to
# about 14 minutes on an H200, more than one call of the lent device may (10): there, run it in two calls,
#   bash benchmarks/gpu.sh --no-fdb     everything but FDB at scale (under 8 minutes)
#   bash benchmarks/gpu.sh --fdb-only   FDB at scale alone (about 5-6 minutes), its rows in the same table
# A lent machine gives a session 15 minutes in all, its start included, which the whole run does not fit. Then:
#   bash benchmarks/gpu.sh --quick      issue 29's rows alone, within QUICK_LIMIT s (default 360): the GPU tests, the
#                                       7B step (bf16) at batch 1/8/64 with a full ring and 30 s in (32 for 64 on a
#                                       GPU under 130 GB, an H100), the step compiled at batch 1, and Kyutai's frame
#                                       step in the same call (benchmarks/kyutai_gpu.py, when its moshi package is
#                                       there)
#   bash benchmarks/gpu.sh --fdb-only   right after it, on the same warm machine (FDB_LIMIT to fit what is left)
# (--cpu --quick checks the script here: the shipped model eager in the 7B rows' files, Kyutai's 512 x 8 shape.)
# (FDB_SAMPLES, FDB_HOURS and FDB_LIMIT change its size and time limit.)
#
# Reports go to $OUT (default /tmp/duplex-gpu): latency_7b.json, latency_7b_compiled_{1,64}.json, latency_7b_30s.json,
# latency_default.json, memory_7b.json,
# gpu_tests.txt, fidelity.txt, fidelity_MODEL.json, lora_7b.json (lora_default.json with --cpu), lora_status.txt,
# fdb_7b.json (fdb_default.json with --cpu), fdb_status.txt, summary.md.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/duplex-gpu}
mkdir -p "$OUT"
rm -f "$OUT"/latency_7b.json "$OUT"/latency_7b_compiled_*.json "$OUT"/latency_7b_30s.json "$OUT"/latency_default.json "$OUT"/memory_7b.json \
  "$OUT"/gpu_tests.txt "$OUT"/fidelity.txt "$OUT"/fidelity_*.json "$OUT"/fidelity_*.log "$OUT"/fidelity_status.txt \
  "$OUT"/lora_*.json "$OUT"/lora.txt "$OUT"/lora.log "$OUT"/lora_status.txt "$OUT"/fdb_*.json "$OUT"/fdb.txt \
  "$OUT"/fdb.log "$OUT"/fdb_status.txt "$OUT"/fdb_set.txt "$OUT"/kyutai_*.json "$OUT"/kyutai.log
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
VARIANTS="none fp8kv int8 int8+fp8kv fp8 fp8+fp8kv"

CPU_ONLY=0 FDB=1 REST=1 QUICK=0
for arg in "$@"; do
  case "$arg" in
    --cpu) CPU_ONLY=1 ;;
    --no-fdb) FDB=0 ;;
    --quick) QUICK=1 FDB=0 ;;
    --fdb-only) REST=0 ;;
    *) echo "usage: bash benchmarks/gpu.sh [--cpu] [--no-fdb | --fdb-only | --quick]" >&2; exit 2 ;;
  esac
done
if [ $FDB = 0 ] && [ $REST = 0 ]; then echo "--no-fdb and --fdb-only leave nothing to run" >&2; exit 2; fi

if [ $CPU_ONLY = 0 ] && $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  DEVICE=cuda
else
  DEVICE=cpu
fi
echo "$DEVICE" > "$OUT/device.txt"
status=0
started=$(date +%s)
step() { echo "== [$(( $(date +%s) - started )) s] $*"; }
# The most 7B sessions (bf16 weights, a full bf16 ring each) this GPU holds: 64 need about 118 GB (15.4 GB of weights
# and 1.6 GB per ring: docs/quantization.md), which an H200 (141 GB) has and an H100 (80 GB) has not: there, 32.
MOST=64
if [ "$DEVICE" = cuda ]; then
  mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1 | tr -dc 0-9)
  if [ -n "$mib" ] && [ "$mib" -lt 130000 ]; then
    MOST=32
    echo "this GPU has $mib MiB: the 64-session rows need about 118 GB, so they run with $MOST sessions"
  fi
fi

# issue 29's rows in one short call (--quick): each step under its own limit, and none starts past QUICK_LIMIT
if [ $QUICK = 1 ]; then
  QUICK_LIMIT=${QUICK_LIMIT:-360}  # with the machine's start (1-2 min) and the FDB call after it: 15 minutes
  # seconds a step may take: its own limit, or what is left of QUICK_LIMIT, at least 1 (timeout 0 means no limit)
  left() { local l=$(( QUICK_LIMIT - ($(date +%s) - started) )); [ $l -lt 1 ] && l=1; [ $l -lt "$1" ] && echo $l || echo "$1"; }
  if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    BIG=moshi_7b; BATCHES="1 8 $MOST"; AGED="1 $MOST"; KSHAPE=7b; MODES=graphs; FRAMES=(--frames 30 --warmup 5)
  else
    echo "no CUDA here (or --cpu): the shipped model's shape, a few frames, GPU-only rows marked"
    BIG=default; BATCHES="1 2"; AGED="1 2"; KSHAPE=small; MODES=eager; FRAMES=(--frames 3 --warmup 1)
  fi
  step "GPU tests (exactness: CUDA graphs, compiled stages, the per-length graphs)"
  if [ "$DEVICE" = cuda ]; then
    # (the codec's reference-vector test needs a fixture that .ci/device --aside leaves behind; it passed on 12-04)
    timeout "$(left 150)" $PY -m pytest -q -p no:cacheprovider tests/runtime/test_gpu.py \
      --deselect tests/runtime/test_gpu.py::test_cuda_offline_and_streaming_match_reference \
      tests/runtime/test_compiled.py::test_cuda_compiled_stage_in_graphs_equals_eager \
      tests/runtime/test_ring_length.py::test_cuda_graph_per_length_equals_eager_whole_ring 2>&1 \
      | tee "$OUT/gpu_tests.txt" | tail -4 || status=1
  fi
  step "the step, $BIG (bf16 on CUDA), full ring, batch $BATCHES"
  timeout "$(left 150)" $PY -m duplex bench latency --model $BIG --device $DEVICE --modes $MODES \
    --batch-sizes $BATCHES "${FRAMES[@]}" --json "$OUT/latency_7b.json" || status=1
  step "the same, sessions 30 s in, batch $AGED"
  timeout "$(left 120)" $PY -m duplex bench latency --model $BIG --device $DEVICE --modes $MODES \
    --batch-sizes $AGED --age 30 "${FRAMES[@]}" --json "$OUT/latency_7b_30s.json" || status=1
  # the compiled step before Kyutai's (the 12-04 run measured Kyutai's already; the compiled step never ran on a
  # GPU), each under its own limit so that one that overruns leaves the other its time
  if [ "$DEVICE" = cuda ] && [ "$(left 999)" -gt 90 ]; then
    # a full ring, as the uncompiled row its speedup is taken over
    step "the step compiled (torch.compile in the CUDA graphs), batch 1, $(left 150) s at most"
    timeout "$(left 150)" $PY -m duplex bench latency --model $BIG --device cuda --modes graphs --batch-sizes 1 \
      --compile "${FRAMES[@]}" --json "$OUT/latency_7b_compiled_1.json" || status=1
  fi
  step "Kyutai's frame step (moshi 0.2.13), same machine, same call, batch $AGED"
  if $PY -c "import moshi" 2>/dev/null; then
    timeout "$(left 120)" $PY benchmarks/kyutai_gpu.py --shape $KSHAPE --batch-sizes $AGED \
      --frames "${FRAMES[1]}" --warmup 10 --json "$OUT/kyutai_$KSHAPE.json" 2> "$OUT/kyutai.log" || status=1
  else
    echo "Kyutai's moshi is not installed here: row not run"
  fi
  step "summary"
  $PY benchmarks/summary.py "$OUT" | tee "$OUT/summary.md"
  step "done (exit $status)"
  exit $status
fi

if [ $REST = 1 ]; then
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  step "GPU tests"
  $PY -m pytest -q -p no:cacheprovider tests/runtime/test_gpu.py \
    tests/model/test_quantize.py::test_cuda_products_are_the_products_with_the_dequantized_weight \
    "tests/model/test_kyutai_q8.py::test_cuda" \
    tests/runtime/test_compiled.py::test_cuda_compiled_stage_in_graphs_equals_eager \
    tests/runtime/test_ring_length.py::test_cuda_graph_per_length_equals_eager_whole_ring 2>&1 | tee "$OUT/gpu_tests.txt" | tail -4 \
    || status=1
  step "the engine's frame step, Moshi 7B shapes (random weights), CUDA graphs: $VARIANTS"
  # One weight format loaded at a time; each engine timed alone with its peak memory; 128 sessions that do not
  # fit are rows marked "out of memory".
  $PY -m duplex bench latency --model moshi_7b --device cuda --modes graphs --batch-sizes 1 8 64 128 \
    --variants $VARIANTS --frames 30 --warmup 5 --json "$OUT/latency_7b.json" || status=1
  step "the same with the stages compiled (torch.compile), no quantization, batch 1, then 64 (240 s at most each)"
  for batch in 1 $MOST; do  # one process each: a compile that runs out of time loses one row, not both
    timeout 240 $PY -m duplex bench latency --model moshi_7b --device cuda --modes graphs --batch-sizes $batch \
      --compile --frames 30 --warmup 5 --json "$OUT/latency_7b_compiled_$batch.json" || status=1
  done
  step "the 7B step with the sessions 30 s into their conversations (attention over the 512 ring slots written), batch 1 and 64"
  $PY -m duplex bench latency --model moshi_7b --device cuda --modes graphs --batch-sizes 1 $MOST --age 30 \
    --frames 30 --warmup 5 --json "$OUT/latency_7b_30s.json" || status=1
  step "the same, the shipped model"
  $PY -m duplex bench latency --model default --device cuda --modes graphs --batch-sizes 1 64 \
    --variants none int8 int8+fp8kv --frames 30 --warmup 5 --json "$OUT/latency_default.json" || status=1
  MEASURED=(--measured "$OUT/latency_7b.json")
  FIDELITY_LIMIT=120  # each model
else
  echo "no CUDA here (or --cpu): small shapes, GPU-only cells marked"
  step "GPU tests: GPU only (skipped)"
  step "the engine's frame step, the shipped model, CPU (eager), the variants in turns: $VARIANTS"
  $PY -m duplex bench latency --model default --device cpu --modes eager --batch-sizes 1 2 \
    --variants $VARIANTS --frames 3 --warmup 1 --json "$OUT/latency_default.json" || status=1
  MEASURED=()
  FIDELITY_LIMIT=60
fi

step "the memory table, Moshi 7B shapes (computed; checked against the runs' max_memory_allocated on CUDA)"
$PY -m duplex bench memory --config moshi_7b --device cpu "${MEASURED[@]}" --json "$OUT/memory_7b.json" \
  > "$OUT/memory_7b.txt" || status=1

step "fidelity"
# duplex bench fidelity (another part of issue 25): the shipped model, and on CUDA the random 7B-shaped one, each
# with its default variants and frames (a few frames on the CPU). On the lent machine one sample per task of
# demos/fdb-synthetic (its default speech) stays in the checkout (.ci/device --aside), looped as needed; without
# the folder, demos/hello.wav is looped instead.
: > "$OUT/fidelity.txt"
if $PY -m duplex bench fidelity --help > "$OUT/fidelity_help.txt" 2>&1; then
  AUDIO=()
  [ -d demos/fdb-synthetic ] || AUDIO=(--audio demos/hello.wav)
  MODELS="default"
  SHORT=(--frames 16 --greedy-frames 8)
  if [ "$DEVICE" = cuda ]; then MODELS="default moshi_7b"; SHORT=(); fi
  verdicts=()
  for model in $MODELS; do
    echo "-- duplex bench fidelity --model $model" >> "$OUT/fidelity.txt"
    timeout "$FIDELITY_LIMIT" $PY -m duplex bench fidelity --model "$model" --device "$DEVICE" "${AUDIO[@]}" \
      "${SHORT[@]}" --json "$OUT/fidelity_$model.json" >> "$OUT/fidelity.txt" 2> "$OUT/fidelity_$model.log"
    rc=$?
    if [ $rc -eq 0 ]; then verdicts+=("$model: see below")
    elif [ $rc -eq 124 ]; then verdicts+=("$model: timed out after $FIDELITY_LIMIT s")
    else verdicts+=("$model: failed (exit $rc; output below)"); status=1; fi
    [ $rc -eq 0 ] || tail -5 "$OUT/fidelity_$model.log" >> "$OUT/fidelity.txt"
  done
  (IFS=';'; echo "${verdicts[*]}") | sed 's/;/; /g' > "$OUT/fidelity_status.txt"
else
  echo "not in this checkout (duplex bench fidelity --help fails)" > "$OUT/fidelity_status.txt"
fi

# LoRA training steps (issue 26, deliverable 5): duplex train lm --lora's step on random codes, rank 64, gradient
# checkpointing, batch 1 x 10 s; on CUDA a random Moshi 7B (all 32 temporal layers, the full depth transformer) with
# an int8 base, then a bfloat16 one (15.4 GB; an out-of-memory error is recorded as a result), each in its own
# process under its time limit (together at most 90 s); on the CPU the shipped model's shape, 2 steps.
if [ "$DEVICE" = cuda ]; then
  LORA_MODEL=moshi_7b; LORA_JSON=lora_7b.json; LORA_STEPS=(--steps 5 --warmup 2); LORA_LIMITS="int8:50 none:40"
else
  LORA_MODEL=default; LORA_JSON=lora_default.json; LORA_STEPS=(--steps 2 --warmup 1 --segment-seconds 2)
  LORA_LIMITS="int8:30 none:30"
fi
step "LoRA training steps, $LORA_MODEL (random weights), rank 64: $LORA_LIMITS (base: seconds at most)"
: > "$OUT/lora.txt"
lora_verdicts=()
for entry in $LORA_LIMITS; do
  weights=${entry%%:*} limit=${entry##*:}
  timeout "$limit" $PY -m duplex bench lora --model "$LORA_MODEL" --device "$DEVICE" --quantize "$weights" \
    "${LORA_STEPS[@]}" --json "$OUT/$LORA_JSON" --append >> "$OUT/lora.txt" 2>> "$OUT/lora.log"
  rc=$?
  if [ $rc -eq 0 ]; then lora_verdicts+=("$weights: ran")
  elif [ $rc -eq 124 ]; then lora_verdicts+=("$weights: timed out after $limit s")
  else lora_verdicts+=("$weights: failed (exit $rc)"); status=1; tail -3 "$OUT/lora.log"; fi
done
(IFS=';'; echo "${lora_verdicts[*]}") | sed 's/;/; /g' > "$OUT/lora_status.txt"
fi  # REST

# FDB v1 at scale (issue 29, deliverables 3 and 5): the set made here from demos/fdb-synthetic (on the lent machine
# .ci/device --aside leaves one sample per task of it), then run offline many at a time, without scoring (random
# weights: their scores mean nothing; the scorer's Silero VAD is not on that machine). The time limit sends Ctrl-C
# (SIGINT): the run stops keeping what it finished, and its last progress line says how far it got and how fast.
if [ $FDB = 1 ]; then
  if [ "$DEVICE" = cuda ]; then
    FDB_MODEL=moshi_7b FDB_JSON=fdb_7b.json FDB_SLOTS=$MOST
    FDB_SAMPLES=${FDB_SAMPLES:-730} FDB_HOURS=${FDB_HOURS:-8} FDB_LIMIT=${FDB_LIMIT:-330}
  else
    FDB_MODEL=default FDB_JSON=fdb_default.json FDB_SLOTS=2
    FDB_SAMPLES=${FDB_SAMPLES:-2} FDB_HOURS=${FDB_HOURS:-0.003} FDB_LIMIT=${FDB_LIMIT:-180}
  fi
  step "FDB v1 at scale: $FDB_SAMPLES samples, $FDB_HOURS h of audio (scale-set of demos/fdb-synthetic), then bench" \
    "turns run --model $FDB_MODEL --slots $FDB_SLOTS on $DEVICE, at most $FDB_LIMIT s"
  # the set and the run's outputs (about 1 GB each) outside $OUT: a run stopped by the device tool's own limit
  # would otherwise leave them where the reports come back from
  FDB_WORK=${FDB_WORK:-/tmp/duplex-fdb}
  rm -rf "$FDB_WORK" && mkdir -p "$FDB_WORK"
  # FDB_LIMIT bounds the set's making and the run together (the device call's time is what it must fit); the run
  # gets what is left, and its status says that limit
  fdb_started=$(date +%s)
  if timeout "$FDB_LIMIT" $PY -m duplex bench turns scale-set demos/fdb-synthetic "$FDB_WORK/set" \
      --samples "$FDB_SAMPLES" --hours "$FDB_HOURS" > "$OUT/fdb_set.txt" 2>&1; then
    cat "$OUT/fdb_set.txt"
    FDB_LIMIT=$(( FDB_LIMIT - ($(date +%s) - fdb_started) ))
    [ "$FDB_LIMIT" -lt 1 ] && FDB_LIMIT=1
    echo "the run: at most $FDB_LIMIT s"
    timeout -s INT -k 20 "$FDB_LIMIT" $PY -m duplex bench turns run "$FDB_WORK/set" "$FDB_WORK/out" \
      --model "$FDB_MODEL" --device "$DEVICE" --slots "$FDB_SLOTS" --no-score --json "$OUT/$FDB_JSON" \
      > "$OUT/fdb.txt" 2> "$OUT/fdb.log"
    rc=$?
    cat "$OUT/fdb.txt"
    last=$(tr '\r' '\n' < "$OUT/fdb.log" | grep -E '^[0-9]+/[0-9]+ samples' | tail -1)
    if [ $rc -eq 0 ]; then echo "ran" > "$OUT/fdb_status.txt"
    elif [ $rc -eq 124 ] || [ $rc -eq 130 ] || [ $rc -eq 137 ]; then
      echo "timed out after $FDB_LIMIT s (${last:-no sample finished})" > "$OUT/fdb_status.txt"
    else echo "failed (exit $rc)" > "$OUT/fdb_status.txt"; status=1; tail -5 "$OUT/fdb.log"; fi
  else
    echo "scale-set failed: $(tail -1 "$OUT/fdb_set.txt")" > "$OUT/fdb_status.txt"; status=1
  fi
  rm -rf "$FDB_WORK"
fi

step "summary"
$PY benchmarks/summary.py "$OUT" | tee "$OUT/summary.md"
if [ $REST = 1 ]; then
  echo
  cat "$OUT/memory_7b.txt"
  echo
  cat "$OUT/lora.txt"
fi
step "done (exit $status)"
exit $status
