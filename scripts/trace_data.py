"""Turns the model's own traces on GSM8K *train* into a GSM8K-format file for ``bigthoughts sft``.

    .venv/bin/python scripts/trace_data.py --out runs/traces.jsonl \\
        docs/results/gemma3-270m-v2/grpo4/samples.jsonl ...

Sources are GRPO runs' ``samples.jsonl`` (every completion drawn) or evaluations'
``results.jsonl`` on the train split (every trace). Each well-formed trace (exactly
``<reasoning>…</reasoning> <answer>…</answer>``, a numeric answer) becomes one row
``{"question", "answer": "<reasoning lines>\\n#### <its answer>"}``, the shape of
GSM8K's own rows, so ``data.path`` of an SFT recipe can point at the file. Traces
that give the same row are written once. ``--right-only`` keeps the traces whose answer is right
(rejection-sampling fine-tuning); without it every trace is kept, for
``data.loss_on: results``, which learns only the calculator-checked results in them.

Questions of the *test* split are refused: a model must never be trained on them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bigthoughts.answers import answers_equal, extract_answer  # noqa: E402
from bigthoughts.data import DataError, load_gsm8k  # noqa: E402
from bigthoughts.files import JsonlError, atomic_write_bytes, read_jsonl  # noqa: E402
from bigthoughts.rewards import is_exact_format  # noqa: E402

_REASONING = re.compile(r"<reasoning>(.*?)</reasoning>", re.DOTALL)
_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def _objects(row: dict, key: str, where: str) -> list[dict]:
    items = row.get(key, [])
    if not isinstance(items, list) or not all(isinstance(c, dict) for c in items):
        raise DataError(f"{where}: {key!r} must be a list of objects")
    return items


def source_traces(path: Path) -> list[tuple[str, str, str | None]]:
    """``(question id, trace text, question text or None)`` of a GRPO ``samples.jsonl``
    or an eval ``results.jsonl`` (whose rows also carry the question)."""
    try:
        rows = read_jsonl(path)
    except (OSError, JsonlError) as err:
        raise DataError(f"could not read {path}: {err}") from err
    found = []
    for n, row in enumerate(rows, start=1):
        where = f"{path}: line {n}"
        if not isinstance(row, dict):
            raise DataError(f"{where} is not a JSON object")
        pairs = [(c.get("example"), c.get("text"), None)
                 for c in _objects(row, "completions", where)]
        pairs += [(row.get("id"), t.get("text"), row.get("question"))
                  for t in _objects(row, "traces", where)]
        if any(not isinstance(i, str) or not isinstance(t, str) for i, t, _ in pairs):
            raise DataError(f"{where}: a trace without a string question id or text")
        found += pairs
    if not found:
        raise DataError(f"{path} holds no traces: is it a GRPO run's samples.jsonl or an "
                        f"evaluation's results.jsonl?")
    return found


def trace_row(question: str, gold: str, text: str, *, right_only: bool) -> dict | None:
    """The GSM8K-format row of one trace, or None if it is not kept."""
    if not is_exact_format(text):
        return None
    answer = extract_answer(text, strict=True)
    if answer is None or not _NUMBER.fullmatch(answer):
        return None
    if right_only and not answers_equal(answer, gold):
        return None
    reasoning = _REASONING.search(text).group(1).strip()
    if not reasoning or "####" in reasoning:
        return None
    return {"question": question, "answer": f"{reasoning}\n#### {answer}"}


def build(sources: list[Path], data: str | None, *, right_only: bool) -> tuple[list[dict], dict]:
    """The rows, and counts of what was read, kept and left out."""
    traces = [t for path in sources for t in source_traces(path)]
    tested = sorted({i for i, _, _ in traces if not i.startswith("train-")})
    if tested:
        raise DataError(f"{len(tested)} question(s) are not from the train split "
                        f"(e.g. {tested[0]}): traces on test questions must never be "
                        f"trained on")
    train = {e.id: e for e in load_gsm8k("train", data)}
    unknown = sorted({i for i, _, _ in traces if i not in train})
    mismatched = sorted({i for i, _, q in traces
                         if i in train and q is not None and q != train[i].question})
    if unknown or mismatched:
        example = (unknown or mismatched)[0]
        raise DataError(f"{len(unknown) + len(mismatched)} question id(s) do not match "
                        f"GSM8K train (e.g. {example}): was it a different copy of the data?")
    rows, seen = [], set()
    for qid, text, _ in traces:
        row = trace_row(train[qid].question, train[qid].gold, text, right_only=right_only)
        key = None if row is None else (row["question"], row["answer"])
        if key is not None and key not in seen:  # traces differing only in spacing: once
            seen.add(key)
            rows.append(row)
    counts = {"traces": len(traces), "kept": len(rows),
              "questions": len({r["question"] for r in rows})}
    return rows, counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", type=Path,
                        help="GRPO samples.jsonl or train-split eval results.jsonl files")
    parser.add_argument("--data", default=None, help="GSM8K dir (default: $BIGTHOUGHTS_DATA)")
    parser.add_argument("--right-only", action="store_true",
                        help="keep only traces with the right answer")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        rows, counts = build(args.sources, args.data, right_only=args.right_only)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not rows:
        print("error: no trace was kept", file=sys.stderr)
        return 2
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.out, "".join(json.dumps(r) + "\n" for r in rows).encode())
    except OSError as err:
        print(f"error: could not write {args.out}: {err}", file=sys.stderr)
        return 2
    print(f"{counts['kept']} distinct traces on {counts['questions']} questions -> "
          f"{args.out} (read {counts['traces']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
