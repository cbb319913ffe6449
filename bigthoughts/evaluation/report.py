"""Compare evaluation runs: a markdown/JSON table, paired significance tests, plots.

Input: run directories written by :func:`bigthoughts.evaluation.evaluate.run_eval` (each with
``summary.json`` and ``results.jsonl``). Output, in ``out_dir``:

* ``report.md``: one column per run (accuracy with its 95 % Wilson interval, strict
  and lenient format compliance, seconds, samples and tokens/s), then McNemar's test
  for every pair of runs on the questions both answered, with the accuracy gain and
  its paired 95 % interval;
* ``report.json``: the same numbers;
* ``accuracy_ci.png``, ``maj_at_k.png``, ``agreement_hist.png``, ``coverage.png``.
  The last three need runs with several traces per question (vote runs); a plot
  without data is skipped and ``report.md`` says so.

Plots are drawn on :class:`matplotlib.figure.Figure` objects directly (Agg, no
pyplot), so nothing global is touched.

Example::

    bigthoughts report runs/zero-shot runs/single runs/vote --out runs/report
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from bigthoughts.evaluation.evaluate import (
    RESULTS,
    SUMMARY,
    RunDirError,
    adapted_kind,
    read_results,
)
from bigthoughts.evaluation.metrics import coverage_curve, maj_at_k_curve, mcnemar, paired_diff_ci
from bigthoughts.files import atomic_output, atomic_write_json, atomic_write_text

__all__ = ["PLOTS", "Run", "load_run", "make_report", "single_pass_baselines"]

PLOTS = ("accuracy_ci.png", "maj_at_k.png", "agreement_hist.png", "coverage.png")
DPI = 120


@dataclass(frozen=True)
class Run:
    """One evaluation run as read from its directory."""

    label: str
    path: Path
    summary: dict[str, Any]
    records: list[dict[str, Any]]

    @property
    def max_traces(self) -> int:
        return max((len(r.get("traces", [])) for r in self.records), default=0)


def load_run(path: Path) -> Run:
    """Reads a run directory; :class:`RunDirError` naming the directory if it is unusable."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"run directory {path} does not exist")
    try:
        summary = json.loads((path / SUMMARY).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise RunDirError(f"run directory {path} has no {SUMMARY} (did the eval finish?)") \
            from err
    except (OSError, ValueError) as err:
        raise RunDirError(f"run directory {path}: {SUMMARY} is unreadable ({err})") from err
    if not isinstance(summary, dict):
        raise RunDirError(f"run directory {path}: {SUMMARY} is not a JSON object")
    if not (path / RESULTS).is_file():
        raise RunDirError(f"run directory {path} has no {RESULTS}")
    records = read_results(path / RESULTS)
    seen: set = set()
    for r in records:
        if not {"correct", "traces", "vote"} <= set(r):
            raise RunDirError(f"run directory {path}: record {r.get('id')!r} in {RESULTS} "
                              "lacks correct/traces/vote")
        if r.get("id") in seen:  # two writers, or files concatenated: counts would lie
            raise RunDirError(f"run directory {path}: question {r.get('id')!r} appears twice "
                              f"in {RESULTS}; rerun that evaluation into a fresh --out")
        seen.add(r.get("id"))
    return Run(_label(summary), path, summary, records)


def _label(summary: Mapping[str, Any]) -> str:
    """``mode · model``; vote runs add their k and strategy (``vote k=5 majority``)."""
    mode = str(summary.get("mode", "?"))
    config = summary.get("config") or {}
    if mode == "vote" and isinstance(config, Mapping) and "votes" in config:
        mode = f"vote k={config['votes']} {config.get('strategy', '')}".rstrip()
    return f"{mode} · {(summary.get('model') or {}).get('name', '?')}"


def _labelled(runs: list[Run]) -> list[Run]:
    """When two runs' labels collide, every run is labelled by its directory name, so
    that all columns of one report are named the same way."""
    if len({run.label for run in runs}) == len(runs):
        return runs
    return [Run(run.path.name or str(run.path), run.path, run.summary, run.records)
            for run in runs]


# --- numbers -----------------------------------------------------------------------
def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def _pct(x: Any, digits: int = 1) -> str:
    v = _num(x)
    return "n/a" if v is None or math.isnan(v) else f"{100 * v:.{digits}f}%"


def _fmt(x: Any, spec: str) -> str:
    v = _num(x)
    return "n/a" if v is None or math.isnan(v) else format(v, spec)


def _adapter(summary: Mapping[str, Any]) -> str | None:
    """The adapter file a run used, from its model source (``BASE + FILE#sha256=…``)."""
    source = str((summary.get("model") or {}).get("source") or "")
    if " + " not in source:
        return None
    return source.rsplit(" + ", 1)[1].split("#", 1)[0] or None


def _prompt_note(summary: Mapping[str, Any]) -> str | None:
    """The run's prompt note. Runs recorded before notes told adapters apart say "base
    model" for an adapted model; the model source tells, so the note is corrected."""
    note = summary.get("prompt_note")
    if not note or _adapter(summary) is None or str(note).startswith("fine-tuned"):
        return note
    kind, sep, rest = str(note).partition(":")
    return f"{adapted_kind(kind)}{sep}{rest}" if sep and kind.endswith(" model") else note


def _run_numbers(run: Run) -> dict[str, Any]:
    s = run.summary
    spq = s.get("seconds_per_question") or {}
    return {
        "label": run.label, "dir": str(run.path), "mode": s.get("mode"),
        "model": (s.get("model") or {}).get("name"), "n": s.get("n"),
        "accuracy": s.get("accuracy"), "accuracy_ci95": s.get("accuracy_ci95"),
        "right_answer_wrong_steps": s.get("right_answer_wrong_steps"),
        "format_strict": s.get("format_strict"), "format_lenient": s.get("format_lenient"),
        "seconds_per_question": spq.get("mean") if isinstance(spq, Mapping) else spq,
        "seconds_per_question_p95": spq.get("p95") if isinstance(spq, Mapping) else None,
        "samples_per_question": s.get("samples_per_question"),
        "tokens_per_second": s.get("tokens_per_second"),
        "prompt_note": _prompt_note(s), "adapter": _adapter(s),
        "calculator": bool((s.get("config") or {}).get("calculator")),
    }


def _correct(record: Mapping[str, Any]) -> bool:
    return bool(record["correct"])


def _first_trace_strict(record: Mapping[str, Any]) -> bool:
    traces = record.get("traces") or []
    return bool(traces and traces[0].get("format_strict"))


def _pair_numbers(a: Run, b: Run, outcome=_correct) -> dict[str, Any]:
    """McNemar and the paired difference of ``outcome`` (per question) between runs."""
    a_ok = {r["id"]: outcome(r) for r in a.records}
    b_ok = {r["id"]: outcome(r) for r in b.records}
    common = {i: a_ok[i] for i in a_ok if i in b_ok}
    test = mcnemar(common, b_ok)
    diff, lo, hi = paired_diff_ci(common, b_ok)
    n = len(common)
    return {
        "a": a.label, "b": b.label, "n_common": n,
        "accuracy_a": sum(common.values()) / n if n else None,
        "accuracy_b": sum(b_ok[i] for i in common) / n if n else None,
        "b01": test.b01, "b10": test.b10, "statistic": test.statistic,
        "p_value": test.p_value, "method": test.method,
        "diff": None if math.isnan(diff) else diff,
        "diff_ci95": None if math.isnan(diff) else [lo, hi],
    }


def _table(rows: list[dict[str, Any]]) -> list[str]:
    def acc(r):
        ci = r["accuracy_ci95"]
        if not isinstance(ci, list | tuple) or len(ci) != 2:
            return _pct(r["accuracy"])
        return f"{_pct(r['accuracy'])} (95% CI {_pct(ci[0])}–{_pct(ci[1])})"

    lines = [
        "| metric | " + " | ".join(r["label"] for r in rows) + " |",
        "|---|" + "---:|" * len(rows),
    ]
    body = [
        ("questions", lambda r: _fmt(r["n"], ".0f")),
        ("accuracy", acc),
        ("right answer, wrong steps", lambda r: _pct(r["right_answer_wrong_steps"])),
        ("strict format compliance", lambda r: _pct(r["format_strict"])),
        ("lenient format compliance", lambda r: _pct(r["format_lenient"])),
        ("seconds per question", lambda r: _fmt(r["seconds_per_question"], ".2f")),
        ("samples per question", lambda r: _fmt(r["samples_per_question"], ".2f")),
        ("generated tokens/s", lambda r: _fmt(r["tokens_per_second"], ".1f")),
    ]
    for name, cell in body:
        lines.append(f"| {name} | " + " | ".join(cell(r) for r in rows) + " |")
    return lines


def _p(x: float) -> str:
    return f"{x:.4f}" if x >= 1e-4 else f"{x:.1e}"


def _pairs_table(pairs: list[dict[str, Any]], what: str = "accuracy") -> list[str]:
    lines = [
        f"| A | B | n | b01 (A✗ B✓) | b10 (A✓ B✗) | test | p-value | Δ {what} B−A (95% CI) |",
        "|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for p in pairs:
        if p["diff"] is None:
            delta = "n/a"
        else:
            lo, hi = p["diff_ci95"]
            delta = f"{100 * p['diff']:+.1f} pp ({100 * lo:+.1f} to {100 * hi:+.1f})"
        lines.append(f"| {p['a']} | {p['b']} | {p['n_common']} | {p['b01']} | {p['b10']} | "
                     f"{p['method']} | {_p(p['p_value'])} | {delta} |")
    return lines


# --- plots -------------------------------------------------------------------------
def _figure(width: float = 7.0, height: float = 4.5) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    fig.set_layout_engine("tight")
    return fig


def _save(fig: Figure, path: Path) -> None:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")


def _plot_accuracy(runs: list[Run], path: Path) -> bool:
    rows = [(r.label, _num(r.summary.get("accuracy")), r.summary.get("accuracy_ci95"))
            for r in runs]
    rows = [(label, acc, ci) for label, acc, ci in rows if acc is not None]
    if not rows:
        return False
    fig = _figure(max(5.0, 1.6 * len(rows) + 2), 4.5)
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    accs = np.array([acc for _, acc, _ in rows])
    cis = [ci if isinstance(ci, list | tuple) and len(ci) == 2 else (acc, acc)
           for _, acc, ci in rows]
    err = np.array([[acc - ci[0] for acc, ci in zip(accs, cis, strict=True)],
                    [ci[1] - acc for acc, ci in zip(accs, cis, strict=True)]])
    colors = [f"C{i % 10}" for i in range(len(rows))]
    ax.bar(x, accs, yerr=err, capsize=6, color=colors, alpha=0.85, edgecolor="black",
           linewidth=0.6, error_kw={"elinewidth": 1.2})
    for xi, acc, ci in zip(x, accs, cis, strict=True):
        ax.annotate(f"{100 * acc:.1f}%", (xi, ci[1]), xytext=(0, 4), textcoords="offset points",
                    ha="center", va="bottom", fontsize=9)
    ax.set_xticks(x, [label for label, _, _ in rows], rotation=15 if len(rows) > 3 else 0)
    ax.set_ylim(0, min(1.0, max(ci[1] for ci in cis) * 1.15 + 0.02))
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1))
    ax.set_ylabel("GSM8K accuracy")
    ax.set_title("Accuracy per run (error bars: 95% Wilson interval)")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
    return True


def vote_runs(runs: Sequence[Run]) -> list[Run]:
    """The runs that drew more than one trace for some question (votes, adaptive votes)."""
    return [r for r in runs if r.max_traces > 1]


def model_key(run: Run) -> tuple[str, bool, str, int]:
    """Which model and set-up a run measured, whatever engine ran it: (the adapter's
    SHA-256 prefix, or "" for none; calculator on; prompt style; shots, 0 unless
    few-shot). A vote is compared with the greedy pass of the same key."""
    source = str(run.summary.get("model", {}).get("source", ""))
    adapter = source.split(" + ", 1)[1] if " + " in source else ""
    config = run.summary.get("config", {})
    style = str(config.get("style", ""))
    return (adapter.rsplit("#sha256=", 1)[-1], bool(config.get("calculator", False)), style,
            int(config.get("shots", 0)) if style == "fewshot" else 0)


def single_pass_baselines(runs: Sequence[Run]) -> tuple[set[str], list[tuple[Run, float]]]:
    """(the questions every vote run answered, [(run, accuracy on exactly those
    questions)] for each single-pass run of the same model as some vote run
    (:func:`model_key`) that answered all of them). A vote on the first 500 questions
    is compared with its model's greedy pass on the same 500, not on the whole set."""
    voting = vote_runs(runs)
    if not voting:
        return set(), []
    ids = set.intersection(*({rec["id"] for rec in r.records} for r in voting))
    keys = {model_key(r) for r in voting}
    lines = []
    for run in runs:
        if run.max_traces != 1 or model_key(run) not in keys:
            continue
        same = [rec for rec in run.records if rec["id"] in ids]
        if ids and len(same) == len(ids):
            lines.append((run, sum(map(_correct, same)) / len(ids)))
    return ids, lines


def _plot_maj_at_k(runs: list[Run], path: Path) -> bool:
    voting = vote_runs(runs)
    if not voting:
        return False
    ids, baselines = single_pass_baselines(runs)
    fig = _figure(9.5, 4.5)
    ax = fig.add_subplot()
    k_max = max(r.max_traces for r in voting)
    color: dict[tuple, str] = {}  # a model's greedy line takes its first vote's colour
    for i, run in enumerate(voting):
        records = [rec for rec in run.records if rec["id"] in ids] or run.records
        ks, accs = zip(*maj_at_k_curve(records), strict=True)
        color.setdefault(model_key(run), f"C{i % 10}")
        ax.plot(ks, accs, marker="o", color=f"C{i % 10}", label=run.label)
    for run, acc in baselines:
        ax.axhline(acc, linestyle="--", linewidth=1, color=color[model_key(run)],
                   label=f"{run.label} (one greedy pass)")
    ax.set_xlim(0.7, k_max + 0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    # decimals=None: chosen from the axis range (0.5% steps need a decimal)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=None))
    ax.set_xlabel("votes used (first k saved samples)")
    ax.set_ylabel("accuracy of the vote")
    where = f"on the {len(ids)} questions every vote run answered" if ids else \
        "the vote runs share no question: each on its own"
    ax.set_title(f"Accuracy vs number of votes (maj@k from saved traces)\n{where}",
                 fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    _save(fig, path)
    return True


def _agreement_bars(ax, agree: np.ndarray, ok: np.ndarray) -> None:
    """Stacked correct/incorrect counts: one bar per agreement value when they are few
    (a fixed-k majority vote gives multiples of 1/k), else a 10-bin histogram."""
    values = np.unique(np.round(agree, 6))
    if len(values) <= 12:
        gap = np.diff(values).min() if len(values) > 1 else 0.1
        width = min(0.08, 0.8 * gap)
        good = np.array([np.sum(ok & np.isclose(agree, v)) for v in values])
        bad = np.array([np.sum(~ok & np.isclose(agree, v)) for v in values])
    else:
        edges = np.linspace(0.0, 1.0, 11)
        values, width = (edges[:-1] + edges[1:]) / 2, 0.09
        good = np.histogram(agree[ok], bins=edges)[0]
        bad = np.histogram(agree[~ok], bins=edges)[0]
    ax.bar(values, good, width=width, color="tab:green", edgecolor="black", linewidth=0.5,
           label=f"correct ({ok.sum()})")
    ax.bar(values, bad, width=width, bottom=good, color="tab:red", edgecolor="black",
           linewidth=0.5, label=f"incorrect ({(~ok).sum()})")
    ax.set_ylim(0, max(1, int((good + bad).max(initial=0))) * 1.3)  # room for the legend


def _plot_agreement(runs: list[Run], path: Path) -> bool:
    voting = vote_runs(runs)
    if not voting:
        return False
    fig = _figure(max(5.0, 4.2 * len(voting)), 4.2)
    axes = fig.subplots(1, len(voting), squeeze=False)[0]
    for ax, run in zip(axes, voting, strict=True):
        agree = np.array([float(r["vote"].get("agreement", 0.0)) for r in run.records])
        ok = np.array([bool(r["correct"]) for r in run.records], dtype=bool)
        _agreement_bars(ax, agree, ok)
        ax.set_xlim(-0.05, 1.05)
        ax.xaxis.set_major_formatter(PercentFormatter(xmax=1))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("agreement (winner's share of votes)")
        ax.set_ylabel("questions")
        ax.set_title(run.label, fontsize=10)
        ax.legend(loc="upper left", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Vote agreement, correct vs incorrect answers")
    _save(fig, path)
    return True


def _plot_coverage(runs: list[Run], path: Path) -> bool:
    voting = vote_runs(runs)
    if not voting:
        return False
    fig = _figure()
    ax = fig.add_subplot()
    for i, run in enumerate(voting):
        cov, acc, _ = zip(*coverage_curve(run.records), strict=True)
        ax.plot(cov, acc, marker="o", drawstyle="default", color=f"C{i % 10}", label=run.label)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.xaxis.set_major_formatter(PercentFormatter(xmax=1))
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1))
    ax.set_xlabel("coverage (questions answered)")
    ax.set_ylabel("accuracy on answered questions")
    ax.set_title("Abstaining on low agreement: accuracy vs coverage")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=9)
    _save(fig, path)
    return True


_PLOTTERS = {
    "accuracy_ci.png": (_plot_accuracy, "no run has an accuracy"),
    "maj_at_k.png": (_plot_maj_at_k, "no run has more than one trace per question"),
    "agreement_hist.png": (_plot_agreement, "no run has more than one trace per question"),
    "coverage.png": (_plot_coverage, "no run has more than one trace per question"),
}


# --- entry point -------------------------------------------------------------------
def make_report(run_dirs: Sequence[Path], out_dir: Path) -> Path:
    """Writes report.md, report.json and the plots for ``run_dirs``; returns report.md's path."""
    if not run_dirs:
        raise RunDirError("make_report needs at least one run directory")
    runs = _labelled([load_run(Path(d)) for d in run_dirs])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [_run_numbers(r) for r in runs]
    pairs = [_pair_numbers(a, b) for a, b in itertools.combinations(runs, 2)]
    format_pairs = [_pair_numbers(a, b, _first_trace_strict)
                    for a, b in itertools.combinations(runs, 2)]
    plots: dict[str, str | None] = {}
    for name, (plot, reason) in _PLOTTERS.items():
        target = out_dir / name
        drawn = plot(runs, target)
        if not drawn and target.exists():
            target.unlink()  # a stale plot from an earlier report
        plots[name] = None if drawn else reason

    md = ["# GSM8K evaluation report", "", "## Runs", ""]
    for r in rows:
        notes = [r["prompt_note"] or "", f"adapter `{r['adapter']}`" if r["adapter"] else "",
                 "calculator on" if r["calculator"] else ""]
        note = "; ".join(n for n in notes if n)
        md.append(f"- **{r['label']}**: `{r['dir']}`" + (f" ({note})" if note else ""))
    md += ["", "## Comparison", ""] + _table(rows)
    md += ["", "Format compliance is the share of all traces: strict = exactly "
           "`<reasoning>…</reasoning><answer>…</answer>`, lenient = an answer could be "
           "extracted at all. Right answer, wrong steps: the share of questions answered "
           "right by a trace with an arithmetic step the step checker found wrong.", "",
           "## Paired comparison (McNemar)", ""]
    if pairs:
        md += _pairs_table(pairs)
        md += ["", "On the questions both runs answered. Exact two-sided binomial test when "
               "fewer than 25 questions are discordant, else chi-square with continuity "
               "correction. Δ: paired difference with a Wald 95% interval."]
        md += ["", "### Strict format compliance of the first trace, paired", ""]
        md += _pairs_table(format_pairs, "strict format")
        md += ["", "The same test on whether each question's first trace is exactly "
               "`<reasoning>…</reasoning><answer>…</answer>` (the single-pass output)."]
    else:
        md.append("Only one run: nothing to compare.")
    md += ["", "## Plots", ""]
    for name, reason in plots.items():
        md += [f"![{name}]({name})", ""] if reason is None else [
            f"- `{name}` skipped: {reason}.", ""]
    report = out_dir / "report.md"
    atomic_write_text(report, "\n".join(md).rstrip() + "\n")
    atomic_write_json(out_dir / "report.json",
                      {"runs": rows, "pairs": pairs, "format_pairs": format_pairs,
                       "plots": {k: ("skipped: " + v if v else k) for k, v in plots.items()}},
                      indent=2)
    return report
