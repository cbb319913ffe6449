"""What a user watching a run sees: one line per step on stderr, and where a resume
starts from.

    step 3/200 | reward 4.21 | format 62% | acc 12% | kl 0.0031 | 38.2 s/step | ETA 2h07m

Keys a stage does not report are left out (a supervised stage reports ``loss``
instead of ``reward``). The ETA extrapolates the mean step time of this sitting.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TextIO

# (record key, label, format) in display order
FIELDS = (
    ("reward_mean", "reward", "{:.2f}"),
    ("loss", "loss", "{:.4f}"),
    ("format_compliance", "format", "{:.0%}"),
    ("accuracy", "acc", "{:.0%}"),
    ("kl", "kl", "{:.4f}"),
)


def format_duration(seconds: float) -> str:
    """3725 -> '1h02m', 125 -> '2m05s', 7 -> '7s'."""
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


def step_line(record: dict, *, total: int, seconds_per_step: float | None) -> str:
    """The progress line of one step (``record`` as a stage's ``train_step`` returns it)."""
    parts = [f"step {record['step']}/{total}"]
    skip_loss = "reward_mean" in record  # an RL stage's loss is not a progress signal
    for key, label, fmt in FIELDS:
        if key in record and not (key == "loss" and skip_loss):
            parts.append(f"{label} {fmt.format(float(record[key]))}")
    if seconds_per_step is not None:
        parts.append(f"{seconds_per_step:.1f} s/step")
        remaining = max(0, total - int(record["step"]))
        parts.append(f"ETA {format_duration(remaining * seconds_per_step)}")
    return " | ".join(parts)


def where(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    try:
        return os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd()) \
            else str(path)
    except ValueError:  # another drive
        return str(path)


class Progress:
    """Prints step lines and the resume notice to ``stream`` (stderr by default)."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream

    def _print(self, line: str) -> None:
        print(line, file=self.stream or sys.stderr, flush=True)

    def resumed(self, step: int, checkpoint: Path | None) -> None:
        self._print(f"resuming from step {step}"
                    + (f" ({where(checkpoint)})" if checkpoint is not None else ""))

    def note(self, line: str) -> None:
        """A line of context (e.g. how much data a stage found)."""
        self._print(line)

    def step(self, record: dict, *, total: int, seconds_per_step: float | None) -> None:
        self._print(step_line(record, total=total, seconds_per_step=seconds_per_step))
        for warning in record.get("warnings", ()):
            self._print(f"warning: step {record['step']}: {warning}")
