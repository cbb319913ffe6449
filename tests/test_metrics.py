"""Metrics against hand-computed values (and SciPy as an independent reference)."""

import math

import pytest
from scipy import stats

from bigthoughts.evaluation.metrics import (
    accuracy,
    coverage_curve,
    maj_at_k_curve,
    mcnemar,
    paired_diff_ci,
    percentiles,
    wilson_interval,
)
from bigthoughts.inference.voting import WeightedByLogprob


def test_accuracy():
    assert accuracy([True, False, True, True]) == 0.75
    assert accuracy([False]) == 0.0
    assert math.isnan(accuracy([]))


def test_wilson_7_of_10_by_hand():
    # p = .7, z^2/n = .38416: centre = (.7 + .19208) / 1.38416 = .644492,
    # half = 1.96 * sqrt(.021 + .009604) / 1.38416 = .247719.
    lo, hi = wilson_interval(7, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.3968, 0.8922)


def test_wilson_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and round(hi, 4) == 0.1611  # z^2 / (n + z^2) = 3.8416 / 23.8416
    lo, hi = wilson_interval(20, 20)
    assert round(lo, 4) == 0.8389 and hi == 1.0
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_wilson_matches_scipy():
    ci = stats.binomtest(37, 120).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson_interval(37, 120, z=stats.norm.ppf(0.975))
    assert lo == pytest.approx(ci.low, abs=1e-12) and hi == pytest.approx(ci.high, abs=1e-12)


def test_mcnemar_exact_by_hand():
    # 6 questions only A got right, 1 only B got right, 3 both right, 2 both wrong.
    a = [True] * 6 + [False] + [True] * 3 + [False] * 2
    b = [False] * 6 + [True] + [True] * 3 + [False] * 2
    result = mcnemar(a, b)
    assert (result.b01, result.b10, result.method, result.n) == (1, 6, "exact", 12)
    # two-sided: 2 * P(X <= 1), X ~ Bin(7, 1/2) = 2 * (1 + 7) / 128 = 0.125
    assert result.p_value == pytest.approx(0.125, abs=1e-15)
    assert result.statistic == 1


def test_mcnemar_exact_symmetric_caps_at_one():
    result = mcnemar([True, False, True], [False, True, True])
    assert (result.b01, result.b10) == (1, 1)
    assert result.p_value == 1.0  # 2 * P(X <= 1 | n=2) = 2 * 3/4, capped
    assert mcnemar([True], [True]).p_value == 1.0  # no discordant pair


def test_mcnemar_chi2_with_continuity_correction():
    a = [False] * 10 + [True] * 25 + [True] * 40
    b = [True] * 10 + [False] * 25 + [True] * 40
    result = mcnemar(a, b)
    assert (result.b01, result.b10, result.method) == (10, 25, "chi2")
    assert result.statistic == pytest.approx(14**2 / 35)  # (|10 - 25| - 1)^2 / 35 = 5.6
    assert result.p_value == pytest.approx(stats.chi2.sf(5.6, df=1), rel=1e-12)
    assert round(result.p_value, 4) == 0.018


def test_mcnemar_exact_matches_scipy_binomtest():
    a = [True] * 15 + [False] * 9
    b = [False] * 15 + [True] * 9
    result = mcnemar(a, b)
    assert result.method == "exact"  # 24 discordant < 25
    assert result.p_value == pytest.approx(stats.binomtest(9, 24, 0.5).pvalue, rel=1e-12)


def test_mcnemar_pairs_by_id():
    a = {"q1": True, "q2": False, "q3": True, "only_a": False}
    b = {"q3": False, "q2": True, "q1": True, "only_b": True}
    result = mcnemar(a, b)
    assert (result.b01, result.b10, result.n) == (1, 1, 3)
    with pytest.raises(ValueError):
        mcnemar([True], [True, False])


def test_paired_diff_ci_by_hand():
    # n = 10, b01 = 3, b10 = 1: d = 0.2, var = (0.4 - 0.04) / 10 = 0.036
    a = [False] * 3 + [True] + [True] * 4 + [False] * 2
    b = [True] * 3 + [False] + [True] * 4 + [False] * 2
    d, lo, hi = paired_diff_ci(a, b)
    half = 1.96 * math.sqrt(0.036)
    assert d == pytest.approx(0.2)
    assert (lo, hi) == (pytest.approx(0.2 - half), pytest.approx(0.2 + half))
    assert all(math.isnan(x) for x in paired_diff_ci([], []))


def test_percentiles():
    assert percentiles([1, 2, 3, 4, 5], (50, 95)) == (3.0, pytest.approx(4.8))
    assert all(math.isnan(x) for x in percentiles([], (50, 95)))


def trace(answer, temperature=0.5, logprob=-1.0, tokens=10):
    return {"answer": answer, "temperature": temperature, "logprob": logprob, "tokens": tokens,
            "text": ""}


RECORDS = [
    # gold 5: first sample wrong, then the vote recovers it
    {"gold": "5", "traces": [trace("4", 0.2), trace("5", 0.6), trace("5", 1.0)],
     "vote": {"agreement": 2 / 3}, "correct": True},
    # gold 7: right at once, the later samples cannot outvote it
    {"gold": "7", "traces": [trace("7", 0.2), trace("8", 0.6), trace("7", 1.0)],
     "vote": {"agreement": 2 / 3}, "correct": True},
    # gold 3: all wrong
    {"gold": "3", "traces": [trace("9", 0.2), trace("9", 0.6), trace("9", 1.0)],
     "vote": {"agreement": 1.0}, "correct": False},
    # gold 2: 1 then tie (1 vs 2, tie -> colder sample "1") then 2 wins
    {"gold": "2", "traces": [trace("1", 0.2), trace("2", 0.6), trace("2", 1.0)],
     "vote": {"agreement": 2 / 3}, "correct": True},
]


def test_maj_at_k_curve_by_hand():
    # k=1: [4, 7, 9, 1] -> 1/4; k=2: ties go to the colder sample -> same 1/4;
    # k=3: [5, 7, 9, 2] -> 3/4.
    assert maj_at_k_curve(RECORDS) == [(1, 0.25), (2, 0.25), (3, 0.75)]


def test_maj_at_k_curve_uses_strategy_and_short_records():
    records = [{"gold": "5", "traces": [trace("4", 0.2, logprob=-50.0), trace("5", 0.6)]},
               {"gold": "1", "traces": [trace("1", 0.0)]}]  # one trace: votes with it
    # Weighted: at k=2 the confident "5" (mean logprob -0.1) beats "4" (-5.0).
    assert maj_at_k_curve(records, WeightedByLogprob()) == [(1, 0.5), (2, 1.0)]
    assert maj_at_k_curve(records) == [(1, 0.5), (2, 0.5)]  # majority tie -> colder "4"
    assert maj_at_k_curve([]) == []


def test_coverage_curve_by_hand():
    curve = coverage_curve(RECORDS)
    # threshold 1.0: only the all-"9" question (wrong); 2/3: everything (3 of 4 right).
    assert curve == [(0.25, 0.0, 1.0), (1.0, 0.75, pytest.approx(2 / 3))]
