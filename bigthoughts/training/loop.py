"""The relay loop shared by every training stage (GRPO, supervised fine-tuning).

    result = run_stage(stage, limit=200, save_every=10, eval_every=50,
                       deadline=Deadline.from_budget("8h45m"), progress=Progress())

Steps until ``limit``; checkpoints every ``save_every`` steps and at the limit;
evaluates every ``eval_every`` steps (0: never), and once before the first step of a
fresh run (the curve's origin); before a step that might not fit
the time budget it checkpoints and stops (the caller exits with ``EXIT_RELAY``), and
rerunning the same command resumes. A run that reaches its limit is exported.
Running out of device or host memory becomes ``OutOfMemory`` naming the knobs to lower.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import bigthoughts.training.hosts as hosts
from bigthoughts.training.progress import Progress
from bigthoughts.training.relay import Deadline


class OutOfMemory(RuntimeError):
    """Training ran out of memory; the message says which knobs to lower."""


class Stage(Protocol):
    """What the loop drives. ``step`` counts finished steps (restored on resume);
    ``resumed_from`` is the checkpoint restored at start (None: fresh);
    ``memory_knobs`` names the config keys that lower memory use."""

    step: int
    resumed_from: Path | None
    memory_knobs: str

    def train_step(self) -> dict: ...

    def save(self) -> None: ...

    def evaluate(self) -> dict: ...

    def export(self, dest: Path) -> Path: ...

    def close(self) -> None: ...


@dataclass
class StageResult:
    step: int
    stopped_for_deadline: bool
    stopped_no_signal: str | None = None  # why the stage stopped training on nothing
    history: list[dict] = field(default_factory=list)
    evaluations: list[dict] = field(default_factory=list)
    exported: Path | None = None


_OOM_WORDS = ("resource_exhausted", "resource exhausted", "out of memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """A host MemoryError, or an allocation XLA could not make, in each backend's words:
    ``RESOURCE_EXHAUSTED`` (GPU, TPU), ``Out of memory allocating N bytes`` (CPU)."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(w in text for w in _OOM_WORDS)


def out_of_memory(exc: BaseException, knobs: str) -> OutOfMemory:
    first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
    return OutOfMemory(f"out of memory ({first}); lower {knobs}")


class _Clock:
    """Step timings of this sitting: the slowest (for the deadline) and the mean
    (for the ETA; the first step, which compiles, is left out once there are more)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def add(self, seconds: float) -> None:
        self.seconds.append(seconds)

    @property
    def slowest(self) -> float:
        return max(self.seconds, default=0.0)

    @property
    def mean(self) -> float | None:
        timed = self.seconds[1:] or self.seconds
        return sum(timed) / len(timed) if timed else None


def _one_step(stage: Stage, clock: _Clock, limit: int, progress: Progress) -> dict:
    start = time.perf_counter()
    record = stage.train_step()
    clock.add(time.perf_counter() - start)
    progress.step(record, total=limit, seconds_per_step=clock.mean)
    return record


def run_stage(stage: Stage, *, limit: int, save_every: int, eval_every: int,
              deadline: Deadline, progress: Progress, export_dir: Path | None = None
              ) -> StageResult:
    """Runs ``stage`` from its current step to ``limit`` (see module docstring); closes it."""
    if limit < 0 or save_every < 1 or eval_every < 0:
        raise ValueError("need limit >= 0, save_every >= 1, eval_every >= 0")
    if stage.resumed_from is not None:
        progress.resumed(stage.step, stage.resumed_from)
    result = StageResult(step=stage.step, stopped_for_deadline=False)
    clock, save_cost = _Clock(), 1.0
    try:
        if eval_every and stage.step == 0 and stage.resumed_from is None and limit > 0:
            result.evaluations.append(stage.evaluate())  # the curve's origin
        while stage.step < limit:
            # process 0 decides for all: their clocks differ, their steps must not
            if not hosts.agree(deadline.allows(clock.slowest, save_cost)):
                stage.save()
                result.stopped_for_deadline = True
                break
            result.history.append(_one_step(stage, clock, limit, progress))
            if result.history[-1].get("stop"):  # the stage's guards: nothing to learn from
                stage.save()
                result.stopped_no_signal = result.history[-1]["stop"]
                break
            if stage.step % save_every == 0 or stage.step == limit:
                t = time.perf_counter()
                stage.save()
                save_cost = max(save_cost, time.perf_counter() - t)
            if eval_every and stage.step % eval_every == 0:
                result.evaluations.append(stage.evaluate())
        if not result.stopped_for_deadline and not result.stopped_no_signal \
                and stage.step >= limit > 0 and export_dir:
            result.exported = stage.export(export_dir)
    except (MemoryError, RuntimeError) as exc:
        if is_out_of_memory(exc):
            raise out_of_memory(exc, stage.memory_knobs) from exc
        raise
    finally:
        stage.close()
    result.step = stage.step
    return result
