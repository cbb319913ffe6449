#!/usr/bin/env bash
# The votes of docs/RESULTS.md ("Voting") on one GPU: k = 5 and adaptive votes of the SFT
# and stage-4 adapters on the first 500 test questions, then stage 4's greedy pass on the
# same engine. Each evaluation gets what is left of DEADLINE seconds (a lease's limit);
# one stopped by it resumes from its results.jsonl when this script is run again.
#   MODEL=gemma-3-270m-q4_k_m.gguf EVALS=evals DEADLINE=575 bash scripts/gpu_votes.sh
# MODEL: the embedded GGUF (SHA-256 a5fd3b62…), copied over. The Python there needs JAX
# with CUDA plus this package's pure-Python needs (scripts/offline_kit.sh packs them).
# A transfer limit of 64 MiB per call takes the GGUF in four pieces (split -n 4), one
# call each, kept in the machine's /tmp between calls and joined there.
set -u
cd "$(dirname "$0")/.."
MODEL=${MODEL:?path to the Gemma 3 270M GGUF}
EVALS=${EVALS:-runs/gpu-votes}
T0=$(date +%s); DEADLINE=${DEADLINE:-575}
left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }
mkdir -p "$EVALS"
ev() {  # NAME ADAPTER ARGS...
  local name=$1 adapter=$2 l; shift 2; l=$(left)
  [ -f "$EVALS/$name/summary.json" ] && return
  [ "$l" -lt 40 ] && { echo "skip $name ($l s left)"; return; }
  echo "[$(date +%T)] $name ($l s left)"
  timeout -s INT -k 15 $((l - 10)) python3 -m bigthoughts.cli eval --model "$MODEL" \
    --engine jax --adapter "adapters/gemma3-270m-$adapter.safetensors" --style zeroshot \
    --calculator --max-new-tokens 256 --limit 500 --quiet "$@" --out "$EVALS/$name" \
    > /dev/null
  python3 scripts/headline.py "$EVALS/$name/summary.json" ||
    echo "  $name unfinished: $(wc -l < "$EVALS/$name/results.jsonl") of 500"
}
ev grpo4-vote-calc grpo4 --mode vote --votes 5 --batch-size 100
ev sft-vote-calc sft --mode vote --votes 5 --batch-size 100
ev grpo4-adaptive-calc grpo4 --mode vote --votes 5 --strategy adaptive --batch-size 250
ev sft-adaptive-calc sft --mode vote --votes 5 --strategy adaptive --batch-size 250
ev grpo4-single-calc-jax grpo4 --mode single --batch-size 250
