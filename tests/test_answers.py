"""Tests for bigthoughts.answers: normaliser, extractor, gold parser, comparison."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bigthoughts.answers import (
    FAILURE_BUCKETS,
    Extraction,
    answers_equal,
    extract,
    extract_answer,
    failure_bucket,
    normalize_number,
    parse_gold,
)

# Text built from the pieces that matter to the parser, plus arbitrary unicode.
FRAGMENTS = [
    "<reasoning>",
    "</reasoning>",
    "<answer>",
    "</answer>",
    "<answer",
    "answer>",
    "</",
    "<",
    ">",
    "18",
    "-3",
    "+4",
    "1,800",
    "1,8000",
    "$",
    "€",
    "£",
    "%",
    "3/4",
    "/0",
    "0",
    ".5",
    "12.50",
    "\u2212",
    " ",
    "\n",
    "dollars",
    "=",
    "9" * 40,
    ",",
    ".",
    "-",
    "#### ",
    "<<2*3=6>>",
]
texty = st.one_of(
    st.text(max_size=80),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=16).map("".join),
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("18", "18"),
        ("18.0", "18"),
        ("1,800", "1800"),
        ("$1,800.00", "1800"),
        ("-3", "-3"),
        ("+3", "3"),
        ("-0", "0"),
        ("0.750", "0.75"),
        ("3/4", "0.75"),
        (".5", "0.5"),
        ("12.50", "12.5"),
        ("2/6", "1/3"),
        ("-4/6", "-2/3"),
        ("50%", "50"),
        ("18 dollars", "18"),
        ("  42 \n", "42"),
        ("\u22127", "-7"),
        ("-$5", "-5"),
        ("$-5", "-5"),
        ("€3", "3"),
        ("£2.25", "2.25"),
        ("1,000,000", "1000000"),
        ("7/8", "0.875"),
        ("10/4", "2.5"),
        ("3 / 4", "0.75"),
        ("0.1", "0.1"),
        ("1/7", "1/7"),
        ("007", "7"),
        ("5-3", "5"),  # the "-" is an operator: first number is 5
        ("x = -3", "-3"),
        ("pH-7", "7"),  # a "-" glued to a word is not a sign
        ("", None),
        ("   ", None),
        ("n/a", None),
        ("eighteen", None),
        ("1/0", None),
        ("9" * 301, None),
    ],
)
def test_normalize_number(text: str, expected: str | None) -> None:
    assert normalize_number(text) == expected


@pytest.mark.parametrize("value", [None, 18, 1.5, b"18", ["18"]])
def test_normalize_number_non_strings_give_none(value: object) -> None:
    assert normalize_number(value) is None  # type: ignore[arg-type]


R = "<reasoning>Some steps 2 + 3 = 5.</reasoning>\n"


@pytest.mark.parametrize(
    ("completion", "value", "mode"),
    [
        # well-formed
        (R + "<answer>18</answer>", "18", "strict"),
        (R + "<answer>$1,800.00</answer>", "1800", "strict"),
        ("<reasoning>x</reasoning><answer>$1,800.00</answer>", "1800", "strict"),
        (R + "<answer> 42 </answer>", "42", "strict"),
        (R + "<answer>\n7\n</answer>\n", "7", "strict"),
        (R + "<answer>-12</answer>", "-12", "strict"),
        (R + "<answer>\u221212</answer>", "-12", "strict"),
        (R + "<answer>3.50</answer>", "3.5", "strict"),
        (R + "<answer>0.25</answer>", "0.25", "strict"),
        (R + "<answer>3/4</answer>", "0.75", "strict"),
        (R + "<answer>2/3</answer>", "2/3", "strict"),
        (R + "<answer>18 dollars</answer>", "18", "strict"),
        (R + "<answer>The answer is 18.</answer>", "18", "strict"),
        (R + "<answer>50%</answer>", "50", "strict"),
        (R + "<answer>€20</answer>", "20", "strict"),
        (R + "<answer>1,234,567</answer>", "1234567", "strict"),
        (R + "<answer>18</answer> I hope this helps! 99", "18", "strict"),
        ("<answer>18</answer>", "18", "strict"),
        (R + "<answer><b>18</b></answer>", "18", "strict"),
        # several numbers inside one tag: the last one
        (R + "<answer>3 + 15 = 18</answer>", "18", "strict"),
        (R + "<answer>18 or 20</answer>", "20", "strict"),
        # two answer tags: strict fails, lenient takes the last number before the last close
        (R + "<answer>18</answer><answer>20</answer>", "20", "lenient"),
        (R + "<answer>18</answer>\n<answer>20</answer> then 7", "20", "lenient"),
        # empty / non-numeric answer: lenient falls back to the reasoning
        (R + "<answer></answer>", "5", "lenient"),
        (R + "<answer>   </answer>", "5", "lenient"),
        (R + "<answer>eighteen</answer>", "5", "lenient"),
        ("<reasoning>no digits</reasoning><answer>none</answer>", None, "none"),
        # missing tags
        ("The total is 16 - 3 - 4 = 9 eggs, so she makes $18.", "18", "lenient"),
        ("So the answer is 1,800.", "1800", "lenient"),
        ("Answer: -4", "-4", "lenient"),
        ("It costs 2.50 each", "2.5", "lenient"),
        ("", None, "none"),
        ("   \n\t ", None, "none"),
        ("I do not know.", None, "none"),
        # broken / nested tags
        (R + "<answer>18", "18", "lenient"),  # truncated
        ("18</answer>", "18", "lenient"),  # close without open
        ("</answer>18<answer>", None, "none"),  # close first, nothing before it
        ("<reasoning>4 <answer>12</answer></reasoning>", "12", "strict"),
        ("<answer>7</answer><reasoning>then 9</reasoning>", "7", "strict"),
        ("<answer><answer>3</answer>", "3", "lenient"),
        # numbers in tag names are not answers
        ("<h2>Result</h2> is 6", "6", "lenient"),
        ("<h2>Result</h2>", None, "none"),
        # GSM8K calculator annotations
        ("She makes 9 * 2 = $<<9*2=18>>18 every day.", "18", "lenient"),
        # a "-" between numbers is subtraction, not a negative result
        ("The game ended 3-2.", "2", "lenient"),
        ("<answer>10-3</answer>", "3", "strict"),
        # comparisons keep their numbers
        ("since x < 5 and y > 3", "3", "lenient"),
    ],
)
def test_extract(completion: str, value: str | None, mode: str) -> None:
    assert extract(completion) == Extraction(value, mode)  # type: ignore[arg-type]
    assert extract_answer(completion) == value
    assert extract_answer(completion, strict=True) == (value if mode == "strict" else None)


def test_extract_answer_brief_example() -> None:
    assert extract_answer("<reasoning>x</reasoning><answer>$1,800.00</answer>") == "1800"


@pytest.mark.parametrize("value", [None, 5, b"<answer>5</answer>", ["<answer>5</answer>"]])
def test_extract_non_strings(value: object) -> None:
    assert extract(value) == Extraction(None, "none")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("completion", "bucket"),
    [
        (R + "<answer>18</answer>", None),
        ("just 18", "no_answer_tag"),
        ("", "no_answer_tag"),
        ("<answer>1</answer><answer>2</answer>", "multiple_answer_tags"),
        ("<answer><answer>2</answer>", "multiple_answer_tags"),
        (R + "<answer>18", "truncated"),
        ("18</answer>", "malformed_answer_tag"),
        ("</answer>18<answer>", "malformed_answer_tag"),
        ("<answer> \n</answer>", "empty_answer"),
        ("<answer>eighteen</answer>", "non_numeric_answer"),
    ],
)
def test_failure_bucket(completion: str, bucket: str | None) -> None:
    assert failure_bucket(completion) == bucket
    assert bucket is None or bucket in FAILURE_BUCKETS
    # a bucket is reported exactly when strict extraction fails
    assert (bucket is None) == (extract(completion).mode == "strict")


@pytest.mark.parametrize(
    ("field", "gold"),
    [
        ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\n#### 18", "18"),
        ("lots of work\n#### 1,800", "1800"),
        ("#### -5", "-5"),
        ("#### 0.5", "0.5"),
        ("a #### 3 b\n#### 4", "4"),
        ("####7\n", "7"),
    ],
)
def test_parse_gold(field: str, gold: str) -> None:
    assert parse_gold(field) == gold


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("no marker 18", "no final '#### N'"),
        ("#### ", "not a number"),
        ("#### many", "not a number"),
    ],
)
def test_parse_gold_errors(field: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_gold(field)


def test_parse_gold_rejects_non_strings() -> None:
    with pytest.raises(TypeError):
        parse_gold(18)  # type: ignore[arg-type]


@pytest.mark.parametrize("split,rows", [("train", 7473), ("test", 1319)])
def test_every_gsm8k_gold_parses_to_an_integer(gsm8k_dir, split: str, rows: int) -> None:
    lines = (gsm8k_dir / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == rows
    for line in lines:
        field = json.loads(line)["answer"]
        gold = parse_gold(field)
        # independent truth: the text after "####" with separators removed is an integer
        written = field.split("####")[-1].strip().replace(",", "")
        assert gold == str(int(written)), field


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ("18", "18", True),
        ("18", "18.0", True),
        ("1,800", "1800", True),
        ("0.5", "1/2", True),
        ("-3", "\u22123", True),
        ("1/3", "0.3333333333333", True),  # tolerance fallback
        ("1/3", "0.33", False),
        ("18", "19", False),
        ("0", "-0", True),
        ("18", None, False),
        (None, None, False),
        ("abc", "abc", True),
        ("abc", "18", False),
        ("", "", True),
    ],
)
def test_answers_equal(a: str | None, b: str | None, equal: bool) -> None:
    assert answers_equal(a, b) is equal
    assert answers_equal(b, a) is equal


def test_answers_equal_tolerance_can_be_disabled() -> None:
    assert not answers_equal("1/3", "0.3333333333333", rel_tol=0.0)
    assert answers_equal("100", "101", rel_tol=0.02)


@settings(max_examples=300, deadline=None)
@given(texty)
def test_normalize_never_raises_and_is_idempotent(text: str) -> None:
    once = normalize_number(text)
    assert once is None or normalize_number(once) == once
    if once is not None:
        assert answers_equal(once, text)  # the text's first number is the one normalised


@settings(max_examples=300, deadline=None)
@given(texty)
def test_extract_never_raises_and_is_consistent(text: str) -> None:
    found = extract(text)
    assert found.mode in ("strict", "lenient", "none")
    assert (found.value is None) == (found.mode == "none")
    if found.value is not None:
        assert normalize_number(found.value) == found.value
    bucket = failure_bucket(text)
    assert (bucket is None) == (found.mode == "strict")
    assert bucket is None or bucket in FAILURE_BUCKETS


@settings(max_examples=200, deadline=None)
@given(st.fractions(max_denominator=10**6))
def test_canonical_form_round_trips_exact_values(value) -> None:
    from fractions import Fraction

    canonical = normalize_number(f"{value.numerator}/{value.denominator}")
    assert canonical is not None
    # independent truth: Fraction parses both "p/q" and decimal strings
    assert Fraction(canonical) == value
    assert normalize_number(canonical) == canonical


def test_docstring_examples_run() -> None:
    import doctest

    import bigthoughts.answers as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
