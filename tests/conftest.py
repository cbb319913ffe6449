"""Shared fixtures for the fast suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    """The official GSM8K files: ``$BIGTHOUGHTS_DATA``, else ``<repo>/../shared/data/gsm8k``."""
    env = os.environ.get("BIGTHOUGHTS_DATA")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "gsm8k"
    missing = [s for s in ("train.jsonl", "test.jsonl") if not (path / s).is_file()]
    if missing:
        pytest.fail(
            f"GSM8K data not found: {path} lacks {', '.join(missing)}. Set BIGTHOUGHTS_DATA to a "
            "directory holding train.jsonl and test.jsonl (or run `bigthoughts download`)."
        )
    return path


@pytest.fixture(scope="session")
def real_model():
    """The embedded Gemma 3 270M (float32), loaded once per test session."""
    from bigthoughts.models.registry import load_model

    return load_model()
