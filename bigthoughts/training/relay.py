"""Relay training: time budgets, and checkpoints that survive kill -9.

A run started with ``--time-budget 8h45m`` checkpoints before the budget ends and
exits with ``EXIT_RELAY`` (75, EX_TEMPFAIL); rerunning the same command resumes.

Checkpoint layout (one directory per step, written then renamed into place)::

    checkpoints/step_000010/arrays.npz   # LoRA params + optimizer state leaves
    checkpoints/step_000010/meta.json    # step, data position, seed, metrics; written last
    checkpoints/LATEST                   # "step_000010", replaced atomically

A step directory only becomes visible by a rename after its files are fsynced
(``files.atomic_directory``), so a kill at any moment leaves either the previous
checkpoint or the new one, never a half-written one. We use this plain format rather
than Orbax's async CheckpointManager so that nothing runs in background threads a kill
could cut.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import bigthoughts.training.hosts as hosts
from bigthoughts.files import atomic_directory, atomic_write_text

EXIT_RELAY = 75
# a run that stopped because its steps carried no policy gradient (grpo.guard_patience)
EXIT_NO_SIGNAL = 76
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> float:
    """'8h45m' -> 31500.0 seconds; also '90s', '1.5h', '2d', or a bare number of seconds."""
    text = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([dhms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"cannot read duration {text!r}: use e.g. 8h45m, 30m, 90s")
    return float(sum(float(n) * _UNITS[u] for n, u in parts))


@dataclass
class Deadline:
    """Decides whether another step fits before the budget ends."""

    end: float | None  # time.monotonic() value, None = no deadline
    safety: float = 1.5  # assume the next step may take 1.5x the slowest seen

    @classmethod
    def from_budget(cls, budget: str | float | None) -> Deadline:
        if budget is None:
            return cls(None)
        seconds = parse_duration(budget) if isinstance(budget, str) else float(budget)
        return cls(time.monotonic() + seconds)

    def allows(self, step_seconds: float, save_seconds: float) -> bool:
        if self.end is None:
            return True
        need = self.safety * step_seconds + 2.0 * save_seconds + 5.0
        return time.monotonic() + need < self.end


class CheckpointStore:
    """Atomic step checkpoints of a pytree of arrays plus JSON metadata."""

    def __init__(self, root: Path, *, keep: int = 2):
        self.root = Path(root)
        self.keep = keep

    def save(self, step: int, tree: Any, meta: dict) -> Path:
        name = f"step_{step:06d}"
        # every process takes part in gathering sharded arrays; process 0 writes
        arrays = [hosts.host_copy(x) for x in jax.tree_util.tree_leaves(tree)]
        if hosts.writer():
            with atomic_directory(self.root / name) as tmp:
                with open(tmp / "arrays.npz", "wb") as fh:
                    np.savez(fh, **{f"a{i}": a for i, a in enumerate(arrays)})
                (tmp / "meta.json").write_text(
                    json.dumps({**meta, "step": step, "num_leaves": len(arrays)}, indent=1))
            atomic_write_text(self.root / "LATEST", name)
            self._prune()
        hosts.barrier(f"checkpoint {name}")
        return self.root / name

    def steps(self) -> list[int]:
        if not self.root.exists():
            return []
        found = []
        for d in self.root.iterdir():
            m = re.fullmatch(r"step_(\d+)", d.name)
            if m and (d / "meta.json").exists() and (d / "arrays.npz").exists():
                found.append(int(m.group(1)))
        return sorted(found)

    def latest(self) -> int | None:
        marker = self.root / "LATEST"
        if marker.exists():
            m = re.fullmatch(r"step_(\d+)", marker.read_text().strip())
            if m and int(m.group(1)) in self.steps():
                return int(m.group(1))
        steps = self.steps()
        return steps[-1] if steps else None

    def restore(self, step: int, like: Any) -> tuple[Any, dict]:
        """Loads step ``step`` into the structure of ``like`` (a pytree of arrays)."""
        d = self.root / f"step_{step:06d}"
        meta = json.loads((d / "meta.json").read_text())
        leaves, treedef = jax.tree_util.tree_flatten(like)
        if meta["num_leaves"] != len(leaves):
            raise ValueError(f"checkpoint {d} has {meta['num_leaves']} arrays, expected "
                             f"{len(leaves)}: was it written by a different configuration?")
        with np.load(d / "arrays.npz") as data:
            arrays = [data[f"a{i}"] for i in range(len(leaves))]
        for a, ref in zip(arrays, leaves, strict=True):
            if a.shape != tuple(np.shape(ref)):
                raise ValueError(f"checkpoint {d}: array shape {a.shape} != {np.shape(ref)}")
        return jax.tree_util.tree_unflatten(treedef, arrays), meta

    def restore_latest(self, like: Any) -> tuple[Any, dict, Path] | None:
        """The latest checkpoint loaded into the structure of ``like`` (leaves as jax
        arrays placed as ``like``'s are, across processes too), its metadata and its
        directory; None when there is none."""
        step = self.latest()
        if step is None:
            return None
        tree, meta = self.restore(step, like)
        placed = jax.tree_util.tree_map(_placed_like, tree, like)
        return placed, meta, self.root / f"step_{step:06d}"

    def _prune(self) -> None:
        for step in self.steps()[: -self.keep] if self.keep > 0 else []:
            shutil.rmtree(self.root / f"step_{step:06d}", ignore_errors=True)


def _placed_like(array: np.ndarray, ref):
    """``array`` on ``ref``'s devices when ``ref`` spans several (a mesh, maybe over
    several processes); else an uncommitted array that computations may move."""
    if isinstance(ref, jax.Array) and len(ref.sharding.device_set) > 1:
        return jax.device_put(array, ref.sharding)
    return jnp.asarray(array)


def save_stage(store: CheckpointStore, step: int, tree: dict, *, position: int,
               seed: int) -> Path:
    """A stage's checkpoint: its arrays (``{"lora" or "params": weights, "opt": optimizer
    state}``) and where its data order stands; what an exact resume needs besides the
    recipe. The metadata counts each key's leaves (the carry tells weights from moments)."""
    counts = {k: len(jax.tree_util.tree_leaves(v)) for k, v in tree.items()}
    return store.save(step, tree, {"data_position": position, "seed": seed,
                                   "saved_at": time.time(), "leaves_per_key": counts})


def restore_stage(store: CheckpointStore, log, like: Any) -> tuple[Any, int, int, Path] | None:
    """(arrays, step, data position, checkpoint directory) of the latest checkpoint, the
    metrics ``log`` cut back to its step (later lines will be redone); None for a fresh
    start, the log emptied (everything is redone, the step-0 evaluation too)."""
    found = store.restore_latest(like)
    if found is None:
        log.truncate_after(-1)
        return None
    tree, meta, path = found
    step = int(meta["step"])
    log.truncate_after(step)
    return tree, step, int(meta["data_position"]), path
