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


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); NaN for no values."""
    import math

    if not values:
        return float("nan")
    ranked = sorted(values)
    return ranked[min(len(ranked) - 1, max(0, math.ceil(q / 100 * len(ranked)) - 1))]


@contextmanager
def server_process(argv_for_port, *, what: str, timeout_s: float = 180.0, env=None):
    """Starts a server (``argv_for_port(port)``: its command line for a free loopback
    port), waits until its ``/health`` answers 200 and yields ``(process, base URL)``;
    terminates it on exit. Its stderr goes to a temporary file (a pipe nobody reads
    would fill and stall it), whose tail is the error when it does not start."""
    import subprocess
    import tempfile

    import httpx

    from bigthoughts.serve.app import free_port

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(argv_for_port(port), stdout=subprocess.DEVNULL, stderr=log,
                                text=True, env=env)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"{what} did not start: {log.read()[-2000:]}")
                time.sleep(0.2)
            yield proc, base
        finally:
            proc.terminate()
            proc.wait(timeout=30)


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
