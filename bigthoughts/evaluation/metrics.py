"""Evaluation statistics: accuracy, confidence intervals, paired tests, vote curves.

Pure functions over booleans and saved result records (the lines of an eval run's
``results.jsonl``); nothing here generates text. The choices, and why:

* :func:`wilson_interval`: the Wilson score interval for a proportion. Unlike the
  normal ("Wald") interval it stays inside [0, 1] and keeps close to its nominal
  coverage at the small n and extreme accuracies of small-model GSM8K runs.
* :func:`mcnemar`: two models answered the *same* questions, so their errors are
  paired; only the discordant questions (one right, the other wrong) carry
  information. With fewer than 25 discordant pairs we use the exact two-sided
  binomial test (the discordant counts are Binomial(b01 + b10, 1/2) under H0);
  from 25 on, the chi-square statistic with Edwards' continuity correction,
  ``(|b01 - b10| - 1)^2 / (b01 + b10)`` on 1 degree of freedom. 25 is the usual
  rule of thumb for when the chi-square approximation becomes adequate.
* :func:`paired_diff_ci`: the paired-difference (Wald) interval of Agresti's
  *Categorical Data Analysis* section 10.1, which uses the same discordant counts.
* :func:`maj_at_k_curve` / :func:`coverage_curve`: what a run's saved traces say
  about voting with fewer samples, and about abstaining when the vote is split.

Example::

    >>> lo, hi = wilson_interval(7, 10)
    >>> round(lo, 4), round(hi, 4)
    (0.3968, 0.8922)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from bigthoughts.answers import answers_equal
from bigthoughts.inference.voting import Majority, Sample, VoteStrategy, maj_at_k

__all__ = [
    "EXACT_BELOW",
    "McNemarResult",
    "accuracy",
    "coverage_curve",
    "maj_at_k_curve",
    "mcnemar",
    "paired_diff_ci",
    "percentiles",
    "wilson_interval",
]

EXACT_BELOW = 25
"""McNemar uses the exact binomial test when fewer pairs than this are discordant."""

Paired = Sequence[bool] | Mapping[str, bool]


def accuracy(correct: Sequence[bool]) -> float:
    """Fraction of True values; NaN for an empty sequence (there is no accuracy).

    >>> accuracy([True, False, True, True])
    0.75
    """
    values = list(correct)
    return sum(map(bool, values)) / len(values) if values else math.nan


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials (z=1.96: 95 %).

    ``(0.0, 1.0)`` when ``n == 0``: no data, no information.
    """
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


@dataclass(frozen=True)
class McNemarResult:
    """A paired comparison of runs A and B on the same questions.

    ``b01``: A wrong, B right; ``b10``: A right, B wrong. ``statistic`` is
    ``min(b01, b10)`` for the exact test and the continuity-corrected chi-square
    for ``method == "chi2"``. ``n`` counts the paired questions.
    """

    b01: int
    b10: int
    statistic: float
    p_value: float
    method: Literal["exact", "chi2"]
    n: int = 0


def _pair(a: Paired, b: Paired) -> tuple[list[bool], list[bool]]:
    """Aligned outcomes: by position for sequences, by common id for mappings."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        ids = [i for i in a if i in b]
        return [bool(a[i]) for i in ids], [bool(b[i]) for i in ids]
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        raise TypeError("pass two sequences (paired by position) or two id -> bool mappings")
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need equal lengths, got {len(a)} and {len(b)}")
    return [bool(x) for x in a], [bool(x) for x in b]


def mcnemar(a_correct: Paired, b_correct: Paired) -> McNemarResult:
    """McNemar's test of equal accuracy for two runs on the same questions (two-sided).

    Outcomes pair by position (two sequences) or by question id (two mappings
    ``id -> correct``; ids in only one of them are ignored). Exact binomial test
    below :data:`EXACT_BELOW` discordant pairs, chi-square with continuity
    correction from there on (see the module docstring).

    >>> mcnemar([True] * 6 + [False], [False] * 6 + [True]).p_value
    0.125
    """
    a, b = _pair(a_correct, b_correct)
    b01 = sum(1 for x, y in zip(a, b, strict=True) if not x and y)
    b10 = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    discordant = b01 + b10
    if discordant < EXACT_BELOW:
        low = min(b01, b10)
        tail = sum(math.comb(discordant, i) for i in range(low + 1)) / 2.0**discordant
        return McNemarResult(b01, b10, float(low), min(1.0, 2.0 * tail), "exact", len(a))
    statistic = (abs(b01 - b10) - 1.0) ** 2 / discordant
    # The chi-square(1) survival function: P(X > s) = erfc(sqrt(s / 2)).
    return McNemarResult(b01, b10, statistic, math.erfc(math.sqrt(statistic / 2.0)), "chi2",
                         len(a))


def paired_diff_ci(a: Paired, b: Paired, z: float = 1.96) -> tuple[float, float, float]:
    """``(acc(B) - acc(A), lo, hi)``: the accuracy gain of B over A with a 95 % interval.

    Wald interval for paired proportions: with n pairs, d = (b01 - b10) / n and
    var = ((b01 + b10) / n - d^2) / n. Bounds are clipped to [-1, 1]; NaN for n = 0.

    >>> paired_diff_ci([True, False, False, False], [True, True, True, False])[0]
    0.5
    """
    xs, ys = _pair(a, b)
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, math.nan
    b01 = sum(1 for x, y in zip(xs, ys, strict=True) if not x and y)
    b10 = sum(1 for x, y in zip(xs, ys, strict=True) if x and not y)
    d = (b01 - b10) / n
    se = math.sqrt(max(0.0, ((b01 + b10) / n - d * d) / n))
    return d, max(-1.0, d - z * se), min(1.0, d + z * se)


def percentiles(xs: Sequence[float], qs: Sequence[float] = (50, 95)) -> tuple[float, ...]:
    """The ``qs`` percentiles of ``xs`` (linear interpolation); NaNs when ``xs`` is empty.

    >>> percentiles([1, 2, 3, 4, 5], (50, 100))
    (3.0, 5.0)
    """
    if len(xs) == 0:
        return tuple(math.nan for _ in qs)
    return tuple(float(v) for v in np.percentile(np.asarray(xs, dtype=float), list(qs)))


def _samples(record: Mapping[str, Any]) -> list[Sample]:
    return [
        Sample(text=t.get("text", ""), answer=t.get("answer"),
               temperature=float(t.get("temperature", 0.0)),
               logprob=float(t.get("logprob", 0.0)), num_tokens=int(t.get("tokens", 0)))
        for t in record.get("traces", [])
    ]


def maj_at_k_curve(
    records: Sequence[Mapping[str, Any]], strategy: VoteStrategy | None = None
) -> list[tuple[int, float]]:
    """Accuracy of voting over the first k saved traces, for k = 1 .. the most traces.

    ``records`` are result records (``traces`` with ``answer``/``temperature``/
    ``logprob``/``tokens``, and ``gold``). Traces are used in their saved order (the
    ladder's order), with :func:`bigthoughts.inference.voting.maj_at_k` and ``strategy``
    (default :class:`~bigthoughts.inference.voting.Majority`). No text is generated. A record
    with fewer than k traces (an adaptive vote that stopped early) votes with all of
    them, as it did when it was run.
    """
    strategy = strategy or Majority()
    most = max((len(r.get("traces", [])) for r in records), default=0)
    curve = []
    for k in range(1, most + 1):
        hits = []
        for record in records:
            samples = _samples(record)
            answer = maj_at_k(samples, k, strategy) if samples else None
            hits.append(answers_equal(answer, record.get("gold")))
        curve.append((k, accuracy(hits)))
    return curve


def coverage_curve(records: Sequence[Mapping[str, Any]]) -> list[tuple[float, float, float]]:
    """``(coverage, accuracy, threshold)`` when answering only if agreement >= threshold.

    One point per distinct vote agreement in the run, from the strictest threshold
    (fewest questions answered) down to the loosest (every question answered, which
    is the run's accuracy). ``accuracy`` is over the answered questions; a question
    without an answer has agreement 0 and counts as wrong when answered.
    """
    pairs = [(float(r.get("vote", {}).get("agreement", 0.0)), bool(r.get("correct")))
             for r in records]
    n = len(pairs)
    curve = []
    for threshold in sorted({a for a, _ in pairs}, reverse=True):
        kept = [c for a, c in pairs if a >= threshold]
        curve.append((len(kept) / n, accuracy(kept), threshold))
    return curve
