#!/usr/bin/env bash
# One accelerator sitting of the 270M pipeline (docs/RESULTS.md): the training stages at
# GPU batch size, then the evaluations a 2-core CPU would need hours for (greedy on all
# 1,319 GSM8K test questions, votes on the first 500). Every product is packed into
# $RESULTS as it is finished (and every 45 s), so a sitting cut short still returns what
# it made; an unfinished evaluation resumes from its results.jsonl on any machine.
#   MODEL=gemma-3-270m-q4_k_m.gguf RESULTS=out bash scripts/gpu_sitting.sh
# MODEL: the embedded GGUF (the file `bigthoughts` assembles from PyPI, copied over).
# STAGES (default "sft evals"): any of sft grpo ablation evals, run in that order.
#   sft      configs/gemma3-270m-sft-gpu.yaml from the base -> $RESULTS/sft-adapter.safetensors
#   grpo     configs/gemma3-270m-grpo-gpu.yaml continuing $SFT_ADAPTER -> grpo-adapter
#   ablation the same GRPO, outcome rewards only -> grpo-outcome-adapter
#   evals    base, SFT and GRPO single passes (with/without the calculator), votes
# Optional: SFT_BUDGET / GRPO_BUDGET (default 300s each), SFT_ADAPTER, LIMIT,
# VOTE_LIMIT, EVAL_BATCH, SFT_OVERRIDES / GRPO_OVERRIDES (key=value for the recipes).
# Seen on an H200: the first steps of each padded shape compile for 10-30 s, so the
# SFT recipe pads every batch to one shape (data.pad_multiple: 512).
set -uo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:?path to the Gemma 3 270M GGUF}
RESULTS=${RESULTS:?directory for the products}
RUNS=${RUNS:-runs}
EVALS=${EVALS:-$RUNS/evals}
STAGES=" ${STAGES:-sft evals} "
B=(python3 -m bigthoughts.cli)
EB=${EVAL_BATCH:-256}
mkdir -p "$RESULTS" "$EVALS"
log() { echo "[$(date +%T)] $*" | tee -a "$RESULTS/sitting.log"; }
has() { [[ "$STAGES" == *" $1 "* ]]; }
pack() {  # everything made so far, as one archive (the return channel takes few files)
  tar czf "$RESULTS/evals.tgz.tmp" -C "$EVALS" . && mv "$RESULTS/evals.tgz.tmp" "$RESULTS/evals.tgz"
  for run in sft grpo grpo-outcome; do
    d=$RUNS/gemma3-270m-$run-gpu
    [ -f "$d/metrics.jsonl" ] && cp "$d/metrics.jsonl" "$RESULTS/$run-metrics.jsonl"
    [ -f "$d/export/adapter.safetensors" ] && cp "$d/export/adapter.safetensors" \
      "$RESULTS/$run-adapter.safetensors"
  done
  return 0
}
( while sleep "${PACK_EVERY:-45}"; do pack; done ) &
packer=$!
trap 'kill $packer 2>/dev/null; pack' EXIT

stage() {  # NAME RECIPE BUDGET OVERRIDES...: a relay stage, exported even if its budget ends
  local name=$1 recipe=$2 budget=$3; shift 3
  local out=$RUNS/gemma3-270m-$name-gpu
  log "$name"
  "${B[@]}" "$([ "$name" = sft ] && echo sft || echo train)" --config "$recipe" \
    model.path="$MODEL" "$@" --out "$out" --time-budget "$budget" \
    > "$RESULTS/$name.json" 2> >(tail -20 >> "$RESULTS/sitting.log")
  local rc=$?
  if [ $rc -eq 75 ]; then  # the budget ended first: export the step it reached
    local step
    step=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['step'])" \
      "$RESULTS/$name.json")
    log "$name stopped by its budget at step $step: exporting that step"
    "${B[@]}" "$([ "$name" = sft ] && echo sft || echo train)" --config "$recipe" \
      model.path="$MODEL" "$@" --out "$out" --max-steps "$step" \
      > "$RESULTS/$name-export.json" 2>> "$RESULTS/sitting.log"
  elif [ $rc -ne 0 ]; then
    log "$name failed ($rc)"
  fi
  pack
}

run_eval() {  # NAME ARGS...: one evaluation, then its headline and a pack
  local name=$1; shift
  log "eval $name"
  "${B[@]}" eval --model "$MODEL" --engine jax --quiet --max-new-tokens 256 \
    ${LIMIT:+--limit $LIMIT} "$@" --out "$EVALS/$name" > /dev/null 2>> "$RESULTS/sitting.log"
  python3 scripts/headline.py "$EVALS/$name/summary.json" 2>&1 | tee -a "$RESULTS/sitting.log"
  pack
}

log "start: $(python3 -c 'import jax; print(jax.__version__, jax.devices())'), stages:$STAGES"
SFT_OUT=$RUNS/gemma3-270m-sft-gpu/export/adapter.safetensors
has sft && stage sft configs/gemma3-270m-sft-gpu.yaml "${SFT_BUDGET:-300s}" ${SFT_OVERRIDES:-}
SFT_ADAPTER=${SFT_ADAPTER:-$([ -f "$SFT_OUT" ] && echo "$SFT_OUT" || echo adapters/gemma3-270m-sft.safetensors)}
grpo=(model.adapter="$SFT_ADAPTER" ${GRPO_OVERRIDES:-})
has grpo && stage grpo configs/gemma3-270m-grpo-gpu.yaml "${GRPO_BUDGET:-300s}" "${grpo[@]}"
has ablation && stage grpo-outcome configs/gemma3-270m-grpo-gpu.yaml "${GRPO_BUDGET:-300s}" \
  "${grpo[@]}" rewards.weights.step_correctness=0 rewards.weights.lucky_guess=0
if has evals; then
  for model in sft grpo grpo-outcome; do
    case $model in
      sft) adapter=$SFT_ADAPTER ;;
      *) adapter=$RUNS/gemma3-270m-$model-gpu/export/adapter.safetensors ;;
    esac
    [ -f "$adapter" ] || continue
    one=(--mode single --adapter "$adapter" --style zeroshot --batch-size "$EB")
    run_eval "$model-single-calc" "${one[@]}" --calculator
    [ "$model" = grpo-outcome ] && continue  # the ablation is compared with the calculator
    run_eval "$model-single" "${one[@]}"
  done
  run_eval base-zeroshot --mode single --style zeroshot --batch-size "$EB"
  run_eval base-2shot --mode single --style fewshot --shots 2 --batch-size "$EB"
  for model in sft grpo; do
    adapter=$([ $model = sft ] && echo "$SFT_ADAPTER" || echo "$RUNS/gemma3-270m-grpo-gpu/export/adapter.safetensors")
    [ -f "$adapter" ] || continue
    vote=(--mode vote --votes 5 --adapter "$adapter" --style zeroshot --calculator
          --batch-size $((EB / 5)) --limit "${VOTE_LIMIT:-500}")
    run_eval "$model-vote-calc" "${vote[@]}"
    run_eval "$model-adaptive-calc" "${vote[@]}" --strategy adaptive
  done
fi
log "done"
