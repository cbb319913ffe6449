#!/usr/bin/env bash
# One accelerator sitting of the 270M pipeline (docs/RESULTS.md): the SFT stage at GPU
# batch size, then the evaluations a 2-core CPU would need hours for, each on all 1,319
# GSM8K test questions (greedy) or the first 500 (votes). Every product is packed into
# $RESULTS as it is finished, so a sitting cut short still returns what it made; an
# unfinished evaluation resumes from its results.jsonl on any machine.
#   MODEL=gemma-3-270m-q4_k_m.gguf RESULTS=out bash scripts/gpu_sitting.sh
# MODEL: the embedded GGUF (the same file `bigthoughts` assembles from PyPI).
# Optional: SFT_BUDGET (default 300s), LIMIT / VOTE_LIMIT (questions), EVAL_BATCH.
set -uo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:?path to the Gemma 3 270M GGUF}
RESULTS=${RESULTS:?directory for the products}
RUNS=${RUNS:-runs}
EVALS=${EVALS:-$RUNS/evals}
B=(python3 -m bigthoughts.cli)
SFT=$RUNS/gemma3-270m-sft-gpu
EB=${EVAL_BATCH:-256}
mkdir -p "$RESULTS" "$EVALS"
log() { echo "[$(date +%T)] $*" | tee -a "$RESULTS/sitting.log"; }
pack() {  # everything made so far, as one archive (the return channel takes few files)
  tar czf "$RESULTS/evals.tgz.tmp" -C "$EVALS" . && mv "$RESULTS/evals.tgz.tmp" "$RESULTS/evals.tgz"
  [ -f "$SFT/metrics.jsonl" ] && cp "$SFT/metrics.jsonl" "$RESULTS/sft-metrics.jsonl"
  [ -f "$SFT/export/adapter.safetensors" ] && cp "$SFT/export/adapter.safetensors" \
    "$RESULTS/sft-adapter.safetensors"
  return 0
}
run_eval() {  # NAME ARGS...: one evaluation, timed, then packed
  local name=$1; shift
  log "eval $name"
  "${B[@]}" eval --model "$MODEL" --engine jax --quiet --max-new-tokens 256 \
    ${LIMIT:+--limit $LIMIT} "$@" --out "$EVALS/$name" > /dev/null 2>> "$RESULTS/sitting.log"
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('  n', d['n'],
    'accuracy', round(d['accuracy'], 4), 'strict format', round(d['format_strict'], 4),
    'tokens/s', round(d['tokens_per_second'], 1), 'wall s', round(d['wall_seconds'], 1))" \
    "$EVALS/$name/summary.json" 2>&1 | tee -a "$RESULTS/sitting.log"
  pack
}

( while sleep "${PACK_EVERY:-45}"; do pack; done ) &  # an evaluation cut short still returns
packer=$!
trap 'kill $packer 2>/dev/null; pack' EXIT
log "start: $(python3 -c 'import jax; print(jax.__version__, jax.devices())')"
if [ "${SKIP_SFT:-0}" != 1 ]; then
  log "sft"
  "${B[@]}" sft --config configs/gemma3-270m-sft-gpu.yaml model.path="$MODEL" \
    ${SFT_STEPS:+max_steps=$SFT_STEPS} ${SFT_OVERRIDES:-} --out "$SFT" --time-budget "${SFT_BUDGET:-300s}" \
    > "$RESULTS/sft.json" 2> >(tail -20 >> "$RESULTS/sitting.log")
  rc=$?
  if [ $rc -eq 75 ]; then  # the budget ended first: export the step it reached
    step=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['step'])" "$RESULTS/sft.json")
    log "sft stopped by its budget at step $step: exporting that step"
    "${B[@]}" sft --config configs/gemma3-270m-sft-gpu.yaml model.path="$MODEL" \
      ${SFT_STEPS:+max_steps=$SFT_STEPS} ${SFT_OVERRIDES:-} --out "$SFT" --max-steps "$step" \
      > "$RESULTS/sft-export.json" 2>> "$RESULTS/sitting.log"
  elif [ $rc -ne 0 ]; then
    log "sft failed ($rc)"
  fi
  pack
fi
ADAPTER=${ADAPTER:-$SFT/export/adapter.safetensors}
sft=(--adapter "$ADAPTER" --style zeroshot --batch-size "$EB")
base=(--batch-size "$EB")
if [ -f "$ADAPTER" ]; then
  run_eval sft-single-calc --mode single "${sft[@]}" --calculator
  run_eval sft-single --mode single "${sft[@]}"
fi
run_eval base-zeroshot --mode single --style zeroshot "${base[@]}"
run_eval base-2shot --mode single --style fewshot --shots 2 "${base[@]}"
if [ -f "$ADAPTER" ]; then
  vote=(--mode vote --votes 5 --adapter "$ADAPTER" --style zeroshot --calculator
        --batch-size $((EB / 5)) --limit "${VOTE_LIMIT:-500}")
  run_eval sft-vote-calc "${vote[@]}"
  run_eval sft-adaptive-calc "${vote[@]}" --strategy adaptive
fi
log "done"
