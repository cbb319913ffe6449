"""Training curves from a run's ``metrics.jsonl`` as PNG plots.

    bigthoughts train-report runs/gemma3-270m-format --out docs/img

One figure, ``training_curves.png``, with four panels over steps. A GRPO run: each
reward function's mean and the total, format compliance and batch accuracy, KL to
the reference, and completion length. A supervised (``sft``) run: training loss
with the periodic validation loss, validation accuracy and format, tokens/s and
the share of padding. Curves are smoothed with a trailing moving
average (window shown in the legend); raw points are drawn faintly behind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bigthoughts.evaluation.evaluate import RunDirError
from bigthoughts.files import JsonlError, read_jsonl


def read_metrics(run_dir: Path) -> list[dict]:
    """Every record of the run's ``metrics.jsonl`` (steps and evaluations)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise RunDirError(f"{run_dir} has no metrics.jsonl: is it a training run directory?")
    try:
        rows = read_jsonl(path)
    except JsonlError as err:
        raise RunDirError(str(err)) from err
    if not any("reward_mean" in r or "loss" in r for r in rows):
        raise RunDirError(f"{path} holds no training steps yet")
    return rows


def _panels(rows: list[dict]) -> tuple[str, list[tuple[str, list[str], tuple | None]]]:
    """The figure's title and its four (panel title, metric keys, y-limits)."""
    if any("reward_mean" in r for r in rows):
        rewards = sorted({k for r in rows for k in r if k.startswith("reward/")})
        return "GRPO training", [
            ("Rewards (mean per completion)", ["reward_mean", *rewards], None),
            ("Format compliance and accuracy (batch)", ["format_compliance", "accuracy"],
             (0, 1)),
            ("KL to the reference model", ["kl"], None),
            ("Completion length (tokens)", ["completion_length"], None)]
    return "Supervised warm start", [
        ("Loss (NLL per completion token)", ["loss", "eval/loss"], None),
        ("Validation: greedy accuracy and format", ["eval/accuracy", "eval/format_compliance"],
         (0, 1)),
        ("Throughput (tokens/s)", ["tokens_per_second"], None),
        ("Padding share of each batch", ["padding"], (0, 1))]


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    out = np.empty_like(values, dtype=float)
    for i in range(len(values)):
        out[i] = np.nanmean(values[max(0, i - window + 1): i + 1])
    return out


def plot_training(run_dir: Path, out_dir: Path, *, window: int = 10) -> Path:
    from matplotlib.figure import Figure

    rows = read_metrics(run_dir)
    kind, panels = _panels(rows)
    fig = Figure(figsize=(12, 8), dpi=120)
    for ax, (title, keys, ylim) in zip(fig.subplots(2, 2).flat, panels, strict=True):
        if not any(isinstance(r.get(k), int | float) for r in rows for k in keys):
            ax.text(0.5, 0.5, "not recorded in this run", ha="center", va="center",
                    transform=ax.transAxes, color="gray")
        for key in keys:
            have = [r for r in rows if isinstance(r.get(key), int | float)]
            if not have:
                continue
            steps = np.array([r["step"] for r in have])
            values = np.array([r[key] for r in have], dtype=float)
            smooth = window if not key.startswith("eval/") else 1
            line, = ax.plot(steps, _smooth(values, smooth), marker="o" if smooth == 1 else None,
                            label=f"{key} (avg {smooth})" if smooth > 1 else key)
            ax.plot(steps, values, color=line.get_color(), alpha=0.2, linewidth=0.8)
        ax.set_title(title)
        ax.set_xlabel("step")
        if ylim:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    n_steps = sum(1 for r in rows if "reward_mean" in r or "loss" in r)
    fig.suptitle(f"{kind}: {Path(run_dir).name} ({n_steps} steps)")
    fig.tight_layout()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / "training_curves.png"
    fig.savefig(dest)
    return dest
