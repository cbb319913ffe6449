"""One benchmark, two revisions of the code, side by side in one run: what a change did.

    .venv/bin/python benchmarks/revisions.py BASE [--rounds 1] -- grpo_step.py --sides ours

Checks BASE (any git revision) out into a temporary worktree, copies today's
``benchmarks/`` over its own (so both sides run the same measurement), then runs the
benchmark alternately on BASE and on the working tree, ``--rounds`` times each, in
fresh processes on the same machine. Each side's output is printed; a benchmark whose
last output line is a JSON object gets every numeric value it shares with the other side
tabled with the ratio working tree / BASE (the median over rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def numbers(data, prefix: str = "") -> dict[str, float]:
    """Flattened numeric leaves of a JSON value: ``{"ours.step_s": 31.2, ...}``."""
    if isinstance(data, bool):
        return {}
    if isinstance(data, int | float):
        return {prefix.rstrip("."): float(data)}
    if isinstance(data, dict):
        out: dict[str, float] = {}
        for k, v in data.items():
            out.update(numbers(v, f"{prefix}{k}."))
        return out
    return {}


def run(tree: Path, bench: list[str]) -> dict[str, float]:
    script = tree / "benchmarks" / bench[0]
    env = dict(os.environ)
    shared = ROOT.parent / "shared" / "data" / "gsm8k"  # the base tree is elsewhere
    if "BIGTHOUGHTS_DATA" not in env and shared.is_dir():
        env["BIGTHOUGHTS_DATA"] = str(shared)
    proc = subprocess.run([sys.executable, str(script), *bench[1:]], cwd=tree, text=True,
                          capture_output=True, env=env)
    print(proc.stdout[-6000:], flush=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], flush=True)
        return {}
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    try:
        return numbers(json.loads(last))
    except json.JSONDecodeError:
        return {}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        raise SystemExit("usage: revisions.py BASE [--rounds N] -- BENCHMARK.py [ARGS...]")
    split = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("base")
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args(argv[:split])
    bench = argv[split + 1:]
    if not bench or not (ROOT / "benchmarks" / bench[0]).is_file():
        raise SystemExit(f"no benchmark {bench[:1]} in benchmarks/")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(base), args.base],
                       cwd=ROOT, check=True)
        try:
            shutil.rmtree(base / "benchmarks")
            shutil.copytree(ROOT / "benchmarks", base / "benchmarks")
            results: dict[str, list[dict[str, float]]] = {"base": [], "now": []}
            for i in range(args.rounds):
                for side, tree in (("base", base), ("now", ROOT)):
                    label = args.base if side == "base" else "working tree"
                    print(f"=== round {i + 1}: {side} ({label})", flush=True)
                    results[side].append(run(tree, bench))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT)
    keys = sorted(set().union(*results["base"]) & set().union(*results["now"]))
    print(f"\n{'value':40} {'base':>10} {'now':>10} {'now/base':>9}")
    for key in keys:
        b = statistics.median(r[key] for r in results["base"] if key in r)
        n = statistics.median(r[key] for r in results["now"] if key in r)
        ratio = f"{n / b:9.2f}" if b else f"{'n/a':>9}"
        print(f"{key:40} {b:10.3f} {n:10.3f} {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
