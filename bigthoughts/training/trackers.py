"""Where a run's metrics go besides ``metrics.jsonl``: TensorBoard, Weights & Biases.

    report:
      to: [tensorboard, wandb]   # or `bigthoughts train ... --report-to wandb`
      samples_every: 10          # W&B: a table of sampled completions every 10 steps

``metrics.jsonl`` is the record (resume, ``train-report``); a tracker is a copy for the
dashboard. W&B is the optional ``wandb`` extra; ``WANDB_MODE=offline`` writes the run
under ``<run>/wandb`` with no network (``wandb sync`` uploads it later). A relay run
keeps one W&B run across its sittings: its id is saved in ``<run>/wandb-id.txt`` and
each sitting resumes it. Steps redone after a crash keep, on W&B and TensorBoard, the
values first logged for them; ``metrics.jsonl`` holds the redone ones.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bigthoughts.config import ConfigError

TRACKERS = ("tensorboard", "wandb")
WANDB_ID_FILE = "wandb-id.txt"


@dataclass(frozen=True, kw_only=True)
class ReportSection:
    """Which trackers get the run's metrics (``[]``: only ``metrics.jsonl``)."""

    to: tuple[str, ...] = ("tensorboard",)
    samples_every: int = 10  # W&B table of completions every N steps; 0 = never
    wandb_project: str | None = None  # None: $WANDB_PROJECT, else "bigthoughts"

    def __post_init__(self) -> None:
        unknown = [t for t in self.to if t not in TRACKERS]
        if unknown:
            raise ValueError(f"report.to: unknown tracker {unknown[0]!r}; choose from "
                             f"{', '.join(TRACKERS)} (or [] for none)")
        if len(set(self.to)) != len(self.to):
            raise ValueError(f"report.to names a tracker twice: {list(self.to)}")
        if self.samples_every < 0:
            raise ValueError(f"report.samples_every must be >= 0, got {self.samples_every}")


def report_override(flag: str) -> str:
    """The recipe override for ``--report-to A,B`` (``none``: no tracker)."""
    names = [n.strip() for n in flag.split(",") if n.strip()]
    if names == ["none"]:
        return "report.to=[]"
    if not names or "none" in names:
        raise ConfigError(f"--report-to: give tensorboard, wandb (comma-separated) or none, "
                          f"got {flag!r}")
    return f"report.to=[{', '.join(names)}]"


def check_trackers(report: ReportSection) -> None:
    """Raises ConfigError, before anything loads, when a tracker's package is missing."""
    if "wandb" in report.to:
        try:
            import wandb  # noqa: F401
        except ImportError as err:
            raise ConfigError("report.to wandb needs the wandb package: pip install -c "
                              "requirements.lock -e '.[wandb]' (or --report-to tensorboard)"
                              ) from err


class Tracker(Protocol):
    def scalars(self, step: int, values: Mapping[str, float]) -> None: ...

    def samples(self, step: int, rows: Sequence[Mapping]) -> None: ...

    def close(self) -> None: ...


class TensorBoard:
    """Scalars under ``<run>/tensorboard`` (tensorboardX; silently none without it).

    Each step's event is written and flushed in the caller's thread: tensorboardX's
    ``SummaryWriter`` writes from a thread of its own, where a full disk printed a
    traceback and left the queue to fill; here the ``OSError`` reaches the command line
    (one line, exit 74) like any other refused write."""

    def __init__(self, out: Path):
        self._dir = Path(out) / "tensorboard"
        self._writer = None

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if self._writer is None:
            try:
                from tensorboardX.event_file_writer import EventsWriter
            except ImportError:  # optional
                self._writer = False
                return
            self._dir.mkdir(parents=True, exist_ok=True)
            self._writer = EventsWriter(str(self._dir / "events"))
        if self._writer:
            from tensorboardX.proto import event_pb2, summary_pb2
            from tensorboardX.summary import scalar

            summary = summary_pb2.Summary(value=[v for k, x in values.items()
                                                 for v in scalar(k, float(x)).value])
            self._writer.write_event(event_pb2.Event(wall_time=time.time(), step=step,
                                                     summary=summary))
            self._writer.flush()

    def samples(self, step: int, rows: Sequence[Mapping]) -> None:
        pass

    def close(self) -> None:
        if self._writer:
            self._writer.close()


SAMPLE_COLUMNS = ("step", "example", "reward", "trained", "completion")


class WandB:
    """One W&B run per run directory, opened at the first record; scalars each step, a
    table of completions every ``samples_every`` steps, the recipe as its config."""

    def __init__(self, out: Path, record: Mapping, report: ReportSection):
        self._out, self._record, self._report = Path(out), dict(record), report
        self._run = None

    def _opened(self):
        if self._run is None:
            import wandb

            id_file = self._out / WANDB_ID_FILE
            if id_file.exists():
                run_id = id_file.read_text(encoding="utf-8").strip()
            else:
                run_id = secrets.token_hex(4)
                id_file.write_text(run_id + "\n", encoding="utf-8")
            project = (self._report.wandb_project or os.environ.get("WANDB_PROJECT")
                       or "bigthoughts")
            self._run = wandb.init(project=project, dir=str(self._out), id=run_id,
                                   name=self._out.name, resume="allow",
                                   config=self._record)
        return self._run

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        self._opened().log(dict(values), step=step)

    def samples(self, step: int, rows: Sequence[Mapping]) -> None:
        every = self._report.samples_every
        if not every or step % every or not rows:
            return
        import wandb

        table = wandb.Table(columns=list(SAMPLE_COLUMNS))
        for row in rows:
            table.add_data(step, row.get("example"), row.get("reward"), row.get("trained"),
                           row.get("text"))
        self._opened().log({"samples": table}, step=step)

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


def open_trackers(out: Path, record: Mapping, report: ReportSection) -> list[Tracker]:
    """The trackers ``report.to`` names, in that order (nothing opens until logged to)."""
    made = {"tensorboard": lambda: TensorBoard(out),
            "wandb": lambda: WandB(out, record, report)}
    return [made[name]() for name in report.to]
