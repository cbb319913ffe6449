#!/usr/bin/env bash
# Creates .venv (pinned), installs bigthoughts with the extras the tests cover (dev, serve,
# llamacpp, wandb), runs ruff and the test suite.
# GSM8K is read from $BIGTHOUGHTS_DATA or ../shared/data/gsm8k beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -c requirements.lock -e '.[dev,serve,llamacpp,wandb]'
.venv/bin/ruff check bigthoughts tests scripts benchmarks
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
