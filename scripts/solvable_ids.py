"""Picks the training questions a model solves sometimes, for GRPO's ``data.ids_file``.

    .venv/bin/python scripts/solvable_ids.py RUN [RUN ...] --out IDS.txt
        [--min-correct 1] [--max-correct K-1]

GRPO learns only from groups whose rewards differ: a question the model never solves
(or always solves) gives every completion the same correctness reward, so its group
carries no signal for solving. RUN is a ``bigthoughts eval --split train --mode vote``
run directory (k sampled traces per question, e.g. the SFT adapter with the
calculator). A question is kept when between ``--min-correct`` and ``--max-correct``
of its traces reach the gold answer (default: 1 to k - 1). Several runs are merged
by id, their traces pooled. It prints the distribution of correct traces per question
and writes the kept ids, one per line, with a header that says how they were chosen.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bigthoughts.answers import answers_equal  # noqa: E402
from bigthoughts.evaluation.evaluate import RESULTS, RunDirError, read_results  # noqa: E402
from bigthoughts.files import atomic_write_bytes  # noqa: E402


def correct_traces(runs: list[Path]) -> dict[str, tuple[int, int]]:
    """``{id: (correct traces, traces)}`` over the runs' ``results.jsonl``."""
    tally: dict[str, list[int]] = {}
    for run in runs:
        path = run / RESULTS
        if not path.is_file():
            raise RunDirError(f"{run} has no {RESULTS}; is it a `bigthoughts eval` run?")
        for record in read_results(path):
            right = sum(answers_equal(t.get("answer"), record["gold"])
                        for t in record.get("traces", []))
            counts = tally.setdefault(record["id"], [0, 0])
            counts[0] += right
            counts[1] += len(record.get("traces", []))
    return {k: (v[0], v[1]) for k, v in tally.items()}


def choose(tally: dict[str, tuple[int, int]], low: int, high: int | None) -> list[str]:
    """Ids with ``low <= correct <= high`` (``high`` None: traces - 1), in id order."""
    return sorted(i for i, (right, n) in tally.items()
                  if low <= right <= (n - 1 if high is None else high))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--min-correct", type=int, default=1)
    parser.add_argument("--max-correct", type=int, default=None,
                        help="default: one fewer than the question's traces")
    args = parser.parse_args(argv)
    if args.min_correct < 0 or (args.max_correct is not None
                                and args.max_correct < args.min_correct):
        parser.error("need 0 <= --min-correct <= --max-correct")
    try:
        tally = correct_traces(args.runs)
    except RunDirError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not tally:
        print("error: the runs hold no finished questions", file=sys.stderr)
        return 2
    ids = choose(tally, args.min_correct, args.max_correct)
    histogram = Counter(right for right, _ in tally.values())
    print(f"{len(tally)} questions; correct traces per question: "
          + ", ".join(f"{k}: {histogram[k]}" for k in sorted(histogram)))
    print(f"kept {len(ids)} with {args.min_correct} to "
          f"{'k - 1' if args.max_correct is None else args.max_correct} correct traces")
    runs = " ".join(r.name for r in args.runs)
    header = (f"# {len(ids)} of {len(tally)} questions with {args.min_correct}.."
              f"{'k-1' if args.max_correct is None else args.max_correct} correct traces "
              f"in {runs} (scripts/solvable_ids.py)\n")
    atomic_write_bytes(args.out, (header + "".join(f"{i}\n" for i in ids)).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
