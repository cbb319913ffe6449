#!/usr/bin/env bash
# Reproduces docs/RESULTS.md: GRPO format run on the embedded Gemma 3 270M base, then
# before/after evaluation on the first N GSM8K test questions and the report.
# Usage: bash scripts/results_270m.sh [RUNS_DIR] [N] [M]  (default runs/results-270m 200 100)
# N questions for the single-pass runs, M for vote and zero-shot (CPU time: a base-model
# vote costs ~15 s per question here, because the base model rambles to the token cap).
# Every step resumes if interrupted: rerun the same command.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs/results-270m}
N=${2:-200}
M=${3:-100}
B=.venv/bin/bigthoughts
export BIGTHOUGHTS_DATA=${BIGTHOUGHTS_DATA:-../shared/data/gsm8k}
mkdir -p "$RUNS"

# 1. GRPO (relay: exits 75 when the budget ends; rerun to continue). The published run
#    was stopped at step 45 (format compliance had been ~1.0 on training batches since
#    step ~10); --max-steps 45 then merges the LoRA and exports.
$B train --config configs/gemma3-270m-format.yaml --out "$RUNS/train" --max-steps 45 \
  --time-budget "${BUDGET:-8h45m}" || [ $? -eq 75 ]
$B train-report "$RUNS/train"

# 2. Before/after, same prompt (2-shot, the training prompt) and a zero-shot prompt.
common=(--max-new-tokens 192 --batch-size 8 --quiet)
trained=(--checkpoint "$RUNS/train/export")
$B eval --mode single --limit "$N" "${common[@]}" --out "$RUNS/base-single"
$B eval "${trained[@]}" --mode single --limit "$N" "${common[@]}" --out "$RUNS/trained-single"
$B eval "${trained[@]}" --mode zero-shot --shots 0 --limit "$M" "${common[@]}" --out "$RUNS/trained-zeroshot"
$B eval --mode zero-shot --shots 0 --limit "$M" "${common[@]}" --out "$RUNS/base-zeroshot"
$B eval "${trained[@]}" --mode vote --votes 5 --limit "$M" "${common[@]}" --out "$RUNS/trained-vote"
$B eval --mode vote --votes 5 --limit "$M" "${common[@]}" --out "$RUNS/base-vote"
$B report "$RUNS"/{base,trained}-{single,vote,zeroshot} --out "$RUNS/report"
