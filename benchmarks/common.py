"""Shared helpers for the benchmarks: timing and the questions they run on."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

QUESTIONS_FALLBACK = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
    "clips in May. How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of "
    "babysitting. How much did she earn?",
]


def questions(n: int) -> list[str]:
    """The first n GSM8K test questions ($BIGTHOUGHTS_DATA or ../shared/data/gsm8k)."""
    from pathlib import Path

    from bigthoughts.data import load_gsm8k

    root = Path(__file__).resolve().parents[1]
    path = os.environ.get("BIGTHOUGHTS_DATA") or root.parent / "shared" / "data" / "gsm8k"
    try:
        return [e.question for e in load_gsm8k("test", path, limit=n)]
    except Exception:  # noqa: BLE001 - a benchmark still runs without the data set
        return (QUESTIONS_FALLBACK * n)[:n]


@contextmanager
def timer(result: dict, key: str):
    start = time.perf_counter()
    yield
    result[key] = time.perf_counter() - start


def peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
