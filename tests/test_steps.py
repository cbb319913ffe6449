"""Step checker: the safe evaluator against hand-computed values, its bounds, the step
finder on hand-labelled traces and on GSM8K's own annotations, and fuzzing."""

from __future__ import annotations

import json
import re
from fractions import Fraction as F

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bigthoughts.answers import answers_equal, normalize_number
from bigthoughts.steps import (
    MAX_BITS,
    MAX_CHARS,
    MAX_STEPS,
    calculate,
    check_steps,
    claim_is_right,
    evaluate_expression,
    find_steps,
)


@pytest.mark.parametrize(("text", "value"), [
    ("48/2", F(24)),
    ("48 / 2", F(24)),
    ("12*7", F(84)),
    ("2 + 3 * 4", F(14)),
    ("(2 + 3) * 4", F(20)),
    ("10 - 4 - 3", F(3)),  # left-associative
    ("64 / 4 / 2", F(8)),
    ("10/3", F(10, 3)),
    ("2.5 * 4", F(10)),
    (".5 + .25", F(3, 4)),
    ("1,200 + 300", F(1500)),
    ("$1,200 + $300", F(1500)),
    ("£3 + €2", F(5)),
    ("20% * 50", F(10)),  # % divides by 100
    ("50%", F(1, 2)),
    ("100% - 80%", F(1, 5)),
    ("3 × 4", F(12)),
    ("3 x 4", F(12)),
    ("3X4", F(12)),
    ("3 · 4", F(12)),
    ("12 ÷ 4", F(3)),
    ("5 − 7", F(-2)),  # unicode minus
    ("-5 + 2", F(-3)),
    ("5 - -3", F(8)),
    ("+4", F(4)),
    ("2**10", F(1024)),
    ("2^10", F(1024)),
    ("2^3^2", F(512)),  # right-associative: 2^(3^2)
    ("-2^2", F(-4)),  # power binds tighter than unary minus
    ("2**-2", F(1, 4)),
    ("(1/2)^3", F(1, 8)),
    ("0.1 + 0.2", F(3, 10)),  # exact, not 0.30000000000000004
    ("((((7))))", F(7)),
    ("  7 \n", F(7)),
])
def test_evaluator_values(text: str, value: F) -> None:
    assert evaluate_expression(text) == value


@pytest.mark.parametrize("text", [
    "", "   ", "x", "x + 1", "2x", "2x + 3", "3 x", "x 3", "2(3)", "(2)(3)", "1/0", "5 / (2 - 2)",
    "0**-1", "2 +", "* 3", "(1 + 2", "1 + 2)", "1,2", "1,20", "5.", "1..2", "1 2", "abs(3)",
    "__import__('os')", "2 ** 0.5", "4 ^ (1/2)", "2 = 2", "3 % 4", "1e5", "[1]", "3 -- ",
    "2**65",  # exponent above MAX_EXPONENT
])
def test_evaluator_refuses(text: str) -> None:
    assert evaluate_expression(text) is None
    assert calculate(text) is None


@pytest.mark.parametrize("text", [
    "9**9**9**9",
    "9^9^9^9",
    "10**64 ** 10**64",
    "1" * 10_000,  # a 10,000-digit number
    "1" * 41,  # one digit over MAX_DIGITS
    "(" * 10_000 + "1" + ")" * 10_000,
    "(" * 60 + "1" + ")" * 60,  # short, but deeper than MAX_DEPTH
    "-" * 100 + "1",
    "1+" * 5_000 + "1",
    "99999999999999999999**64",  # 67 bits * 64 > MAX_BITS: refused before computing
    "2**64 * 2**64 * 2**64 * 2**64 * 2**64 * 2**64 * 2**64 * 2**64 * 2**64",
])
def test_evaluator_refuses_what_is_too_big(text: str) -> None:
    # Each would take hours, gigabytes or a RecursionError if computed; the bounds refuse
    # them up front (the fuzz test below times the general case).
    assert evaluate_expression(text) is None
    assert calculate(text) is None


def test_bounds_are_where_documented() -> None:
    assert evaluate_expression("1" * 40) == int("1" * 40)
    assert evaluate_expression("(" * 40 + "1" + ")" * 40) == 1
    assert evaluate_expression("2**64") == 2**64
    assert evaluate_expression("1+" * ((MAX_CHARS - 1) // 2) + "1") == (MAX_CHARS + 1) // 2
    assert evaluate_expression(" " * MAX_CHARS + "1") is None  # input length, not digits
    big = "2**64*" * 7 + "2**64"  # 2**512 has 513 bits
    assert evaluate_expression(big) is None and MAX_BITS == 512
    assert evaluate_expression("2**64*" * 6 + "2**63") == 2**447


@pytest.mark.parametrize(("expr", "text"), [
    ("12*7", "84"),
    ("48/2", "24"),
    ("5/2", "2.5"),
    ("1/8", "0.125"),
    ("10/3", "3.333333"),
    ("2/3", "0.666667"),  # rounded, not truncated
    ("1/1024", "0.000977"),  # terminating but longer than 6 decimals: rounded too
    ("-7/2", "-3.5"),
    ("-1/3", "-0.333333"),
    ("1/3000000", "0"),  # rounds to zero: no "-0" or "0.000000"
    ("-1/3000000", "0"),
    ("0.1 + 0.2", "0.3"),
    ("$1,200 + $300", "1500"),
    ("2**64", "18446744073709551616"),
    ("100 - 100", "0"),
])
def test_calculate_formats_like_gsm8k(expr: str, text: str) -> None:
    assert calculate(expr) == text


@pytest.mark.parametrize(("value", "claimed", "decimals", "percent", "right"), [
    (F(24), F(24), 0, False, True),
    (F(10, 3), F(333, 100), 2, False, True),  # rounded to the decimals written
    (F(10, 3), F(33, 10), 1, False, True),
    (F(2, 3), F(67, 100), 2, False, True),
    (F(2, 3), F(66, 100), 2, False, False),  # truncated is wrong
    (F(7, 2), F(3), 0, False, False),  # no decimals written: no rounding allowed
    (F(1, 3), F(3333333, 10**7), 7, False, True),
    (F(10**9 + 1), F(10**9), 0, False, True),  # relative 1e-6
    (F(10**5 + 1), F(10**5), 0, False, False),
    (F(1, 5), F(20), 0, True, True),  # 20 / 100 = 20%
    (F(20), F(20), 0, True, True),  # 0.2 * 100 = 20%
    (F(21), F(20), 0, True, False),
    (F(0), F(0), 0, False, True),
    (F(0), F(1, 10**9), 9, False, False),  # off by one in the last decimal written
    (F(1, 3 * 10**9), F(0), 0, False, False),  # no relative slack around 0: written "0"
])
def test_claim_rule(value, claimed, decimals, percent, right) -> None:
    assert claim_is_right(value, claimed, decimals=decimals, percent=percent) is right


def steps_of(trace: str) -> list[tuple[str, str, bool | None]]:
    return [(s.expression, s.claimed, s.correct) for s in find_steps(trace)]


@pytest.mark.parametrize(("trace", "expected"), [
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.", [("48/2", "24", True)]),
    ("She sold <<48+24=73>>73.", [("48+24", "73", False)]),
    ("48 / 2 = 24", [("48 / 2", "24", True)]),
    ("It costs $1,200 + $300 = $1,500 in all.", [("$1,200 + $300", "$1,500", True)]),
    ("3 × 4 = 12 and 3 x 5 = 16", [("3 × 4", "12", True), ("3 x 5", "16", False)]),
    ("2 + 3 = 5 * 2 = 10", [("2 + 3", "5", True), ("5 * 2", "10", True)]),
    ("2 + 3 = 6 * 2 = 12", [("2 + 3", "6", False), ("6 * 2", "12", True)]),  # each link
    ("42 / 3 + 16 = 14 + 16 = 30",  # a chain of equal expressions
     [("42 / 3 + 16", "14 + 16", True), ("14 + 16", "30", True)]),
    ("She sells 16 - 3 - 4 = 9 eggs.", [("16 - 3 - 4", "9", True)]),
    ("1. 5 + 3 = 8", [("5 + 3", "8", True)]),
    ("He had 10, 3 + 4 = 7 left", [("3 + 4", "7", True)]),
    ("(3 + 4 = 7)", [("3 + 4", "7", True)]),
    ("total = 3 + 4 = 7 apples", [("3 + 4", "7", True)]),
    ("3/6 = 1/2", [("3/6", "1/2", True)]),
    ("3 / 2 = 1 1/2 cups", [("3 / 2", "1 1/2", True)]),
    ("20 / 100 = 20%", [("20 / 100", "20%", True)]),
    ("10/3 = 3.33 each", [("10/3", "3.33", True)]),
    ("2/3 = 0.66", [("2/3", "0.66", False)]),
    ("20% * 50 = $10.", [("20% * 50", "$10", True)]),
    ("−3 + 5 = 2", [("−3 + 5", "2", True)]),
    ("2x + 3 = 11", [("2x + 3", "11", None)]),  # looks like arithmetic, cannot be read
    ("9**9**9**9 = 1", [("9**9**9**9", "1", None)]),
    ("9(8)-5 = 67", [("9(8)-5", "67", None)]),  # no implicit product, no guessed suffix
])
def test_find_steps(trace: str, expected: list) -> None:
    assert steps_of(trace) == expected


@pytest.mark.parametrize("trace", [
    "x = 5",
    "Let x = 5 and y = 7.",
    "5 = 5",
    "It takes 3-4 days.",
    "On 2020-01-05 it rained; 12/25 is Christmas.",
    "3/4 of the cake",
    "a <= 5, b >= 6, 1 == 1, 2 != 3",
    "12 / 3 = four",  # no number claimed
    "48/2 = <<48/2=24>>24",  # the inline '=' before an annotation is not a second step
    "There are 60 students x 2/3 = 40 students",  # the words are operands we cannot read
    "He works M + 4 + 2 = 8 hours",
    "so 100/5 = 5A/5",  # algebra on the right
    "The answer is 7.",
    "",
])
def test_find_steps_skips(trace: str) -> None:
    assert [s for s in find_steps(trace) if s.kind == "inline"] == []


def test_step_spans_point_into_the_trace() -> None:
    trace = "First 6 * 7 = 42 then <<42-2=40>>40."
    inline, annotated = find_steps(trace)
    assert trace[slice(*inline.span)] == "6 * 7 = 42"
    assert trace[slice(*annotated.span)] == "<<42-2=40>>"
    assert inline.operands == (F(6), F(7)) and inline.claimed_value == 42
    assert annotated.kind == "annotation" and annotated.value == 40


def test_check_steps_counts() -> None:
    report = check_steps("16 - 3 - 4 = 9 and 9 * 2 = 19, then 2x + 1 = 5 and <<3*3=9>>")
    assert (report.checked, report.right, report.wrong) == (3, 2, 1)
    assert len(report.steps) == 4  # the unchecked 2x + 1 is kept in steps
    assert check_steps(None) == check_steps("") == check_steps("no numbers")  # type: ignore[arg-type]
    assert check_steps("").checked == 0


def test_huge_chains_are_capped() -> None:
    chain = "1 + 1 = 2" + "".join(f" + 1 = {n}" for n in range(3, MAX_STEPS + 50))
    report = check_steps(chain)
    assert report.checked == MAX_STEPS and report.wrong == 0


def test_gsm8k_annotations_are_found_and_right(gsm8k_dir) -> None:
    """GSM8K's authors computed each ``<<E=R>>`` with a calculator: the checker must
    find every one with an operator and agree with nearly all of them (the few that
    disagree are known errors in the data, e.g. ``<<3/1=1>>``)."""
    rows = [json.loads(line) for line in
            (gsm8k_dir / "train.jsonl").read_text(encoding="utf-8").splitlines()[:1000]]
    found = right = expected = 0
    for row in rows:
        expected += len(re.findall(r"<<[^<>=]*[-+*/][^<>=]*=[^<>]*>>", row["answer"]))
        steps = [s for s in find_steps(row["answer"]) if s.kind == "annotation"]
        found += len(steps)
        right += sum(s.correct is True for s in steps)
    assert found >= 0.99 * expected and right >= 0.995 * found


def test_calculate_reproduces_gsm8k_calculator(gsm8k_dir) -> None:
    """GSM8K's ``<<E=R>>`` results came from its authors' calculator: ours must give
    the same number (compared by the project's answer normaliser) for all of them
    except floor division ``//``, which the evaluator deliberately does not read."""
    text = (gsm8k_dir / "train.jsonl").read_text(encoding="utf-8")
    pairs = [(e, r) for line in text.splitlines()[:3000]
             for e, r in re.findall(r"<<([^<>=]*)=([^<>]*)>>", json.loads(line)["answer"])]
    disagree = [(e, r) for e, r in pairs
                if not answers_equal(normalize_number(calculate(e) or ""), normalize_number(r))]
    assert len(pairs) > 9000
    assert all("//" in e for e, _ in disagree) and len(disagree) <= 3


# --- fuzz ------------------------------------------------------------------------------
MATHY = st.text(alphabet="0123456789+-*/^x()., $%=<>×÷−·\n", max_size=80)
FRAGMENTS = st.sampled_from([
    "<<", ">>", "=", " = ", "**", "9", "99999", "(", ")", "1,200", "$", "%", ".5", "x",
    "<reasoning>", "</reasoning>", "<answer>", "1/2", " 1 1/2", "×", "÷", "−", "-", "\n",
])
TRACES = st.one_of(MATHY, st.text(max_size=80),
                   st.lists(st.one_of(FRAGMENTS, MATHY), max_size=30).map("".join))


@settings(max_examples=400, deadline=200)  # milliseconds per example: a hang fails
@given(TRACES)
def test_fuzz_never_raises_or_hangs(text: str) -> None:
    value = evaluate_expression(text)
    assert value is None or (value.numerator.bit_length() <= MAX_BITS
                             and value.denominator.bit_length() <= MAX_BITS)
    shown = calculate(text)
    assert (shown is None) == (value is None)
    steps = find_steps(text)
    report = check_steps(text)
    assert report.checked == report.right + report.wrong <= len(steps) <= MAX_STEPS
    for step in steps:
        assert 0 <= step.span[0] < step.span[1] <= len(text)
        assert (step.correct is None) == (step.value is None)


@settings(max_examples=100, deadline=200)
@given(st.integers(-10**6, 10**6), st.integers(-10**6, 10**6),
       st.sampled_from(["+", "-", "*", "/"]))
def test_fuzz_arithmetic_against_fractions(a: int, b: int, op: str) -> None:
    """The written sum, difference, product or quotient of two integers is checked
    right, and a claim off by more than the 1e-6 slack is wrong (Fraction as reference)."""
    truth = {"+": F(a) + b, "-": F(a) - b, "*": F(a) * b,
             "/": F(a, b) if b else None}[op]
    expr = f"{a} {op} ({b})"
    assert evaluate_expression(expr) == truth
    if truth is not None and truth.denominator == 1:
        assert steps_of(f"so {expr} = {truth} ok") == [(expr, str(truth), True)]
        off = truth + 1 + abs(truth) // 10**5  # further than the relative 1e-6 slack
        assert steps_of(f"so {expr} = {off} ok") == [(expr, str(off), False)]


def test_docstring_examples_run() -> None:
    import doctest

    import bigthoughts.arithmetic
    import bigthoughts.steps

    for module in (bigthoughts.steps, bigthoughts.arithmetic):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
