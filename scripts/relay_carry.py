"""Carries a relay run from one machine to the next through git, in a few MB.

    .venv/bin/python scripts/relay_carry.py pack RUN CARRY     # before a sitting stops
    .venv/bin/python scripts/relay_carry.py unpack CARRY RUN   # on a fresh machine

A run's own checkpoint (``RUN/checkpoints/step_N``: LoRA weights and AdamW moments in
float32) resumes it exactly on the machine that wrote it, but it is ~44 MB for the 270M
recipe's rank-16 LoRA, and a fresh machine has only what git has. ``pack`` writes the
latest checkpoint with the LoRA weights in 2 bytes (float16, scaled per array so that its
largest value sits at 2^14) and the AdamW moments in 1 (log2 of each magnitude quantised
per block of 128, as 8-bit optimizers store them; Dettmers et al., arXiv:2110.02861);
integer arrays (the step count) stay exact: ~15 MB for the 270M recipe, not ~44. Next to it go
the run's text files (config, metrics, samples, each sitting's log, the dev
evaluations' answers) and the
adapter of the best dev evaluation so far, so the curve can still be cut at its best.

The carried state is not bit-exact, once per carry: the weights keep 11 significant bits
(relative error <= 2^-11 for every value within 2^-28 of its array's largest), the
moments their magnitude to within half a level of their block's log range (a few per
cent); ``pack`` prints how far Adam's next update direction moves (relative L2), and
the moments' error fades as they average new gradients (mu in ~10 steps, nu ~100).
Bit-exactness across machines is not to be had anyway: llama.cpp's rollouts differ
between CPU kinds (docs/RESULTS.md). On the machine that wrote it, the run's own float32
checkpoint resumes exactly. ``unpack`` restores the checkpoint in the
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

BLOCK, LEVELS = 128, 127  # log_bytes: values a block, magnitude levels
TEXT_FILES = ("config.json", "metrics.jsonl", "samples.jsonl", "sittings.log")
# the weights and the optimizer's state in two files, each under 10 MB for the 270M
WEIGHTS, OPTIMIZER, META = "weights.npz", "optimizer.npz", "state.json"


def two_bytes(x: np.ndarray) -> tuple[np.ndarray, float]:
    """``x`` (float32) as float16 scaled so its largest magnitude is 2^14, and the scale:
    every value within 2^-28 of the largest keeps float16's 11 significant bits (relative
    error <= 2^-11); smaller ones (below float16's normal range) lose them."""
    top = float(np.abs(x).max()) if x.size else 0.0
    scale = top / 2.0 ** 14 if top > 0 else 1.0
    return (x / scale).astype(np.float16), scale


def log_bytes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x`` in one byte a value: per block of ``BLOCK`` values, log2 |x| quantised evenly
    between the block's smallest and largest (1..127, the top bit the sign; 0 is 0), and
    the blocks' (smallest, largest) log2. A non-zero value never becomes 0 (Adam divides
    by the second moment's root), and each keeps its magnitude to within half a level."""
    flat = np.ravel(x).astype(np.float64)
    pad = -len(flat) % BLOCK
    blocks = np.pad(flat, (0, pad)).reshape(-1, BLOCK)
    mag = np.abs(blocks)
    logs = np.where(mag > 0, np.log2(np.where(mag > 0, mag, 1.0)), np.nan)
    empty = np.isnan(logs).all(axis=1)
    lo = np.where(empty, 0.0, np.nanmin(np.where(empty[:, None], 0.0, logs), axis=1))
    hi = np.where(empty, 0.0, np.nanmax(np.where(empty[:, None], 0.0, logs), axis=1))
    span = np.where(hi > lo, hi - lo, 1.0)[:, None]
    level = np.rint((np.nan_to_num(logs, nan=0.0) - lo[:, None]) / span * (LEVELS - 1)) + 1
    codes = np.where(mag > 0, level, 0).astype(np.uint8) | np.where(blocks < 0, 128, 0
                                                                    ).astype(np.uint8)
    return codes.ravel()[:len(flat)], np.stack([lo, hi], axis=1).astype(np.float32)


def from_log_bytes(codes: np.ndarray, bounds: np.ndarray, shape) -> np.ndarray:
    """The inverse of :func:`log_bytes` (float32, ``shape``)."""
    pad = -len(codes) % BLOCK
    c = np.pad(codes, (0, pad)).reshape(-1, BLOCK).astype(np.int64)
    lo, hi = bounds[:, :1].astype(np.float64), bounds[:, 1:].astype(np.float64)
    level = c & 127
    mag = np.exp2(lo + (level - 1) * (hi - lo) / (LEVELS - 1))
    out = np.where(level > 0, mag, 0.0) * np.where(c & 128, -1.0, 1.0)
    return out.ravel()[:len(codes)].reshape(shape).astype(np.float32)


def weight_leaves(meta: dict, arrays: list[np.ndarray]) -> int:
    """How many leading leaves are the trainable weights (the rest: the optimizer's).
    The checkpoint says so (``leaves_per_key``); a run saved before it did keeps its
    weights before its first integer leaf (optax's step count)."""
    counts = meta.get("leaves_per_key")
    if counts:
        return int(counts["lora"] if "lora" in counts else counts["params"])
    return next(i for i, a in enumerate(arrays) if np.issubdtype(a.dtype, np.integer))


def update_error(exact: list[np.ndarray], carried: list[np.ndarray]) -> float | None:
    """Relative L2 difference of Adam's direction mu / sqrt(nu) computed from the carried
    moments and from the exact ones (the optimizer leaves, mu then nu, by shape)."""
    floats = [(a, b) for a, b in zip(exact, carried, strict=True)
              if np.issubdtype(a.dtype, np.floating)]
    if len(floats) % 2:
        return None
    half = len(floats) // 2
    num = den = 0.0
    for (mu, mu_c), (nu, nu_c) in zip(floats[:half], floats[half:], strict=True):
        if mu.shape != nu.shape:
            return None
        d = mu / (np.sqrt(nu) + 1e-8)
        num += float(((mu_c / (np.sqrt(nu_c) + 1e-8) - d) ** 2).sum())
        den += float((d ** 2).sum())
    return float(np.sqrt(num / den)) if den else None


def restore_leaf(arrays: dict, kinds: dict, key: str) -> np.ndarray:
    """A checkpoint leaf from its carried form (``pack``'s encodings)."""
    kind = kinds[key]
    if kind.get("log"):
        return from_log_bytes(arrays[key], arrays[key + "b"], tuple(kind["shape"]))
    if "scale" in kind:
        return (arrays[key].astype(np.float32) * kind["scale"]).astype(kind["dtype"])
    return arrays[key]


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
    with np.load(ckpt / "arrays.npz") as data:
        leaves = [data[f"a{i}"] for i in range(len(data.files))]
    weights = weight_leaves(meta, leaves)
    arrays, kinds, carried = {}, {}, []
    for i, a in enumerate(leaves):
        key = f"a{i}"
        if not np.issubdtype(a.dtype, np.floating):
            arrays[key], kinds[key] = a, {"dtype": str(a.dtype)}
        elif i < weights:  # the weights: 2 bytes
            arrays[key], scale = two_bytes(a.astype(np.float32))
            kinds[key] = {"dtype": str(a.dtype), "scale": scale}
        else:  # the optimizer's moments: 1 byte
            arrays[key], arrays[key + "b"] = log_bytes(a)
            kinds[key] = {"dtype": str(a.dtype), "shape": list(a.shape), "log": True}
        carried.append(restore_leaf(arrays, kinds, key))
    error = update_error(leaves[weights:], carried[weights:])
    if carry.exists():
        shutil.rmtree(carry)
    (carry / "evals").mkdir(parents=True)
    first = {k: v for k, v in arrays.items() if int(k[1:].rstrip("b")) < weights}
    np.savez_compressed(carry / WEIGHTS, **first)
    np.savez_compressed(carry / OPTIMIZER, **{k: v for k, v in arrays.items() if k not in first})
    atomic_write_json(carry / META, {"checkpoint": meta, "dtypes": kinds,
                                     "adam_direction_error": error}, indent=1)
    for name in TEXT_FILES:
        if (run / name).exists():
            shutil.copy2(run / name, carry / name)
    for answers in sorted((run / "evals").glob("step_*.jsonl")):
        shutil.copy2(answers, carry / "evals" / answers.name)
    best = best_eval(run / "metrics.jsonl")  # step 0's weights are the recipe's own start
    if best and (run / "evals" / f"step_{best:06d}.safetensors").exists():
        shutil.copy2(run / "evals" / f"step_{best:06d}.safetensors",
                     carry / "evals" / f"step_{best:06d}.safetensors")
    size = sum(f.stat().st_size for f in carry.rglob("*") if f.is_file())
    print(f"carried step {step} of {run} to {carry}: {size / 1e6:.1f} MB; Adam's update "
          f"direction from the carried moments is {error:.2%} (relative L2) off the exact one"
          if error is not None else f"carried step {step} of {run} to {carry}: "
          f"{size / 1e6:.1f} MB")


def unpack(carry: Path, run: Path) -> None:
    if (run / "checkpoints").exists() and CheckpointStore(run / "checkpoints").latest():
        raise SystemExit(f"error: {run} has checkpoints already; it resumes from them "
                         f"(remove {run} to start from the carry instead)")
    if not (carry / META).is_file():
        raise SystemExit(f"error: {carry} holds no carry ({META} is missing)")
    info = json.loads((carry / META).read_text())
    arrays = {}
    for name in (WEIGHTS, OPTIMIZER):
        with np.load(carry / name) as data:
            arrays.update({k: data[k] for k in data.files})
    leaves = [restore_leaf(arrays, info["dtypes"], f"a{i}") for i in range(len(info["dtypes"]))]
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
