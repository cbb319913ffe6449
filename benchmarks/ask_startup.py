"""Where a `bigthoughts ask` spends its time: start-up (imports, model load, loading
compiled programs) against generation, for a cold and then warm runs.

    .venv/bin/python benchmarks/ask_startup.py [--runs 3] [--engine jax] [--max-new-tokens 64]

Each run is a fresh process, as a user's is. "generation" is the time `ask` itself
reports (the vote, from the first prompt token to the last answer); "outside" is the
process's wall time minus that. The first run may fill the caches (the converted
parameters, the header, XLA's compilation cache); the runs after it are the warm ones.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"


def one_run(engine: str, max_new_tokens: int) -> dict:
    cmd = [sys.executable, "-m", "bigthoughts.cli", "ask", QUESTION, "--json",
           "--engine", engine, "--max-new-tokens", str(max_new_tokens)]
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    generation = json.loads(out.stdout)["seconds"]
    return {"wall": wall, "generation": generation, "outside": wall - generation}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--engine", default="jax", choices=["jax", "llama.cpp"])
    p.add_argument("--max-new-tokens", type=int, default=64)
    args = p.parse_args()
    runs = [one_run(args.engine, args.max_new_tokens) for _ in range(args.runs)]
    for i, r in enumerate(runs):
        kind = "first" if i == 0 else "warm"
        print(f"run {i + 1} ({kind}): wall {r['wall']:.2f} s = generation "
              f"{r['generation']:.2f} s + outside {r['outside']:.2f} s")
    warm = runs[1:] or runs
    print(f"warm median: outside generation {statistics.median(r['outside'] for r in warm):.2f} s"
          f" (target <= 5 s), generation {statistics.median(r['generation'] for r in warm):.2f} s")


if __name__ == "__main__":
    main()
