"""Consensus voting over sampled answers (self-consistency, Wang et al., 2023).

Sample several reasoning paths for one question, extract each path's answer
(:mod:`bigthoughts.answers`) and let them vote. Samples are drawn over a *ladder* of
temperatures (:data:`DEFAULT_LADDER`): the cold end stays close to the greedy answer,
the hot end explores other paths, and ties go to the colder, more confident sample.

Every strategy is a small frozen dataclass with one method,
``decide(samples) -> VoteResult``:

* :class:`Majority`: one sample, one vote;
* :class:`WeightedByLogprob`: votes weighted by ``exp(mean token log-prob / T)``;
* :class:`AdaptiveMajority`: majority over the shortest prefix of samples after which
  :class:`AdaptiveStop` says no more samples could change the outcome, so easy
  questions cost fewer samples.

A sample whose answer is None abstains; it never counts as a candidate. Answers are
grouped by their canonical number, so ``"18"`` and ``"18.0"`` are one candidate.
Generation lives elsewhere; this module is pure logic over :class:`Sample` records.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from bigthoughts.answers import normalize_number

__all__ = [
    "DEFAULT_LADDER",
    "MAX_VOTES",
    "STRATEGIES",
    "AdaptiveMajority",
    "AdaptiveStop",
    "Majority",
    "Sample",
    "VoteConfig",
    "VoteResult",
    "VoteStrategy",
    "WeightedByLogprob",
    "get_strategy",
    "ladder",
    "maj_at_k",
    "temperature_schedule",
]

DEFAULT_LADDER = (0.2, 0.4, 0.6, 0.8, 1.0)
MAX_VOTES = 64
"""The most samples k one question may vote over: a hard cap, whatever the memory
(agreement estimates barely move past a few dozen samples)."""


def ladder(k: int) -> tuple[float, ...]:
    """``k`` sampling temperatures spread evenly from 0.2 to 1.0.

    ``ladder(5) == DEFAULT_LADDER``. ``ladder(1) == (0.0,)``: with a single sample
    there is nothing to vote over, so take the greedy (most likely) answer.

    >>> ladder(3), ladder(1)
    ((0.2, 0.6, 1.0), (0.0,))
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"ladder needs k >= 1 samples, got {k!r}")
    if k == 1:
        return (0.0,)
    return tuple(round(0.2 + 0.8 * i / (k - 1), 6) for i in range(k))


def temperature_schedule(
    k: int, temperatures: Sequence[float] | None = None
) -> tuple[float, ...]:
    """The temperature of each of ``k`` samples: THE rule for a k-vote's ladder.

    Without ``temperatures`` it is :func:`ladder` (``k`` temperatures spread from 0.2
    to 1.0, greedy for ``k == 1``); given explicit ``temperatures``, sample i is drawn
    at ``temperatures[i % len(temperatures)]``.

    >>> temperature_schedule(3), temperature_schedule(3, (0.7,))
    ((0.2, 0.6, 1.0), (0.7, 0.7, 0.7))
    """
    if temperatures is None:
        return ladder(k)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"a schedule needs k >= 1 samples, got {k!r}")
    if not temperatures:
        raise ValueError("temperatures must hold at least one temperature")
    n = len(temperatures)
    return tuple(float(temperatures[i % n]) for i in range(k))


@dataclass(frozen=True)
class Sample:
    """One sampled completion and its extracted answer (None abstains).

    ``logprob`` is the sum of the generated tokens' log-probabilities.
    """

    text: str
    answer: str | None
    temperature: float
    logprob: float = 0.0
    num_tokens: int = 0

    @property
    def mean_logprob(self) -> float:
        """Mean token log-probability; 0.0 (neutral) when no tokens are recorded."""
        return self.logprob / self.num_tokens if self.num_tokens > 0 else 0.0


@dataclass(frozen=True)
class VoteResult:
    """Outcome of a vote.

    ``agreement`` is the winner's share of the votes cast (weight share for weighted
    strategies), 0 when no vote was cast. ``counts`` holds votes per candidate and
    ``scores`` the (possibly weighted) tally. ``samples`` are the samples the decision
    used and ``kept`` the indices among them that voted for the winner.
    """

    answer: str | None
    agreement: float
    counts: dict[str, int]
    samples: tuple[Sample, ...]
    kept: tuple[int, ...]
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def votes_used(self) -> int:
        """How many samples the decision looked at (abstentions included)."""
        return len(self.samples)


def _key(answer: str | None) -> str | None:
    """The candidate an answer votes for: its canonical number, or its stripped text."""
    if not isinstance(answer, str) or not answer.strip():
        return None
    return normalize_number(answer) or answer.strip()


def _tally(samples: Sequence[Sample], weights: Sequence[float]) -> VoteResult:
    """Winner by summed weight; ties -> lowest temperature, then best mean log-prob."""
    samples = tuple(samples)
    keys = [_key(s.answer) for s in samples]
    counts: dict[str, int] = {}
    scores: dict[str, float] = {}
    best: dict[str, tuple[float, float]] = {}  # key -> (temperature, -mean_logprob), min wins
    for key, sample, weight in zip(keys, samples, weights, strict=True):
        if key is None:
            continue
        counts[key] = counts.get(key, 0) + 1
        scores[key] = scores.get(key, 0.0) + weight
        rank = (sample.temperature, -sample.mean_logprob)
        best[key] = min(best.get(key, rank), rank)
    if not counts:
        return VoteResult(None, 0.0, counts, samples, (), scores)
    top = max(scores.values())
    tied = [k for k in scores if scores[k] == top]
    winner = min(tied, key=lambda k: best[k])  # min() keeps first appearance on equal ranks
    total = sum(scores.values())
    agreement = scores[winner] / total if total > 0 else 0.0
    kept = tuple(i for i, key in enumerate(keys) if key == winner)
    return VoteResult(winner, agreement, counts, samples, kept, scores)


class VoteStrategy(abc.ABC):
    """Turns a question's samples into one answer."""

    @abc.abstractmethod
    def decide(self, samples: Sequence[Sample]) -> VoteResult:
        """Vote over ``samples`` (in the order they were drawn)."""


@dataclass(frozen=True)
class Majority(VoteStrategy):
    """One vote per non-None answer; ties go to the lowest temperature that produced a
    tied answer, then to the higher mean token log-probability, then to the answer seen
    first.

    >>> Majority().decide([Sample("", "18", 0.2), Sample("", "18.0", 1.0),
    ...                    Sample("", "20", 0.4), Sample("", None, 0.6)]).answer
    '18'
    """

    def decide(self, samples: Sequence[Sample]) -> VoteResult:
        return _tally(samples, [1.0] * len(samples))


@dataclass(frozen=True)
class WeightedByLogprob(VoteStrategy):
    """Each vote weighs ``exp(mean_logprob / temperature)``: confident paths count more.

    ``temperature`` (> 0) flattens (large) or sharpens (small) the weights; it is not
    the sampling temperature. Weights are computed relative to the most confident
    voter, so they never overflow; non-finite log-probs weigh 0 (all of them non-finite:
    plain majority). ``agreement`` is the winner's weight share.
    """

    temperature: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be finite and > 0, got {self.temperature}")

    def decide(self, samples: Sequence[Sample]) -> VoteResult:
        logits = [s.mean_logprob / self.temperature for s in samples]
        voters = (x for x, s in zip(logits, samples, strict=True) if _key(s.answer) is not None)
        finite = [x for x in voters if math.isfinite(x)]
        if not finite:
            return _tally(samples, [1.0] * len(samples))
        peak = max(finite)
        weights = [math.exp(x - peak) if math.isfinite(x) else 0.0 for x in logits]
        return _tally(samples, weights)


@dataclass(frozen=True)
class AdaptiveStop:
    """When to stop drawing samples for one question.

    Stop once ``max_samples`` are drawn, or (never before ``min_samples``) when the
    leading answer cannot be caught even if every remaining sample voted for the
    runner-up (``leader > runner_up + remaining``; a tie could still flip through the
    tie-break), or when the last ``window`` answers are all non-None and equal.

    >>> AdaptiveStop(max_samples=5).should_stop(["7", "7", "7"])
    True
    """

    max_samples: int = 5
    min_samples: int = 2
    window: int | None = None

    def __post_init__(self) -> None:
        if self.max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {self.max_samples}")
        if not 1 <= self.min_samples <= self.max_samples:
            raise ValueError(
                f"min_samples must be between 1 and max_samples={self.max_samples}, "
                f"got {self.min_samples}"
            )
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be >= 1 or None, got {self.window}")

    def should_stop(self, answers: Sequence[str | None]) -> bool:
        """Whether the answers drawn so far settle the vote."""
        drawn = len(answers)
        if drawn >= self.max_samples:
            return True
        if drawn < self.min_samples:
            return False
        keys = [_key(a) for a in answers]
        counts = sorted((keys.count(k) for k in set(keys) if k is not None), reverse=True)
        leader = counts[0] if counts else 0
        runner_up = counts[1] if len(counts) > 1 else 0
        if leader > runner_up + (self.max_samples - drawn):
            return True
        if self.window is not None and drawn >= self.window:
            last = keys[-self.window :]
            return last[0] is not None and all(k == last[0] for k in last)
        return False


@dataclass(frozen=True)
class AdaptiveMajority(VoteStrategy):
    """Majority over the shortest prefix of samples at which ``stop`` says stop.

    Given fewer samples than that (generation still under way), it votes over all of
    them; ``result.votes_used`` tells how many samples the answer needed.
    """

    stop: AdaptiveStop = field(default_factory=AdaptiveStop)

    def should_stop(self, samples: Sequence[Sample]) -> bool:
        """Whether the samples drawn so far are enough (for a generation loop)."""
        return self.stop.should_stop([s.answer for s in samples])

    def decide(self, samples: Sequence[Sample]) -> VoteResult:
        answers = [s.answer for s in samples]
        used = next(
            (n for n in range(1, len(samples) + 1) if self.stop.should_stop(answers[:n])),
            len(samples),
        )
        return Majority().decide(samples[:used])


def _adaptive(*, stop: AdaptiveStop | None = None, **stop_options: Any) -> AdaptiveMajority:
    if stop is not None and stop_options:
        raise TypeError("pass either stop=AdaptiveStop(...) or its options, not both")
    return AdaptiveMajority(stop=stop if stop is not None else AdaptiveStop(**stop_options))


STRATEGIES: Mapping[str, Callable[..., VoteStrategy]] = MappingProxyType(
    {"majority": Majority, "weighted": WeightedByLogprob, "adaptive": _adaptive}
)


def get_strategy(name: str, **options: Any) -> VoteStrategy:
    """Build the strategy registered as ``name`` with ``options``.

    ``get_strategy("adaptive", max_samples=8)`` passes options to :class:`AdaptiveStop`.
    Raises ValueError for an unknown name (listing the valid ones) or bad options.
    """
    if name not in STRATEGIES:
        raise ValueError(
            f"unknown vote strategy {name!r}; valid strategies: {', '.join(STRATEGIES)}"
        )
    try:
        return STRATEGIES[name](**options)
    except TypeError as err:
        raise ValueError(f"bad options for vote strategy {name!r}: {err}") from err


def maj_at_k(samples: Sequence[Sample], k: int, strategy: VoteStrategy | None = None) -> str | None:
    """The answer ``strategy`` (default :class:`Majority`) gives from the first ``k`` samples.

    For "accuracy against votes used" curves.

    >>> maj_at_k([Sample("", "3", 0.2), Sample("", "5", 0.4), Sample("", "5", 0.6)], 2)
    '3'
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    return (strategy or Majority()).decide(list(samples)[:k]).answer


@dataclass(frozen=True, kw_only=True)
class VoteConfig:
    """How to answer by consensus.

    ``votes`` is the number of samples k per question. ``temperatures`` None (the
    default) draws them on the ladder ``ladder(k)`` (0.2 ... 1.0; greedy for
    k = 1); explicit temperatures are cycled. Both are decided by
    :func:`temperature_schedule`, see :meth:`schedule`.
    ``strategy`` names an entry of ``STRATEGIES``; ``max_new_tokens`` bounds
    each sample's length.
    """

    votes: int = 5
    temperatures: tuple[float, ...] | None = None
    strategy: str = "majority"
    max_new_tokens: int = 256

    def __post_init__(self) -> None:
        if not 1 <= self.votes <= MAX_VOTES:
            raise ValueError(f"votes must be between 1 and {MAX_VOTES}, got {self.votes}")
        if self.temperatures is not None and not self.temperatures:
            raise ValueError("temperatures must hold at least one temperature")
        bad = [t for t in self.temperatures or () if not (math.isfinite(t) and t >= 0)]
        if bad:
            raise ValueError(f"temperatures must be finite and >= 0, got {bad}")
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"unknown vote strategy {self.strategy!r}; valid: {', '.join(STRATEGIES)}"
            )
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    def schedule(self) -> tuple[float, ...]:
        """The temperature of each of the ``votes`` samples (``temperature_schedule``)."""
        return temperature_schedule(self.votes, self.temperatures)
