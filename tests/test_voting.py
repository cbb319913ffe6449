"""bigthoughts.inference.voting: ties, abstentions, weighting, adaptive stopping, maj@k."""

from __future__ import annotations

import dataclasses
import math

import pytest

from bigthoughts.inference.voting import (
    DEFAULT_LADDER,
    STRATEGIES,
    AdaptiveMajority,
    AdaptiveStop,
    Majority,
    Sample,
    VoteStrategy,
    WeightedByLogprob,
    get_strategy,
    ladder,
    maj_at_k,
    temperature_schedule,
)


def samples(answers, temps=None, logprobs=None, tokens=10) -> list[Sample]:
    if temps is None:  # the default ladder, as a generation loop would use it
        temps = ladder(len(answers)) if len(answers) > 1 else (0.2,) * len(answers)
    logprobs = logprobs or [0.0] * len(answers)
    return [
        Sample(f"text {i}", a, t, lp, tokens)
        for i, (a, t, lp) in enumerate(zip(answers, temps, logprobs, strict=True))
    ]


def test_ladder() -> None:
    assert ladder(5) == DEFAULT_LADDER == (0.2, 0.4, 0.6, 0.8, 1.0)
    assert ladder(1) == (0.0,)
    assert ladder(2) == (0.2, 1.0)
    assert ladder(3) == (0.2, 0.6, 1.0)
    assert ladder(9) == (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError):
            ladder(bad)  # type: ignore[arg-type]


def test_temperature_schedule_is_one_rule_for_every_k() -> None:
    # no explicit temperatures: the ladder 0.2 + 0.8 i / (k - 1), greedy for k = 1
    assert temperature_schedule(1) == (0.0,)
    assert temperature_schedule(2) == (0.2, 1.0)
    assert temperature_schedule(5) == (0.2, 0.4, 0.6, 0.8, 1.0)
    assert temperature_schedule(6) == (0.2, 0.36, 0.52, 0.68, 0.84, 1.0)
    # explicit temperatures: cycled
    assert temperature_schedule(4, (0.0, 0.5, 1.0)) == (0.0, 0.5, 1.0, 0.0)
    for bad_k in (0, -3):
        with pytest.raises(ValueError):
            temperature_schedule(bad_k)
        with pytest.raises(ValueError):
            temperature_schedule(bad_k, (0.5,))
    with pytest.raises(ValueError, match="at least one"):
        temperature_schedule(3, ())


def test_sample_mean_logprob() -> None:
    assert Sample("", "1", 0.2, logprob=-6.0, num_tokens=3).mean_logprob == -2.0
    assert Sample("", "1", 0.2, logprob=-6.0).mean_logprob == 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        Sample("", "1", 0.2).answer = "2"  # type: ignore[misc]


def test_majority_plain() -> None:
    result = Majority().decide(samples(["18", "20", "18.0", None, "$18"]))
    assert result.answer == "18"
    assert result.counts == {"18": 3, "20": 1}
    assert result.agreement == pytest.approx(3 / 4)  # the abstention casts no vote
    assert result.kept == (0, 2, 4)
    assert result.votes_used == 5


def test_majority_tie_broken_by_lowest_temperature() -> None:
    # 18 at T=0.6 and 1.0; 20 at T=0.4 and 0.8 -> 20 holds the coldest tied sample
    result = Majority().decide(samples(["18", "20", "18", "20"], temps=[0.6, 0.4, 1.0, 0.8]))
    assert result.answer == "20"
    assert result.agreement == 0.5
    assert result.kept == (1, 3)


def test_majority_tie_then_broken_by_mean_logprob() -> None:
    # same lowest temperature: 20's sample has mean log-prob -2/10 > 18's -5/10
    data = samples(["18", "20"], temps=[0.2, 0.2], logprobs=[-5.0, -2.0])
    assert Majority().decide(data).answer == "20"
    data = samples(["18", "20"], temps=[0.2, 0.2], logprobs=[-2.0, -5.0])
    assert Majority().decide(data).answer == "18"
    # full tie: first seen wins (deterministic)
    assert Majority().decide(samples(["18", "20"], temps=[0.2, 0.2])).answer == "18"


def test_majority_beats_tie_break() -> None:
    # a colder minority never beats a real majority
    result = Majority().decide(samples(["5", "7", "7"], temps=[0.0, 0.8, 1.0]))
    assert result.answer == "7"


@pytest.mark.parametrize("answers", [[], [None], [None, None, None], ["", "  "]])
def test_no_votes_cast(answers) -> None:
    data = [Sample("", a, 0.5) for a in answers]
    for strategy in (Majority(), WeightedByLogprob(), AdaptiveMajority()):
        result = strategy.decide(data)
        assert result.answer is None
        assert result.agreement == 0.0
        assert result.counts == {}
        assert result.kept == ()


def test_non_numeric_answers_vote_by_text() -> None:
    result = Majority().decide(samples(["yes", " yes ", "no"]))
    assert (result.answer, result.counts) == ("yes", {"yes": 2, "no": 1})


def test_weighted_by_logprob_overrules_majority_when_confident() -> None:
    # two unsure votes for 18 (mean -1.0) against one confident vote for 20 (mean -0.1)
    data = samples(["18", "18", "20"], temps=[0.2, 0.6, 1.0], logprobs=[-10.0, -10.0, -1.0])
    w18, w20 = 2 * math.exp(-1.0), math.exp(-0.1)
    result = WeightedByLogprob().decide(data)
    assert result.answer == "20"
    assert result.agreement == pytest.approx(w20 / (w18 + w20))
    assert result.counts == {"18": 2, "20": 1}
    assert result.scores["18"] / result.scores["20"] == pytest.approx(w18 / w20)
    # a high weighting temperature flattens the weights back toward majority
    flat = WeightedByLogprob(temperature=10.0).decide(data)
    w18, w20 = 2 * math.exp(-0.1), math.exp(-0.01)
    assert flat.answer == "18"
    assert flat.agreement == pytest.approx(w18 / (w18 + w20))
    assert Majority().decide(data).answer == "18"


def test_weighted_handles_extreme_logprobs() -> None:
    data = [
        Sample("", "1", 0.2, 1e308, 1),
        Sample("", "2", 0.2, -1e308, 1),
        Sample("", "2", 0.4, -math.inf, 1),
        Sample("", None, 0.2, 5e308, 1),
    ]
    result = WeightedByLogprob().decide(data)
    assert result.answer == "1"
    assert result.agreement == pytest.approx(1.0)
    nan_only = [
        Sample("", "3", 0.2, math.nan, 1),
        Sample("", "4", 0.4, math.nan, 1),
        Sample("", "4", 0.6, math.nan, 1),
    ]
    assert WeightedByLogprob().decide(nan_only).answer == "4"  # falls back to majority


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.inf, math.nan])
def test_weighted_rejects_bad_temperature(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        WeightedByLogprob(temperature=temperature)


@pytest.mark.parametrize(
    ("answers", "stop"),
    [
        ([], False),
        (["7"], False),  # below min_samples
        (["7", "7"], False),  # 2 > 0 + 3 remaining? no
        (["7", "7", "7"], True),  # 3 > 0 + 2
        (["7", "8", "7"], False),  # 2 > 1 + 2? no
        (["7", "8", "7", "7"], True),  # 3 > 1 + 1
        (["7", "8", "7", "8"], False),
        (["7", "7", "8", "8"], False),  # 2 > 2 + 1? no
        (["7", "7.0", "$7"], True),  # grouped as one candidate
        ([None, None, None, None], False),
        (["7", None, "7"], False),  # 2 > 0 + 2? no: a tie could still flip it
        (["7", None, "7", None], True),  # 2 > 0 + 1
        (["1", "2", "3", "4", "5"], True),  # max_samples reached
    ],
)
def test_adaptive_stop_default(answers, stop: bool) -> None:
    assert AdaptiveStop().should_stop(answers) is stop


@pytest.mark.parametrize(
    ("rule", "answers", "stop"),
    [
        (AdaptiveStop(max_samples=5, min_samples=2, window=2), ["7", "7"], True),
        (AdaptiveStop(max_samples=5, min_samples=2, window=2), ["7", None], False),
        (AdaptiveStop(max_samples=5, min_samples=2, window=2), [None, None], False),
        (AdaptiveStop(max_samples=5, min_samples=2, window=2), ["8", "7", "7"], True),
        (AdaptiveStop(max_samples=5, min_samples=2, window=2), ["7", "8"], False),
        (AdaptiveStop(max_samples=9, min_samples=3, window=3), ["7", "7"], False),  # min
        (AdaptiveStop(max_samples=9, min_samples=3, window=3), ["8", "7", "7", "7"], True),
        (AdaptiveStop(max_samples=9, min_samples=3), ["8", "7", "7", "7"], False),  # 3 > 1 + 5?
        (AdaptiveStop(max_samples=3, min_samples=1), ["7"], False),  # 1 > 0 + 2? no
        (AdaptiveStop(max_samples=3, min_samples=1), ["7", "7"], True),  # 2 > 0 + 1
        (AdaptiveStop(max_samples=1, min_samples=1), ["7"], True),
    ],
)
def test_adaptive_stop_rules(rule: AdaptiveStop, answers, stop: bool) -> None:
    assert rule.should_stop(answers) is stop


@pytest.mark.parametrize(
    "kwargs", [{"max_samples": 0}, {"min_samples": 0}, {"min_samples": 6}, {"window": 0}]
)
def test_adaptive_stop_validation(kwargs) -> None:
    with pytest.raises(ValueError):
        AdaptiveStop(**kwargs)


def test_adaptive_majority_uses_the_shortest_settling_prefix() -> None:
    data = samples(["7", "7", "7", "8", "8"])
    result = AdaptiveMajority().decide(data)
    assert (result.answer, result.votes_used, result.agreement) == ("7", 3, 1.0)
    assert result.samples == tuple(data[:3])
    full = Majority().decide(data)
    assert (full.answer, full.votes_used, full.agreement) == ("7", 5, 0.6)


def test_adaptive_majority_runs_to_the_end_when_contested() -> None:
    data = samples(["7", "8", "7", "8", "8"])
    result = AdaptiveMajority().decide(data)
    assert (result.answer, result.votes_used, result.counts) == ("8", 5, {"7": 2, "8": 3})


def test_adaptive_majority_on_samples_drawn_so_far() -> None:
    strategy = AdaptiveMajority(AdaptiveStop(max_samples=5))
    drawn = samples(["9", "4"], temps=[0.2, 0.4])
    assert not strategy.should_stop(drawn)
    result = strategy.decide(drawn)  # votes over what exists: tie -> colder sample
    assert (result.answer, result.votes_used) == ("9", 2)
    assert strategy.should_stop(samples(["9", "9", "9"]))


def test_maj_at_k() -> None:
    data = samples(["3", "5", "5", "3", "3"])  # temperatures 0.2 .. 1.0
    # k=2: 3 (T=0.2) ties 5 (T=0.4) -> 3; k=3: 5 leads 2-1; k=4: 2-2, 3 holds T=0.2 -> 3
    assert [maj_at_k(data, k) for k in range(1, 6)] == ["3", "3", "5", "3", "3"]
    assert maj_at_k(data, 50) == "3"
    weighted = samples(["3", "5"], logprobs=[-30.0, -1.0])
    assert maj_at_k(weighted, 2) == "3"
    assert maj_at_k(weighted, 2, WeightedByLogprob()) == "5"
    for bad in (0, -1):
        with pytest.raises(ValueError, match="k must be"):
            maj_at_k(data, bad)


def test_registry_and_get_strategy() -> None:
    assert set(STRATEGIES) == {"majority", "weighted", "adaptive"}
    assert get_strategy("majority") == Majority()
    assert get_strategy("weighted", temperature=2.0) == WeightedByLogprob(temperature=2.0)
    assert get_strategy("adaptive") == AdaptiveMajority(AdaptiveStop())
    assert get_strategy("adaptive", max_samples=8, window=3) == AdaptiveMajority(
        AdaptiveStop(max_samples=8, window=3)
    )
    stop = AdaptiveStop(max_samples=4)
    assert get_strategy("adaptive", stop=stop) == AdaptiveMajority(stop)
    with pytest.raises(ValueError, match="unknown vote strategy 'best'.*majority, weighted"):
        get_strategy("best")
    with pytest.raises(ValueError, match="bad options for vote strategy 'majority'"):
        get_strategy("majority", temperature=1.0)
    with pytest.raises(ValueError, match="bad options"):
        get_strategy("adaptive", stop=stop, max_samples=3)
    with pytest.raises(TypeError):
        VoteStrategy()  # type: ignore[abstract]
    for name in STRATEGIES:
        strategy = get_strategy(name)
        assert isinstance(strategy, VoteStrategy)
        with pytest.raises(dataclasses.FrozenInstanceError):
            strategy.x = 1  # type: ignore[attr-defined]


def test_docstring_examples_run() -> None:
    import doctest

    import bigthoughts.inference.voting as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
