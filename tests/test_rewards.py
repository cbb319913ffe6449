"""Tests for bigthoughts.rewards: hand-computed values, robustness fuzz, registry."""

from __future__ import annotations

import inspect

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bigthoughts.rewards import (
    DEFAULT_WEIGHTS,
    REWARD_FUNCTIONS,
    broken_tags_penalty,
    correctness_reward,
    format_reward,
    is_exact_format,
    lucky_guess_penalty,
    make_reward_fns,
    no_answer_penalty,
    partial_format_reward,
    score,
    short_reasoning_penalty,
    step_correctness_reward,
)

GOOD = (
    "<reasoning>She sells 16 - 3 - 4 = 9 eggs and makes 9 * 2 = 18.</reasoning>\n"
    "<answer>18</answer>"
)
TWENTY_WORDS = " ".join(f"w{i}" for i in range(20))


def one(fn, completion, gold="18", **kw) -> float:
    (value,) = fn(["prompt"], [completion], [gold], **kw)
    return value


@pytest.mark.parametrize(
    ("completion", "exact"),
    [
        (GOOD, True),
        ("  \n" + GOOD + "\n\n ", True),
        ("<reasoning>a</reasoning><answer>1</answer>", True),
        ("<reasoning>a</reasoning> \n\t <answer>1</answer>", True),
        ("<reasoning>a</reasoning>x<answer>1</answer>", False),  # text between blocks
        (GOOD + " thanks", False),  # text after </answer>
        ("Sure! " + GOOD, False),  # text before <reasoning>
        ("<answer>18</answer>", False),
        ("<reasoning>a</reasoning>", False),
        ("<answer>1</answer><reasoning>a</reasoning>", False),
        ("<reasoning>a</reasoning><answer></answer>", False),  # empty answer
        ("<reasoning> </reasoning><answer>1</answer>", False),  # empty reasoning
        ("<reasoning>a<answer>1</answer></reasoning><answer>2</answer>", False),
        ("<reasoning>a</reasoning><answer>1</answer></answer>", False),
        ("<Reasoning>a</Reasoning><Answer>1</Answer>", False),  # tags are lowercase
        ("", False),
    ],
)
def test_format_reward(completion: str, exact: bool) -> None:
    assert is_exact_format(completion) is exact
    assert one(format_reward, completion) == (2.0 if exact else 0.0)
    assert one(format_reward, completion, weight=3.5) == (3.5 if exact else 0.0)


@pytest.mark.parametrize(
    ("completion", "gold", "reward"),
    [
        (GOOD, "18", 25.0),
        (GOOD, "#### 18", 25.0),  # raw GSM8K answer field
        (GOOD, "She makes $18.\n#### 18", 25.0),
        (GOOD, "18.0", 25.0),
        (GOOD, "19", 0.0),
        ("<reasoning>x</reasoning><answer>$1,800.00</answer>", "1,800", 25.0),
        ("<reasoning>x</reasoning><answer>0.5</answer>", "1/2", 25.0),
        ("<answer>-4</answer>", "#### -4", 25.0),
        ("<answer>3 + 15 = 18</answer>", "18", 25.0),  # last number inside the tag
        ("The answer is 18.", "18", 0.0),  # strict: a right number outside the tag earns nothing
        ("<answer>18</answer><answer>18</answer>", "18", 0.0),  # two answer tags
        ("<answer>18", "18", 0.0),  # truncated
        (GOOD, "no marker", 0.0),  # unparseable gold never matches
        (GOOD, "#### many", 0.0),
        (GOOD, "", 0.0),
    ],
)
def test_correctness_reward(completion: str, gold: str, reward: float) -> None:
    assert one(correctness_reward, completion, gold) == reward


def test_correctness_with_numeric_golds_and_broadcast() -> None:
    completions = ["<answer>7</answer>", "<answer>8</answer>"]
    assert correctness_reward(None, completions, [7, 8.0]) == [25.0, 25.0]
    assert correctness_reward(None, completions, "#### 7") == [25.0, 0.0]  # one gold for all
    assert correctness_reward(None, completions, None) == [0.0, 0.0]
    assert correctness_reward(None, completions, [True, None]) == [0.0, 0.0]


@pytest.mark.parametrize(
    ("completion", "broken"),
    [
        (GOOD, False),
        ("no tags at all 18", False),
        ("", False),
        ("<answer>18</answer>", False),  # lone answer pair
        ("<reasoning>x</reasoning>", False),  # lone reasoning pair
        ("<reasoning>x</reasoning><answer>1</answer> trailing", False),  # not broken, just inexact
        ("<reasoning>x</reasoning><reasoning>y</reasoning><answer>1</answer>", True),  # duplicate
        ("<reasoning>x</reasoning><answer>1</answer></answer>", True),  # duplicate close
        ("<answer>1</answer><reasoning>x</reasoning>", True),  # answer before reasoning
        ("<reasoning>x<answer>1</answer></reasoning>", True),  # answer inside reasoning
        ("</reasoning>x<reasoning><answer>1</answer>", True),  # close before open
        ("<reasoning>x", True),  # open without close (truncated)
        ("<reasoning>x</reasoning><answer>1", True),
        ("x</answer>", True),  # close without open
        ("</answer>1<answer>", True),
    ],
)
def test_broken_tags_penalty(completion: str, broken: bool) -> None:
    assert one(broken_tags_penalty, completion) == (-15.0 if broken else 0.0)


@pytest.mark.parametrize(
    ("completion", "min_words", "penalty"),
    [
        (f"<reasoning>{TWENTY_WORDS}</reasoning><answer>1</answer>", 20, 0.0),
        (f"<reasoning>{TWENTY_WORDS} more</reasoning><answer>1</answer>", 20, 0.0),
        ("<reasoning>a b c d e</reasoning><answer>1</answer>", 20, -5.0 * 15 / 20),
        ("<reasoning>a b c d e f g h i j</reasoning><answer>1</answer>", 20, -2.5),
        ("<reasoning></reasoning><answer>1</answer>", 20, -5.0),
        ("", 20, -5.0),
        ("<answer>1</answer>", 4, -5.0 * 3 / 4),  # no reasoning tag: whole text minus tags
        ("one two three four", 4, 0.0),
        ("<reasoning>a b c<answer>1</answer>", 4, -5.0 * 1 / 4),  # unclosed: up to <answer>
        ("<reasoning>a b c d e f", 8, -5.0 * 2 / 8),  # unclosed, no answer: to the end
        ("a b c <reasoning>d e</reasoning>", 4, -2.5),  # only the reasoning block counts
        ("anything", 0, 0.0),  # min_words 0 disables the penalty
    ],
)
def test_short_reasoning_penalty(completion: str, min_words: int, penalty: float) -> None:
    assert one(short_reasoning_penalty, completion, min_words=min_words) == pytest.approx(penalty)


@pytest.mark.parametrize(
    ("completion", "reward"),
    [
        (GOOD, 2.0),
        ("<reasoning>x</reasoning> 18", 1.0),
        ("<reasoning>x", 0.5),
        ("<answer>1</answer><answer>2</answer>", 0.0),  # present twice: no credit
        ("<reasoning>x</reasoning><answer>1</answer><answer>", 1.5),
        ("plain", 0.0),
    ],
)
def test_partial_format_reward(completion: str, reward: float) -> None:
    assert one(partial_format_reward, completion) == reward


# --- robustness ------------------------------------------------------------------------

RANGES = {
    "format": lambda w: {0.0, w},
    "correctness": lambda w: {0.0, w},
    "broken_tags": lambda w: {0.0, w},
    "lucky_guess": lambda w: {0.0, w},
    "step_correctness": lambda w: {w * k / 4 for k in range(-4, 5)},  # max_steps = 4
}
FRAGMENTS = [
    "<reasoning>",
    "</reasoning>",
    "<answer>",
    "</answer>",
    "<answer",
    "reasoning>",
    "</",
    "<",
    ">",
    "18",
    "-18",
    "1,800",
    "$",
    "3/4",
    " ",
    "\n",
    "word",
    "####",
    "#### 18",
    "/0",
    "\u2212",
]
tagged = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=5)), max_size=20).map(
    "".join
)
completion_items = st.one_of(
    st.text(max_size=60), tagged, st.none(), st.integers(), st.binary(max_size=8)
)
gold_items = st.one_of(st.none(), st.text(max_size=10), tagged, st.integers(), st.floats())


@settings(max_examples=150, deadline=None)
@given(
    st.lists(completion_items, max_size=6),
    st.one_of(st.none(), st.text(max_size=10), st.lists(gold_items, max_size=8)),
    st.sampled_from(sorted(REWARD_FUNCTIONS)),
)
def test_rewards_never_raise_and_stay_in_range(completions, answer, name) -> None:
    fn = REWARD_FUNCTIONS[name]
    values = fn(["p"] * len(completions), completions, answer, extra_column="ignored")
    assert len(values) == len(completions)
    assert all(isinstance(v, float) for v in values)
    w = inspect.signature(fn).parameters["weight"].default
    for v in values:
        if name in RANGES:
            assert v in RANGES[name](w)
        elif name == "short_reasoning":
            assert w <= v <= 0.0
        elif name == "no_answer":
            assert v in (w, 0.0)
        else:  # partial_format: multiples of w / 4
            assert 0.0 <= v <= w and (v / (w / 4)).is_integer()


@pytest.mark.parametrize("name", sorted(REWARD_FUNCTIONS))
@pytest.mark.parametrize("completions", [None, 42, object(), "<answer>18</answer>", iter(())])
def test_rewards_tolerate_odd_containers(name: str, completions: object) -> None:
    values = REWARD_FUNCTIONS[name](None, completions, None)
    expected_len = 1 if isinstance(completions, str) else 0
    assert len(values) == expected_len


def test_mismatched_lengths_pad_golds() -> None:
    values = correctness_reward(["p"], ["<answer>1</answer>", "<answer>2</answer>"], ["1"])
    assert values == [25.0, 0.0]
    assert correctness_reward([], ["<answer>1</answer>"], ["1", "2", "3"]) == [25.0]


# --- registry --------------------------------------------------------------------------


def test_registry_is_immutable_and_complete() -> None:
    assert set(REWARD_FUNCTIONS) == {
        "format",
        "correctness",
        "broken_tags",
        "short_reasoning",
        "partial_format",
        "no_answer",
        "step_correctness",
        "lucky_guess",
    }
    assert dict(DEFAULT_WEIGHTS) == {
        "format": 2.0,
        "correctness": 25.0,
        "broken_tags": -15.0,
        "short_reasoning": -5.0,
    }
    with pytest.raises(TypeError):
        REWARD_FUNCTIONS["x"] = format_reward  # type: ignore[index]
    with pytest.raises(TypeError):
        DEFAULT_WEIGHTS["format"] = 1.0  # type: ignore[index]


def test_make_reward_fns_binds_weights_and_names() -> None:
    fns = make_reward_fns(
        {"format": 1.0, "correctness": 10.0, "short_reasoning": -2.0, "partial_format": 0.0},
        min_words=4,
    )
    assert [f.__name__ for f in fns] == ["format", "correctness", "short_reasoning"]
    completions = [GOOD, "<answer>1</answer>"]
    # Tunix calls fn(prompts=..., completions=..., **dataset_columns)
    results = [
        f(prompts=["p", "p"], completions=completions, answer=["18", "18"], question="q")
        for f in fns
    ]
    assert results == [[1.0, 0.0], [10.0, 0.0], [0.0, -2.0 * 3 / 4]]
    for f in fns:
        assert list(inspect.signature(f).parameters) == [
            "prompts",
            "completions",
            "answer",
            "kwargs",
        ]


def test_make_reward_fns_errors() -> None:
    with pytest.raises(ValueError, match=r"name\(s\) 'formatt'.*valid names: format, correct"):
        make_reward_fns({"formatt": 1.0})
    with pytest.raises(ValueError, match="finite"):
        make_reward_fns({"format": float("nan")})
    with pytest.raises(ValueError, match="number"):
        make_reward_fns({"format": "2"})  # type: ignore[dict-item]


def test_score_breakdown() -> None:
    rows = score(
        [GOOD, "<answer>1</answer><reasoning>x</reasoning>"],
        ["#### 18", "18"],
        DEFAULT_WEIGHTS,
        min_words=5,
    )
    # GOOD: exact format, correct, not broken, 17 reasoning words >= 5
    assert rows[0] == {
        "format": 2.0,
        "correctness": 25.0,
        "broken_tags": 0.0,
        "short_reasoning": 0.0,
        "total": 27.0,
    }
    # answer before reasoning: wrong, broken, reasoning of 1 word -> -5 * (1 - 1/5) = -4
    assert rows[1] == pytest.approx(
        {
            "format": 0.0,
            "correctness": 0.0,
            "broken_tags": -15.0,
            "short_reasoning": -4.0,
            "total": -19.0,
        }
    )


def test_docstring_examples_run() -> None:
    import doctest

    import bigthoughts.rewards as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("completion, penalty", [
    ("<reasoning>2 + 2 = 4</reasoning>\n<answer>4</answer>", 0.0),
    ("<answer>$1,800.00</answer>", 0.0),
    ("The answer is 4.", -5.0),  # a number, but not in an answer tag
    ("<reasoning>2 + 2 = 4 and then", -5.0),  # cut off by the token cap
    ("<answer>four</answer>", -5.0),  # no number to read
    ("", -5.0),
])
def test_no_answer_penalty(completion: str, penalty: float) -> None:
    assert one(no_answer_penalty, completion) == penalty


def test_no_answer_makes_dropping_tags_worse_than_exact_format() -> None:
    fns = make_reward_fns({"format": 2.0, "broken_tags": -5.0, "no_answer": -5.0})
    def total(text: str) -> float:
        return sum(fn(["q"], [text], ["4"])[0] for fn in fns)
    exact = total("<reasoning>2 + 2 = 4</reasoning>\n<answer>4</answer>")
    untagged = total("2 + 2 = 4, so 4")
    truncated = total("<reasoning>2 + 2 = 4 and")
    assert exact > untagged > truncated


# --- process rewards -------------------------------------------------------------------
QUESTION = ("Question: Janet's ducks lay 16 eggs per day. She eats 3 for breakfast and bakes "
            "with 4. She sells the rest for $2 each. How much does she make?\nAnswer:")
CLEAN = ("<reasoning>She has 16 - 3 = 13 eggs after breakfast, then 13 - 4 = 9 eggs. "
         "She makes 9 * 2 = $18.</reasoning>\n<answer>18</answer>")
ONE_WRONG = CLEAN.replace("13 - 4 = 9 eggs", "13 - 4 = 8 eggs")  # the final answer is kept
TWO_WRONG = ONE_WRONG.replace("9 * 2 = $18", "9 * 2 = $19")


def steps_score(completion: str, prompt: str = QUESTION, **kw) -> float:
    (value,) = step_correctness_reward([prompt], [completion], ["18"], **kw)
    return value


@pytest.mark.parametrize(("completion", "value"), [
    (CLEAN, 5.0 * 3 / 4),  # three paying steps, none wrong
    (ONE_WRONG, 5.0 * (2 - 1) / 4),  # 16 - 3 and 9 * 2 pay, 13 - 4 = 8 is wrong
    (TWO_WRONG, 5.0 * (1 - 2) / 4),
    ("<reasoning>16 - 3 = 13</reasoning><answer>13</answer>", 5.0 / 4),
    ("<reasoning>no arithmetic here</reasoning><answer>18</answer>", 0.0),
    ("", 0.0),
    # outside <reasoning> nothing counts; without tags the whole text does
    ("<reasoning>so</reasoning><answer>16 - 3 = 13</answer>", 0.0),
    ("16 - 3 = 13 and 13 - 4 = 9", 5.0 * 2 / 4),
    # GSM8K annotations count once (the inline "=" before them is not a second step)
    ("<reasoning>16 - 3 - 4 = <<16-3-4=9>>9 and 9 * 2 = <<9*2=18>>18</reasoning>", 2.5),
])
def test_step_correctness_values(completion: str, value: float) -> None:
    assert steps_score(completion) == pytest.approx(value)


def test_step_correctness_prefers_all_right_steps() -> None:
    assert steps_score(CLEAN) > steps_score(ONE_WRONG) > steps_score(TWO_WRONG)


@pytest.mark.parametrize("padding", [
    " 1 + 1 = 2." * 200,  # trivial: no operand from the question
    " 16 - 3 = 13." * 200,  # a paying step repeated pays once
    " 16 * 1 = 16. 9 + 0 = 9.",  # the result is an operand: no new information
    "".join(f" 16 + {n} = {16 + n}." for n in range(1, 40)),  # grounded and new: capped
])
def test_padding_does_not_pay_beyond_the_cap(padding: str) -> None:
    padded = CLEAN.replace("</reasoning>", padding + "</reasoning>")
    assert steps_score(padded) <= 5.0
    assert steps_score(padded, max_steps=3) == 5.0 * 3 / 3  # the cap, and no more
    if "16 + 1 " not in padding:
        assert steps_score(padded) == steps_score(CLEAN)  # no credit at all


def test_step_correctness_cap_and_weight() -> None:
    assert steps_score(CLEAN, max_steps=2) == 5.0  # capped at weight
    assert steps_score(CLEAN, weight=8.0) == 8.0 * 3 / 4
    assert steps_score(CLEAN, max_steps=0) == 0.0  # invalid cap: no signal, no raise
    wrong_many = "<reasoning>" + " ".join(f"{n} + 1 = {n}." for n in range(2, 30))
    assert steps_score(wrong_many) == -5.0  # the penalty is capped too


@pytest.mark.parametrize(("completion", "gold", "value"), [
    (CLEAN, "18", 0.0),  # right answer, clean steps
    (ONE_WRONG, "18", -10.0),  # right answer through a wrong step
    (ONE_WRONG, "19", 0.0),  # wrong answer: correctness already gives nothing
    ("<reasoning>no steps</reasoning><answer>18</answer>", "18", 0.0),
    ("13 - 4 = 8, so <answer>18</answer>", "#### 18", -10.0),  # no reasoning tag
    ("<reasoning>13 - 4 = 9</reasoning><answer>18</answer> 13 - 4 = 8", "18", 0.0),
    (ONE_WRONG.replace("<answer>18</answer>", "the answer is 18"), "18", 0.0),  # strict
])
def test_lucky_guess_values(completion: str, gold: str, value: float) -> None:
    assert one(lucky_guess_penalty, completion, gold) == value


def test_lucky_guess_ranks_clean_above_lucky_above_wrong() -> None:
    fns = make_reward_fns({**DEFAULT_WEIGHTS, "step_correctness": 5.0, "lucky_guess": -10.0},
                          min_words=5)
    def total(text: str) -> float:
        return sum(fn([QUESTION], [text], ["18"])[0] for fn in fns)
    wrong_answer = CLEAN.replace("$18", "$20").replace("<answer>18", "<answer>20")
    assert total(CLEAN) > total(ONE_WRONG) > total(wrong_answer)


PROMPTS = st.lists(st.sampled_from([QUESTION, "", "2 3 16", "p"]), max_size=6)
STEPPY = st.lists(st.sampled_from(FRAGMENTS + [" = ", "16 - 3", "13", " * 2", "<<9*2=18>>",
                                               "9**9**9**9", "(", ")", "1 + 1 = 2"]),
                  max_size=25).map("".join)


@settings(max_examples=200, deadline=None)
@given(PROMPTS, st.lists(st.one_of(STEPPY, st.text(max_size=40), st.none()), max_size=6),
       st.one_of(st.none(), st.lists(gold_items, max_size=6)),
       st.sampled_from(["step_correctness", "lucky_guess"]))
def test_process_rewards_fuzz(prompts, completions, answer, name) -> None:
    fn = REWARD_FUNCTIONS[name]
    values = fn(prompts, completions, answer)
    w = inspect.signature(fn).parameters["weight"].default
    assert len(values) == len(completions)
    assert all(isinstance(v, float) and v in RANGES[name](w) for v in values)
