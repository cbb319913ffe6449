"""The periodic held-out evaluation every training stage shares: greedy answers to
questions the stage never trains on, scored, summarised and kept per step.

    rows = greedy_answers(engine, fmt, examples, max_new_tokens=192)
    record = {"step": 60, **summary(rows)}   # eval/accuracy, eval/correct, ...
    write_answers(out / "evals", 60, rows)   # evals/step_000060.jsonl
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bigthoughts.answers import answers_equal, extract_answer
from bigthoughts.data import Example, PromptFormat
from bigthoughts.files import atomic_write_text
from bigthoughts.inference.contract import Engine
from bigthoughts.rewards import is_exact_format

BATCH = 16  # questions per generation call


def greedy_answers(engine: Engine, fmt: PromptFormat, examples: Sequence[Example], *,
                   max_new_tokens: int, calculator: bool = False) -> list[dict]:
    """One row per question: its id, extracted answer, gold, whether they agree, whether
    the completion is in the exact format, its length and how it ended."""
    rows = []
    for start in range(0, len(examples), BATCH):
        chunk = examples[start:start + BATCH]
        gens = engine.generate([fmt.prompt(e.question) for e in chunk], temperatures=0.0,
                               max_new_tokens=max_new_tokens, stop=fmt.stop,
                               stop_inclusive=fmt.stop_inclusive,
                               **({"calculator": True} if calculator else {}))
        for g, e in zip(gens, chunk, strict=True):
            answer = extract_answer(g.text)
            rows.append({"id": e.id, "answer": answer, "gold": e.gold,
                         "correct": answers_equal(answer, e.gold),
                         "format": is_exact_format(g.text), "tokens": g.num_tokens,
                         "finish_reason": g.finish_reason})
    return rows


def summary(rows: Sequence[dict]) -> dict:
    """The metrics of an evaluation's rows (``eval/...`` keys)."""
    return {"eval/accuracy": float(np.mean([r["correct"] for r in rows])),
            "eval/correct": int(sum(r["correct"] for r in rows)),
            "eval/questions": len(rows),
            "eval/format_compliance": float(np.mean([r["format"] for r in rows])),
            "eval/truncated": float(np.mean([r["finish_reason"] == "length" for r in rows]))}


def write_answers(folder: Path, step: int, rows: Sequence[dict]) -> Path:
    """``folder/step_NNNNNN.jsonl``: the rows, written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:06d}.jsonl"
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return path
