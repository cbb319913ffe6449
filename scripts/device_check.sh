#!/usr/bin/env bash
# The device check for a lent GPU (issue 30): a few GRPO steps of the 1B recipe (then the
# 2B one, if time is left) at their real shapes from random weights, each step's rollout
# and update speed, the update's MFU, and the device's measured peak memory beside the
# AOT estimate of the same programs compiled for it (scripts/device_check.py). Under
# 8 minutes; results in $OUT (default out/) as one JSON per recipe and a log.
#   KIT=.device bash scripts/device_check.sh
# KIT: what scripts/offline_kit.sh packs (wheels/, gsm8k/) plus tokenizer.model, the
# Gemma tokenizer bigthoughts rebuilds from the embedded GGUF:
#   bash scripts/offline_kit.sh .device && rm -r .device/model \
#     && cp ~/.cache/bigthoughts/tokenizer-*.model .device/tokenizer.model
# The machine's own Python must have JAX for its accelerator, Flax, Optax and NumPy.
set -uo pipefail
cd "$(dirname "$0")/.."
KIT=${KIT:-.device}
OUT=${OUT:-out}
STEPS=${STEPS:-3}
mkdir -p "$OUT"
if [ -d "$KIT/wheels" ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site "$KIT"/wheels/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export BIGTHOUGHTS_DATA=${BIGTHOUGHTS_DATA:-$KIT/gsm8k}
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/device_check.log"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >> "$OUT/device_check.log" 2>&1
check() {  # RECIPE SECONDS
  local name rc
  name=$(basename "$1" .yaml)
  log "$name: $STEPS steps"
  timeout "$2" python3 scripts/device_check.py "$1" --steps "$STEPS" \
    --tokenizer "$KIT/tokenizer.model" --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1
  rc=$?
  log "$name: exit $rc"
  tail -5 "$OUT/$name.log" >> "$OUT/device_check.log"
}
check configs/gemma3-1b-it-gpu.yaml 300
check configs/gemma2-2b-it-gpu.yaml 150
