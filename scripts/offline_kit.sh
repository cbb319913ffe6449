#!/usr/bin/env bash
# Packs what scripts/gpu_sitting.sh needs on an offline GPU machine whose Python already
# has JAX (CUDA), Flax, Optax, Orbax, NumPy and PyTorch (e.g. an NVIDIA image), into DEST:
#   wheels/    pure-Python packages that such images lack (google-tunix, qwix, gguf, ...)
#              and sentencepiece 0.2.3 (0.2.2 cannot load the tokenizer we rebuild)
#   gsm8k/     the GSM8K files (from $BIGTHOUGHTS_DATA or ../shared/data/gsm8k)
#   model/     the embedded GGUF in CHUNK_MB pieces and its SHA-256, for transfers that
#              cap a file's size (cat model/part.* > m.gguf; sha256sum -c model/SHA256)
# On the GPU machine (this checkout beside it, as its working directory):
#   pip install --no-index --no-deps --target /tmp/site DEST/wheels/*.whl
#   cat DEST/model/part.* > m.gguf && (cd DEST/model && sha256sum -c SHA256)
#   PYTHONPATH=/tmp/site BIGTHOUGHTS_DATA=DEST/gsm8k MODEL=m.gguf RESULTS=out \
#     bash scripts/gpu_sitting.sh
# Use the machine's own Flax: ours (0.12.8) does not import under JAX 0.11.
#   bash scripts/offline_kit.sh DEST [PYTHON_VERSION=3.12]
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:?usage: offline_kit.sh DEST [PYTHON_VERSION]}
PY=${2:-3.12}
CHUNK_MB=${CHUNK_MB:-50}
mkdir -p "$DEST/wheels" "$DEST/gsm8k" "$DEST/model"
version() { .venv/bin/python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
pkgs=()
for p in google-tunix qwix gguf google-metrax clu dill perfetto tensorboardX; do
  pkgs+=("$p==$(version "$p")")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DEST/wheels" "${pkgs[@]}" \
  "sentencepiece==$(version sentencepiece)"
DATA=${BIGTHOUGHTS_DATA:-../shared/data/gsm8k}
cp "$DATA"/train.jsonl "$DATA"/test.jsonl "$DEST/gsm8k/"
[ -f "$DATA/LICENSE" ] && cp "$DATA/LICENSE" "$DEST/gsm8k/"
GGUF=$(.venv/bin/python -c "from bigthoughts.models.registry import embedded_gguf_path as p; print(p())")
rm -f "$DEST"/model/part.*
split -b "${CHUNK_MB}m" -d -a 2 "$GGUF" "$DEST/model/part."
(cd "$DEST/model" && sha256sum "$GGUF" | sed "s|  .*|  ../m.gguf|" > SHA256)
ls -la "$DEST"/wheels "$DEST"/model
