"""Training curves from a run's ``metrics.jsonl`` as PNG plots.

    bigthoughts train-report runs/gemma3-270m-format --out docs/img

One figure, ``training_curves.png``, with four panels over steps. A GRPO run: each
reward function's mean and the total, format compliance and batch accuracy, KL to
the reference with the policy's entropy, and completion length; with rollouts from an
engine that records its own log-probs, a fifth: how far they are from the trainer's. A supervised
(``sft``) run: training loss with the periodic validation loss, validation accuracy
and format, tokens/s and the share of padding. Curves are smoothed with a trailing moving
average (window shown in the legend); raw points are drawn faintly behind.

A GRPO run with a held-out evaluation (``eval_every``) also gets ``dev_curve.png``:
held-out greedy accuracy (95% Wilson interval) against the informative groups trained
on so far (the updates that carried a policy gradient), the curve a relay run is
judged and cut on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bigthoughts.evaluation.evaluate import RunDirError
from bigthoughts.evaluation.metrics import wilson_interval
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
    """The figure's title and its (panel title, metric keys, y-limits), four or five."""
    if any("reward_mean" in r for r in rows):
        rewards = sorted({k for r in rows for k in r if k.startswith("reward/")})
        panels = [
            ("Rewards (mean per completion)", ["reward_mean", *rewards], None),
            ("Format compliance and accuracy (batch)", ["format_compliance", "accuracy"],
             (0, 1)),
            ("KL to the reference; policy entropy (nats/token)", ["kl", "entropy"], None),
            ("Completion length (tokens)", ["completion_length"], None)]
        if any("mismatch/abs_mean" in r for r in rows):  # rollouts from another engine
            panels.append(("Rollout engine vs trainer: mean |Δ log-prob|; ratio outside "
                           "[0.5, 2]",
                           ["mismatch/abs_mean", "mismatch/ratio_outside"], None))
        return "GRPO training", panels
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
    grid = (len(panels) + 1) // 2
    fig = Figure(figsize=(12, 4 * grid), dpi=120)
    axes = list(fig.subplots(grid, 2).flat)
    for ax in axes[len(panels):]:
        ax.remove()
    for ax, (title, keys, ylim) in zip(axes, panels, strict=False):
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
    return _save(fig, out_dir, "training_curves.png")


def _save(fig, out_dir: Path, name: str) -> Path:
    """``out_dir/name`` (the folder made if needed), the figure laid out and written."""
    fig.tight_layout()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / name
    fig.savefig(dest)
    return dest


def dev_curve(rows: list[dict]) -> list[tuple[int, int, int, int]]:
    """(informative groups so far, step, right, questions) at each held-out evaluation
    of a GRPO run (a step logged without ``groups_informative``, i.e. without dynamic
    sampling, counts as one group)."""
    steps = sorted((r["step"], r.get("groups_informative", 1)) for r in rows
                   if "reward_mean" in r)
    out = []
    for r in sorted((r for r in rows if "eval/correct" in r), key=lambda r: r["step"]):
        groups = sum(n for step, n in steps if step <= r["step"])
        out.append((groups, r["step"], r["eval/correct"], r["eval/questions"]))
    return out


def plot_dev_curve(run_dir: Path, out_dir: Path) -> Path | None:
    """``dev_curve.png`` for a run with held-out evaluations; None when it has none."""
    from matplotlib.figure import Figure

    points = dev_curve(read_metrics(run_dir))
    if not points:
        return None
    groups, steps, right, n = (np.array(c) for c in zip(*points, strict=True))
    low, high = np.array([wilson_interval(int(k), int(m)) for k, m in zip(right, n,
                                                                       strict=True)]).T
    acc = right / n
    fig = Figure(figsize=(8, 5), dpi=120)
    ax = fig.subplots()
    ax.errorbar(groups, 100 * acc, yerr=[100 * (acc - low), 100 * (high - acc)], marker="o",
                capsize=3, label="greedy accuracy, no calculator (95% Wilson)")
    for g, s, a, k in zip(groups, steps, acc, right, strict=True):
        ax.annotate(f"step {s}: {k}", (g, 100 * a), textcoords="offset points", xytext=(4, 6),
                    fontsize=7, color="gray")
    ax.set_xlabel("informative groups trained on")
    ax.set_ylabel(f"held-out accuracy (%), {int(n[0])} questions")
    ax.set_title(f"Held-out curve: {Path(run_dir).name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, out_dir, "dev_curve.png")
