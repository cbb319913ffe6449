"""A run directory's identity: what a rerun must share with the run it resumes.

Training (``config.json``) and evaluation (``run.json``) record what was asked when a
run starts; a rerun into the same directory compares its own record with the stored
one and is refused, naming each differing key with both values, unless they agree. A
run directory has one writer at a time (:func:`lock_run_dir`).

    >>> differences({"grpo": {"beta": 0.04}, "seed": 0}, {"grpo": {"beta": 0.0}, "seed": 0})
    ['grpo.beta: 0.04 (saved) != 0.0 (now)']
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

ABSENT = "(absent)"
WHOLE = ("rewards.weights",)  # mappings compared as one value, not key by key


def flatten(data: Mapping, prefix: str = "") -> dict:
    """``{"grpo": {"beta": 0.04}}`` -> ``{"grpo.beta": 0.04}`` (empty mappings and those
    named in ``WHOLE`` stay whole)."""
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and not name.startswith(WHOLE):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def differences(saved: Mapping, now: Mapping, *, defaults: Mapping = {}) -> list[str]:  # noqa: B006
    """``"key: saved (saved) != now (now)"`` for each flattened key whose values differ; a
    key one side lacks compares as its ``defaults`` value, else as ``"(absent)"``."""
    a, b = flatten(saved), flatten(now)

    def value(config: dict, key: str):
        return config.get(key, defaults.get(key, ABSENT))

    return [f"{k}: {json.dumps(value(a, k))} (saved) != {json.dumps(value(b, k))} (now)"
            for k in sorted(set(a) | set(b)) if value(a, k) != value(b, k)]


class RunDirBusy(RuntimeError):
    """Another process is writing to the run directory."""


class NotARunDir(ValueError):
    """``--out`` names something that cannot be a run directory (a file)."""


LOCK_NAME = ".lock"


def remove_stale_temps(out: Path) -> list[Path]:
    """Deletes the half-written files a killed writer left in ``out`` (the ``.NAME*.tmp``
    of ``files.atomic_write_*``); called with the run's lock held. Returns them."""
    stale = [p for p in Path(out).rglob(".*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


@contextlib.contextmanager
def lock_run_dir(out: Path) -> Iterator[Path]:
    """Holds ``out``'s writer lock (``out/.lock``, ``fcntl.flock``) for the block;
    :class:`RunDirBusy` names the holder's PID when another process has it. The kernel
    drops the lock when its holder exits, however it exits, so a killed run never
    leaves a lock that blocks the rerun. Creates ``out`` if needed; once the lock is
    held, removes the temporary files a killed writer left (``remove_stale_temps``)."""
    import fcntl

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotARunDir(f"{out} exists and is not a directory; use another --out")
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunDirBusy(f"{out} is in use by another bigthoughts process (PID {holder}); "
                             f"wait for it to finish or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        remove_stale_temps(out)  # the lock is ours: no writer is midway through one
        yield path
    finally:
        os.close(fd)  # closing releases the lock
