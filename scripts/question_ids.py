"""Lists GSM8K question ids by the length of their reference solution.

    .venv/bin/python scripts/question_ids.py --split train --max-steps 2 --out IDS.txt

A step is one line of the worked solution before its ``#### N`` line (GSM8K's
solutions hold 2 to 11). The list feeds ``bigthoughts eval --ids`` (e.g. to probe a
model on the short problems first) or GRPO's ``data.ids_file``. ``--skip N`` leaves out
the first N of them (e.g. those a probe with ``--limit N`` has already seen);
``--exclude PATH`` leaves out the ids of an id list, every question a GRPO run drew
(its ``samples.jsonl``), every question an SFT run trained on (its ``metrics.jsonl``) or
every question an evaluation answered (its ``results.jsonl``). ``--sample N --seed S``
keeps a seeded random N of what is left (e.g. a fixed dev split), listed in file order.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bigthoughts.data import DataError, Example, load_gsm8k, read_ids  # noqa: E402
from bigthoughts.files import JsonlError, atomic_write_bytes, read_jsonl  # noqa: E402


def solution_steps(example: Example) -> int:
    """Lines of the reference solution before its ``#### N`` line."""
    work = example.answer.split("####", 1)[0]
    return sum(1 for line in work.split("\n") if line.strip())


def excluded_ids(path: Path) -> set[str]:
    """The ids an id list names, those a GRPO run's ``samples.jsonl`` drew, those an SFT
    run's ``metrics.jsonl`` trained on, or those an evaluation's ``results.jsonl``
    answered."""
    if path.suffix != ".jsonl":
        return set(read_ids(path))
    try:
        rows = read_jsonl(path)
    except (OSError, JsonlError) as err:
        raise DataError(f"could not read {path}: {err}") from err
    ids = {c["example"] for r in rows for c in r.get("completions", []) if "example" in c}
    ids |= {r["id"] for r in rows if "id" in r}  # an evaluation's results.jsonl
    ids |= {i for r in rows for i in r.get("examples", [])}  # an SFT run's metrics.jsonl
    if not ids:
        raise DataError(f"{path} names no questions: is it a GRPO run's samples.jsonl, an "
                        f"SFT run's metrics.jsonl or an evaluation's results.jsonl?")
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="train", choices=["train", "test"])
    parser.add_argument("--data", default=None, help="GSM8K dir (default: $BIGTHOUGHTS_DATA)")
    parser.add_argument("--min-steps", type=int, default=1)
    parser.add_argument("--max-steps", type=int, required=True)
    parser.add_argument("--skip", type=int, default=0,
                        help="leave out the first N matching ids")
    parser.add_argument("--exclude", type=Path, action="append", default=[],
                        help="leave out these ids: an id list, a GRPO run's samples.jsonl or "
                        "an evaluation's results.jsonl")
    parser.add_argument("--sample", type=int, default=None,
                        help="keep a seeded random N of the matching ids (in file order)")
    parser.add_argument("--seed", type=int, default=0, help="the seed of --sample")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    if not 1 <= args.min_steps <= args.max_steps:
        parser.error("need 1 <= --min-steps <= --max-steps")
    if args.skip < 0:
        parser.error("--skip must be >= 0")
    if args.sample is not None and args.sample < 1:
        parser.error("--sample must be >= 1")
    try:
        examples = load_gsm8k(args.split, args.data)
        leave_out = set().union(*(excluded_ids(p) for p in args.exclude))
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    ids = [e.id for e in examples if args.min_steps <= solution_steps(e) <= args.max_steps]
    skipped = f", after the first {args.skip}" if args.skip else ""
    ids = [i for i in ids[args.skip:] if i not in leave_out]
    if args.exclude:
        skipped += f", without those in {', '.join(str(p) for p in args.exclude)}"
    if args.sample is not None:
        if args.sample > len(ids):
            print(f"error: --sample {args.sample} but only {len(ids)} ids match",
                  file=sys.stderr)
            return 2
        chosen = set(np.random.default_rng(args.seed).choice(len(ids), args.sample,
                                                               replace=False).tolist())
        ids = [i for k, i in enumerate(ids) if k in chosen]
        skipped += f", a random {args.sample} of them (seed {args.seed})"
    header = (f"# {len(ids)} of {len(examples)} {args.split} questions whose solution has "
              f"{args.min_steps} to {args.max_steps} steps{skipped} (scripts/question_ids.py)\n")
    atomic_write_bytes(args.out, (header + "".join(f"{i}\n" for i in ids)).encode())
    print(f"{len(ids)} of {len(examples)} questions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
