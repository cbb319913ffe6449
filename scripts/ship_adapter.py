"""Ships a trained adapter as the package's default model, with the evaluation behind it.

    .venv/bin/python scripts/ship_adapter.py ADAPTER --eval RUN [--eval RUN ...]
        --base-eval RUN [--style zeroshot] [--calculator | --no-calculator] [--dry-run]

Copies ADAPTER to ``bigthoughts/shipped/gemma3-270m-gsm8k.safetensors`` and writes the
manifest ``bigthoughts/models/shipped.py`` reads: the file's SHA-256, the prompt style
and calculator setting, and a summary of each ``--eval`` run (accuracy with its Wilson
interval, strict format, and McNemar against ``--base-eval`` on the questions both
answered). The paths in the manifest are relative to the repository. It prints the
summary; with ``--dry-run`` it writes nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bigthoughts.evaluation.evaluate import SUMMARY, read_results  # noqa: E402
from bigthoughts.evaluation.metrics import mcnemar, wilson_interval  # noqa: E402
from bigthoughts.files import atomic_write_json, file_sha256  # noqa: E402
from bigthoughts.models.shipped import MANIFEST, SHIPPED_DIR  # noqa: E402

NAME = "gemma3-270m-gsm8k"
LIMIT_BYTES = 10 * 1024 * 1024


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return path.name


def _outcomes(run: Path) -> dict[str, bool]:
    return {r["id"]: bool(r["correct"]) for r in read_results(run / "results.jsonl")}


def _calculator(run: Path) -> bool | None:
    try:
        return bool(json.loads((run / "run.json").read_text())["config"]["calculator"])
    except (OSError, ValueError, KeyError):
        return None


def run_summary(run: Path, base: Path) -> dict:
    """One evaluation run's numbers, and its paired test against the base run."""
    summary = json.loads((run / SUMMARY).read_text(encoding="utf-8"))
    n, k = summary["n"], summary["correct"]
    low, high = wilson_interval(k, n)
    test = mcnemar(_outcomes(base), _outcomes(run))
    return {"run": _relative(run), "questions": n, "correct": k,
            "accuracy": round(k / n, 5), "wilson_95": [round(low, 5), round(high, 5)],
            "format_strict": round(summary["format_strict"], 5),
            "calculator": _calculator(run),
            "vs_base": {"base_run": _relative(base), "paired_questions": test.n,
                        "only_this_right": test.b01, "only_base_right": test.b10,
                        "mcnemar_p": test.p_value, "method": test.method}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("adapter", type=Path)
    ap.add_argument("--eval", dest="evals", type=Path, action="append", required=True)
    ap.add_argument("--base-eval", type=Path, required=True)
    ap.add_argument("--style", default="zeroshot")
    ap.add_argument("--calculator", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    if not args.adapter.is_file():
        ap.error(f"adapter file does not exist: {args.adapter}")
    if args.adapter.stat().st_size > LIMIT_BYTES:
        ap.error(f"{args.adapter} is over 10 MB: too large to ship in git")
    for run in (*args.evals, args.base_eval):
        if not (run / SUMMARY).is_file():
            ap.error(f"{run} is not a finished evaluation run (no {SUMMARY})")
    manifest = {
        "name": NAME, "base": "gemma3-270m", "adapter": f"{NAME}.safetensors",
        "sha256": file_sha256(args.adapter), "style": args.style,
        "calculator": args.calculator, "trained_from": _relative(args.adapter),
        "summary": {"evaluations": [run_summary(run, args.base_eval) for run in args.evals]},
    }
    print(json.dumps(manifest, indent=1))
    if not args.dry_run:
        SHIPPED_DIR.mkdir(exist_ok=True)
        shutil.copyfile(args.adapter, SHIPPED_DIR / manifest["adapter"])
        atomic_write_json(SHIPPED_DIR / MANIFEST, manifest, indent=1)
        print(f"shipped {manifest['adapter']} ({manifest['sha256'][:16]}...)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
