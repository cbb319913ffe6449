"""Training curves from a run's ``metrics.jsonl`` as PNG plots.

    bigthoughts train-report runs/gemma3-270m-format --out docs/img

One figure, ``training_curves.png``, with four panels over steps: each reward
function's mean and the total, format compliance and batch accuracy, KL to the
reference, and completion length. Curves are smoothed with a trailing moving
average (window shown in the legend); raw points are drawn faintly behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bigthoughts.evaluate import RunDirError


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise RunDirError(f"{run_dir} has no metrics.jsonl: is it a training run directory?")
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line torn by a kill
        if "reward_mean" in row:
            rows.append(row)
    if not rows:
        raise RunDirError(f"{path} holds no training steps yet")
    return rows


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    out = np.empty_like(values, dtype=float)
    for i in range(len(values)):
        out[i] = np.nanmean(values[max(0, i - window + 1): i + 1])
    return out


def plot_training(run_dir: Path, out_dir: Path, *, window: int = 10) -> Path:
    from matplotlib.figure import Figure

    rows = read_metrics(run_dir)
    steps = np.array([r["step"] for r in rows])
    col = lambda k: np.array([r.get(k, np.nan) for r in rows], dtype=float)  # noqa: E731
    fig = Figure(figsize=(12, 8), dpi=120)
    axes = fig.subplots(2, 2)
    panels = [
        (axes[0, 0], "Rewards (mean per completion)",
         ["reward_mean"] + sorted(k for k in rows[-1] if k.startswith("reward/")), None),
        (axes[0, 1], "Format compliance and accuracy (batch)",
         ["format_compliance", "accuracy"], (0, 1)),
        (axes[1, 0], "KL to the reference model", ["kl"], None),
        (axes[1, 1], "Completion length (tokens)", ["completion_length"], None),
    ]
    for ax, title, keys, ylim in panels:
        for key in keys:
            values = col(key)
            if np.all(np.isnan(values)):
                continue
            line, = ax.plot(steps, _smooth(values, window), label=f"{key} (avg {window})")
            ax.plot(steps, values, color=line.get_color(), alpha=0.2, linewidth=0.8)
        ax.set_title(title)
        ax.set_xlabel("step")
        if ylim:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"GRPO training: {Path(run_dir).name} ({len(rows)} steps)")
    fig.tight_layout()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / "training_curves.png"
    fig.savefig(dest)
    return dest
