"""One line from an evaluation's summary.json (the GPU sitting scripts print it per run).

    python3 scripts/headline.py evals/grpo4-vote-calc/summary.json

Exits 1 (silently) when the file is missing or incomplete, i.e. the evaluation did not
finish."""

from __future__ import annotations

import json
import sys


def headline(summary: dict) -> str:
    """Questions, accuracy, strict format, tokens/s and wall time of one run."""
    return (f"  n {summary['n']} accuracy {summary['accuracy']:.4f} "
            f"strict format {summary['format_strict']:.4f} "
            f"tokens/s {summary['tokens_per_second']:.1f} wall s {summary['wall_seconds']:.1f}")


if __name__ == "__main__":
    try:
        with open(sys.argv[1], encoding="utf-8") as f:
            print(headline(json.load(f)))
    except (OSError, IndexError, KeyError, TypeError, ValueError):
        raise SystemExit(1) from None
