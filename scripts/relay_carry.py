"""Carries a relay run from one machine to the next through git, in a few MB.

    .venv/bin/python scripts/relay_carry.py pack RUN CARRY     # before a sitting stops
    .venv/bin/python scripts/relay_carry.py unpack CARRY RUN   # on a fresh machine

A run's own checkpoint (``RUN/checkpoints/step_N``: LoRA weights and AdamW moments in
float32) resumes it exactly on the machine that wrote it, but it is ~44 MB for the 270M
recipe's rank-16 LoRA, and a fresh machine has only what git has. ``pack`` writes the
latest checkpoint with every float array in 2 bytes: float16, scaled per array so that
its largest value sits at 2^14 (so neither the LoRA weights nor the AdamW moments, whose
values are ~1e-9, leave float16's range); integer arrays (the step count) stay exact. Next to it go
the run's text files (config, metrics, samples, each sitting's log, the dev
evaluations' answers) and the
adapter of the best dev evaluation so far, so the curve can still be cut at its best.

The carried state is not bit-exact: each float loses the bits below 2 bytes' precision
once per carry (relative error <= 2^-11 for every value within 2^-28 of its array's
largest, which is all but the moments' far tail). That is below what another
machine already changes: llama.cpp's rollouts differ between CPU kinds (docs/RESULTS.md),
so no run that moves machines can be bit-exact. ``unpack`` restores the checkpoint in the
run's own format, and the unchanged ``train`` command resumes from it ("resuming from
step N").
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bigthoughts.files import atomic_write_json, read_jsonl  # noqa: E402
from bigthoughts.training.relay import CheckpointStore  # noqa: E402

TEXT_FILES = ("config.json", "metrics.jsonl", "samples.jsonl", "sittings.log")
STATE, META = "state.npz", "state.json"


def two_bytes(x: np.ndarray) -> tuple[np.ndarray, float]:
    """``x`` (float32) as float16 scaled so its largest magnitude is 2^14, and the scale:
    every value within 2^-28 of the largest keeps float16's 11 significant bits (relative
    error <= 2^-11); smaller ones (below float16's normal range) lose them."""
    top = float(np.abs(x).max()) if x.size else 0.0
    scale = top / 2.0 ** 14 if top > 0 else 1.0
    return (x / scale).astype(np.float16), scale


def best_eval(metrics: Path) -> int | None:
    """The step of the best dev evaluation so far (most right; the earliest on a tie)."""
    evals = [r for r in read_jsonl(metrics) if "eval/correct" in r] if metrics.exists() else []
    if not evals:
        return None
    return max(evals, key=lambda r: (r["eval/correct"], -r["step"]))["step"]


def pack(run: Path, carry: Path) -> None:
    store = CheckpointStore(run / "checkpoints")
    step = store.latest()
    if step is None:
        raise SystemExit(f"error: {run} has no checkpoint to carry")
    ckpt = run / "checkpoints" / f"step_{step:06d}"
    meta = json.loads((ckpt / "meta.json").read_text())
    arrays, kinds = {}, {}
    with np.load(ckpt / "arrays.npz") as data:
        for key in data.files:
            a = data[key]
            if np.issubdtype(a.dtype, np.floating):
                arrays[key], scale = two_bytes(a.astype(np.float32))
                kinds[key] = {"dtype": str(a.dtype), "scale": scale}
            else:
                arrays[key], kinds[key] = a, {"dtype": str(a.dtype)}
    if carry.exists():
        shutil.rmtree(carry)
    (carry / "evals").mkdir(parents=True)
    np.savez_compressed(carry / STATE, **arrays)
    atomic_write_json(carry / META, {"checkpoint": meta, "dtypes": kinds}, indent=1)
    for name in TEXT_FILES:
        if (run / name).exists():
            shutil.copy2(run / name, carry / name)
    for answers in sorted((run / "evals").glob("step_*.jsonl")):
        shutil.copy2(answers, carry / "evals" / answers.name)
    best = best_eval(run / "metrics.jsonl")
    if best is not None and (run / "evals" / f"step_{best:06d}.safetensors").exists():
        shutil.copy2(run / "evals" / f"step_{best:06d}.safetensors",
                     carry / "evals" / f"step_{best:06d}.safetensors")
    size = sum(f.stat().st_size for f in carry.rglob("*") if f.is_file())
    print(f"carried step {step} of {run} to {carry}: {size / 1e6:.1f} MB")


def unpack(carry: Path, run: Path) -> None:
    if (run / "checkpoints").exists() and CheckpointStore(run / "checkpoints").latest():
        raise SystemExit(f"error: {run} has checkpoints already; it resumes from them "
                         f"(remove {run} to start from the carry instead)")
    info = json.loads((carry / META).read_text())
    with np.load(carry / STATE) as data:
        leaves = []
        for i in range(len(data.files)):
            kind, a = info["dtypes"][f"a{i}"], data[f"a{i}"]
            leaves.append((a.astype(np.float32) * kind["scale"]).astype(kind["dtype"])
                          if "scale" in kind else a)
    run.mkdir(parents=True, exist_ok=True)
    for name in TEXT_FILES:
        if (carry / name).exists():
            shutil.copy2(carry / name, run / name)
    (run / "evals").mkdir(exist_ok=True)
    for f in sorted((carry / "evals").iterdir()):
        shutil.copy2(f, run / "evals" / f.name)
    meta = dict(info["checkpoint"])
    step = int(meta.pop("step"))
    meta.pop("num_leaves", None)
    meta["carried"] = True
    CheckpointStore(run / "checkpoints").save(step, leaves, meta)
    print(f"unpacked step {step} into {run}: rerun the train command to resume")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="RUN's latest checkpoint and files -> CARRY")
    p.add_argument("run", type=Path)
    p.add_argument("carry", type=Path)
    u = sub.add_parser("unpack", help="CARRY -> a resumable RUN")
    u.add_argument("carry", type=Path)
    u.add_argument("run", type=Path)
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args.run, args.carry)
    else:
        unpack(args.carry, args.run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
