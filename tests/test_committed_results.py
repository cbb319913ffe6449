"""Committed results must not name this (or any) machine's absolute paths."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def test_committed_summaries_record_portable_model_sources() -> None:
    files = sorted((ROOT / "docs" / "results").rglob("*.json"))
    assert any(f.name == "summary.json" for f in files)
    for file in files:
        data = json.loads(file.read_text(encoding="utf-8"))
        absolute = [s for s in strings(data) if s.startswith(("/", "~")) or ":\\" in s]
        assert absolute == [], file
        model = data.get("model") if isinstance(data, dict) else None
        source = model.get("source") if isinstance(model, dict) else None  # or a name
        if source is not None:
            assert source.startswith(("pypi:", "../")) or not Path(source).is_absolute(), file
