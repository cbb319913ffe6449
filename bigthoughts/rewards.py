"""Pure reward functions for GRPO, with Tunix's signature, and a name registry.

Every function has the signature Tunix's ``GRPOLearner`` calls,
``fn(prompts, completions, answer, **kwargs) -> list[float]``, returns one score
per completion and never raises: None entries, non-strings and lists of different
lengths are tolerated (missing golds count as unknown; a lone string is one
completion). ``answer`` holds each row's gold field, either raw GSM8K text
(``"... #### 18"``) or an already-normalised number (``"18"``).

The expected completion is::

    <reasoning>step-by-step work</reasoning>
    <answer>18</answer>

Default weights and why (``DEFAULT_WEIGHTS``): correctness (+25) dominates so that
no amount of formatting makes up for a wrong answer; exact format (+2) is a small
nudge that turns on early; broken tags (-15) cost more than the format bonus and
half the correctness bonus, so emitting tag soup never pays, yet a correct answer
with stray tags still beats a wrong tidy one; short reasoning (-5 at most) stops the
policy from collapsing to a bare number, which would defeat voting over reasoning
paths. ``partial_format`` (off by default) gives credit per tag for early training,
when exact format is too rare to produce a learning signal. ``no_answer`` (off by
default) charges completions with no readable ``<answer>``: see its docstring.

Process rewards (off by default; the reference design's future work), built on the
step checker :mod:`bigthoughts.steps`: ``step_correctness`` pays for verified
arithmetic steps and charges wrong ones, capped so padding does not pay;
``lucky_guess`` is the hard negative, a right answer reached through a wrong step.
Turn them on with a weight, e.g. ``{"step_correctness": 5.0, "lucky_guess": -10.0}``.

Example (weights bound for ``GRPOLearner(reward_fns=...)``)::

    fns = make_reward_fns(DEFAULT_WEIGHTS)
    [f.__name__ for f in fns]  # ['format', 'correctness', 'broken_tags', 'short_reasoning']
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Mapping
from fractions import Fraction
from types import MappingProxyType
from typing import Any

from bigthoughts.answers import (
    TAGS,
    answers_equal,
    extract_answer,
    normalize_number,
    parse_gold,
)
from bigthoughts.steps import Step, StepReport, check_steps

__all__ = [
    "DEFAULT_WEIGHTS",
    "REWARD_FUNCTIONS",
    "TAGS",
    "RewardFn",
    "broken_tags_penalty",
    "correctness_reward",
    "format_reward",
    "is_exact_format",
    "lucky_guess_penalty",
    "make_reward_fns",
    "no_answer_penalty",
    "partial_format_reward",
    "reasoning_steps",
    "score",
    "short_reasoning_penalty",
    "step_correctness_reward",
]

RewardFn = Callable[..., list[float]]

R_OPEN, R_CLOSE, A_OPEN, A_CLOSE = TAGS

_FORMAT_RE = re.compile(
    r"\s*<reasoning>(?P<reasoning>.*?)</reasoning>\s*<answer>(?P<answer>.*?)</answer>\s*",
    re.DOTALL,
)
_ANY_TAG_RE = re.compile("|".join(re.escape(t) for t in TAGS))


def _texts(completions: Any) -> list[str]:
    """Completions as strings: a lone string is one completion, non-strings become ''."""
    if completions is None:
        return []
    if isinstance(completions, str):
        return [completions]
    try:
        items = list(completions)
    except Exception:  # the contract is "never raise"; an odd container scores nothing
        return []
    texts = []
    for item in items:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, bytes):
            texts.append(item.decode("utf-8", errors="replace"))
        else:
            texts.append("")
    return texts


def _gold(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    text = str(value)
    if "####" in text:
        try:
            return parse_gold(text)
        except ValueError:
            return None
    return normalize_number(text)


def _golds(answer: Any, n: int) -> list[str | None]:
    """``n`` canonical golds: a lone value is broadcast, short lists padded with None."""
    if answer is None:
        return [None] * n
    if isinstance(answer, str | int | float):
        return [_gold(answer)] * n
    try:
        items = list(answer)
    except Exception:  # never raise: unknown golds score as unknown
        return [None] * n
    golds = [_gold(item) for item in items[:n]]
    return golds + [None] * (n - len(golds))


def is_exact_format(text: str) -> bool:
    """Whether ``text`` is exactly ``<reasoning>R</reasoning> <answer>A</answer>``.

    Only whitespace may surround and separate the two blocks, each of the four tags
    appears once, and neither R nor A is blank (an empty answer is not a format we
    want to reward).
    """
    if not isinstance(text, str):
        return False
    match = _FORMAT_RE.fullmatch(text)
    return (
        match is not None
        and all(text.count(tag) == 1 for tag in TAGS)
        and bool(match["reasoning"].strip())
        and bool(match["answer"].strip())
    )


def format_reward(
    prompts: Any, completions: Any, answer: Any = None, *, weight: float = 2.0, **kwargs: Any
) -> list[float]:
    """``weight`` for an exactly formatted completion (:func:`is_exact_format`), else 0.

    Range: {0, weight}.

    >>> format_reward(["q", "q"], ["<reasoning>2 + 2 = 4</reasoning>\\n<answer>4</answer>",
    ...                            "<answer>4</answer> because 2 + 2 = 4"], ["4", "4"])
    [2.0, 0.0]
    """
    return [float(weight) if is_exact_format(t) else 0.0 for t in _texts(completions)]


def correctness_reward(
    prompts: Any, completions: Any, answer: Any = None, *, weight: float = 25.0, **kwargs: Any
) -> list[float]:
    """``weight`` when the completion's answer tag holds the gold number, else 0.

    Uses *strict* extraction: the number must be inside the single ``<answer>`` tag. A
    right number elsewhere earns nothing, which pushes the policy to put its result
    where evaluation and voting read it. Range: {0, weight}.

    >>> correctness_reward(["q"] * 3, ["<answer>1,800</answer>", "so 1800", "<answer>7</answer>"],
    ...                    ["#### 1800", "1800", "1800"])
    [25.0, 0.0, 0.0]
    """
    texts = _texts(completions)
    golds = _golds(answer, len(texts))
    return [
        float(weight) if answers_equal(extract_answer(t, strict=True), g) else 0.0
        for t, g in zip(texts, golds, strict=True)
    ]


def _tags_broken(text: str) -> bool:
    counts = {tag: text.count(tag) for tag in TAGS}
    if not any(counts.values()):
        return False
    if any(count > 1 for count in counts.values()):
        return True
    for open_tag, close_tag in ((R_OPEN, R_CLOSE), (A_OPEN, A_CLOSE)):
        if counts[open_tag] != counts[close_tag]:
            return True
        if counts[open_tag] and text.index(close_tag) < text.index(open_tag):
            return True
    return bool(counts[R_OPEN] and counts[A_OPEN] and text.index(A_OPEN) < text.index(R_CLOSE))


def broken_tags_penalty(
    prompts: Any, completions: Any, answer: Any = None, *, weight: float = -15.0, **kwargs: Any
) -> list[float]:
    """``weight`` (a penalty) when the tags are broken, else 0.

    Broken: any of the four tags appears twice or more, an opening tag has no close
    (or a close no opening), a close comes before its opening, or ``<answer>`` opens
    before ``</reasoning>`` (answer first, or answer inside reasoning). A completion
    with no tags at all is not broken; it simply earns no format reward. A lone
    ``<answer>..</answer>`` or ``<reasoning>..</reasoning>`` pair is not broken either.
    Range: {weight, 0}.

    >>> broken_tags_penalty(["q"] * 3, ["<answer>4</answer><reasoning>x</reasoning>",
    ...                                 "<reasoning>x", "just 4"], None)
    [-15.0, -15.0, 0.0]
    """
    return [float(weight) if _tags_broken(t) else 0.0 for t in _texts(completions)]


def _reasoning_text(text: str) -> str:
    """The reasoning block (up to its close, or to ``<answer>`` if it never closes);
    the whole text when there is no ``<reasoning>`` tag."""
    start = text.find(R_OPEN)
    if start >= 0:
        start += len(R_OPEN)
        end = text.find(R_CLOSE, start)
        if end < 0:
            end = text.find(A_OPEN, start)
        text = text[start:] if end < 0 else text[start:end]
    return text


def _reasoning_words(text: str) -> int:
    return len(_ANY_TAG_RE.sub(" ", _reasoning_text(text)).split())


def short_reasoning_penalty(
    prompts: Any,
    completions: Any,
    answer: Any = None,
    *,
    weight: float = -5.0,
    min_words: int = 20,
    **kwargs: Any,
) -> list[float]:
    """``weight * (1 - words / min_words)`` when the reasoning has fewer than ``min_words``.

    Words are whitespace-separated tokens of the reasoning block (up to its close, or
    to ``<answer>`` if it never closes); without a ``<reasoning>`` tag, of the whole
    completion minus tags. The penalty grows linearly with the shortfall: no words
    gives the full ``weight``, ``min_words`` or more gives 0. Range: [weight, 0].

    >>> short_reasoning_penalty(["q"] * 3, ["<reasoning>one two three four</reasoning>",
    ...                                     "", " ".join(["w"] * 30)], None, min_words=8)
    [-2.5, -5.0, 0.0]
    """
    texts = _texts(completions)
    if not isinstance(min_words, int | float) or not min_words > 0:
        return [0.0] * len(texts)
    shortfalls = (max(0.0, 1.0 - _reasoning_words(t) / min_words) for t in texts)
    return [float(weight) * s if s > 0 else 0.0 for s in shortfalls]


def partial_format_reward(
    prompts: Any, completions: Any, answer: Any = None, *, weight: float = 2.0, **kwargs: Any
) -> list[float]:
    """``weight / 4`` for each of the four tags that appears exactly once.

    A dense signal for early training, when exact format is too rare to learn from.
    Range: [0, weight] in steps of weight/4.

    >>> partial_format_reward(["q"] * 2, ["<reasoning>x</reasoning> 4", "<answer>4</answer>" * 2])
    [1.0, 0.0]
    """
    return [float(weight) / 4 * sum(t.count(tag) == 1 for tag in TAGS) for t in _texts(completions)]


def no_answer_penalty(
    prompts: Any, completions: Any, answer: Any = None, *, weight: float = -5.0, **kwargs: Any
) -> list[float]:
    """``weight`` (a penalty) when no number can be read from a well-formed
    ``<answer>…</answer>`` (the strict extractor returns nothing), else 0.

    Why it exists: ``broken_tags`` alone makes "no tags at all" (0) score better than
    an honest attempt cut off by the token cap (``<reasoning>`` opened, never
    closed: broken). A base model that rarely closes its tags then learns to drop
    them. This term charges a missing answer whatever the reason. Range: {weight, 0}.

    >>> no_answer_penalty(["q"] * 3, ["<answer>4</answer>", "just 4", "<reasoning>x"], None)
    [0.0, -5.0, -5.0]
    """
    return [0.0 if extract_answer(t, strict=True) is not None else float(weight)
            for t in _texts(completions)]


# --- process rewards ---------------------------------------------------------------
_PROMPT_NUMBER_RE = re.compile(r"(\d{1,3}(?:,\d{3})+(?!\d)|\d{1,40})(?:\.(\d{1,40}))?|\.(\d{1,40})")


def reasoning_steps(text: str) -> StepReport:
    """The checked steps of a completion's reasoning block (the whole text when it has
    no ``<reasoning>`` tag): what the process rewards and the evaluation count.

    >>> reasoning_steps("<reasoning>6 * 7 = 42, 42 - 2 = 41</reasoning><answer>41</answer>")
    StepReport(checked=2, right=1, wrong=1)
    """
    return check_steps(_reasoning_text(text) if isinstance(text, str) else "")


def _numbers_in(text: str) -> set[Fraction]:
    found = set()
    for m in _PROMPT_NUMBER_RE.finditer(text):
        whole, frac = (m[1] or "0").replace(",", ""), m[2] or m[3] or ""
        found.add(Fraction(int(whole + frac), 10 ** len(frac)))
    return found


def _pays(step: Step, known: set[Fraction], seen: set[str]) -> bool:
    """A right step earns credit once, when it uses a number already in play (in the
    prompt or claimed by an earlier step) and its result is not one of its operands."""
    key = "".join(step.expression.split())
    if key in seen:
        return False
    seen.add(key)
    return (any(o in known for o in step.operands)
            and step.claimed_value not in step.operands)


def _step_counts(prompt: str, text: str) -> tuple[int, int]:
    """(paying right steps, wrong steps) of ``text``'s reasoning, given its prompt."""
    known, seen = _numbers_in(prompt), set()
    paying = 0
    report = reasoning_steps(text)
    for step in report.steps:
        if step.correct is True and _pays(step, known, seen):
            paying += 1
        if step.claimed_value is not None:
            known.update((step.claimed_value, step.claimed_value / 100))
    return paying, report.wrong


def _prompt_texts(prompts: Any, n: int) -> list[str]:
    texts = _texts(prompts)[:n]
    return texts + [""] * (n - len(texts))


def step_correctness_reward(
    prompts: Any,
    completions: Any,
    answer: Any = None,
    *,
    weight: float = 5.0,
    max_steps: int = 4,
    **kwargs: Any,
) -> list[float]:
    """``weight * (min(R, max_steps) - min(W, max_steps)) / max_steps``: process
    supervision from the step checker (:mod:`bigthoughts.steps`).

    W counts the wrong steps of the reasoning block (the whole completion when it has
    no ``<reasoning>`` tag). R counts the right steps that *pay*: a step pays once (a
    repeated expression pays nothing), only when one of its operands is a number
    already in play (in the prompt, or claimed by an earlier step), and only when its
    result is not one of its own operands (``48 * 1 = 48`` pays nothing).

    Why the cap: those rules stop cheap padding (``1 + 1 = 2`` a hundred times, or
    numbers from nowhere), but a model can still invent new, grounded, right steps
    that do not help. The cap bounds what any padding can earn to ``weight``; at the
    default of 4 (GSM8K solutions take 2 to 8 steps, most about 3) a trace that really
    solves the problem already reaches it, so extra steps past it earn nothing. A
    wrong step always costs ``weight / max_steps``, so the same trace with one step
    wrong scores lower. Range: [-weight, weight].

    >>> step_correctness_reward(["Ann has 6 bags of 7 apples and eats 2."] * 3, [
    ...     "<reasoning>6 * 7 = 42, 42 - 2 = 40</reasoning><answer>40</answer>",
    ...     "<reasoning>6 * 7 = 42, 42 - 2 = 41</reasoning><answer>41</answer>",
    ...     "<reasoning>" + "1 + 1 = 2. " * 50 + "</reasoning>"], None)
    [2.5, 0.0, 0.0]
    """
    texts = _texts(completions)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        return [0.0] * len(texts)
    scores = []
    for prompt, text in zip(_prompt_texts(prompts, len(texts)), texts, strict=True):
        paying, wrong = _step_counts(prompt, text)
        scores.append(float(weight) * (min(paying, max_steps) - min(wrong, max_steps))
                      / max_steps)
    return scores


def lucky_guess_penalty(
    prompts: Any, completions: Any, answer: Any = None, *, weight: float = -10.0, **kwargs: Any
) -> list[float]:
    """``weight`` (a penalty) when the answer tag holds the gold number but a step of
    the reasoning is wrong, else 0: the hard negative "right answer for the wrong
    reasons". The default -10 is less than the correctness bonus (25), so a right
    answer with a slip still beats a wrong one, yet clearly scores below a clean
    solution. Range: {weight, 0}.

    >>> lucky_guess_penalty(["q"] * 3, [
    ...     "<reasoning>6 * 7 = 41, so 40</reasoning><answer>40</answer>",
    ...     "<reasoning>6 * 7 = 42, 42 - 2 = 40</reasoning><answer>40</answer>",
    ...     "<reasoning>6 * 7 = 41</reasoning><answer>39</answer>"], "40")
    [-10.0, 0.0, 0.0]
    """
    texts = _texts(completions)
    golds = _golds(answer, len(texts))
    return [
        float(weight)
        if answers_equal(extract_answer(t, strict=True), g) and reasoning_steps(t).wrong
        else 0.0
        for t, g in zip(texts, golds, strict=True)
    ]


REWARD_FUNCTIONS: Mapping[str, RewardFn] = MappingProxyType(
    {
        "format": format_reward,
        "correctness": correctness_reward,
        "broken_tags": broken_tags_penalty,
        "short_reasoning": short_reasoning_penalty,
        "partial_format": partial_format_reward,
        "no_answer": no_answer_penalty,
        "step_correctness": step_correctness_reward,
        "lucky_guess": lucky_guess_penalty,
    }
)
DEFAULT_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {"format": 2.0, "correctness": 25.0, "broken_tags": -15.0, "short_reasoning": -5.0}
)


def check_weights(weights: Mapping[str, float]) -> None:
    """Raises ValueError for a reward name not in ``REWARD_FUNCTIONS`` (listing the valid
    ones) or a weight that is not a finite number."""
    unknown = [name for name in weights if name not in REWARD_FUNCTIONS]
    if unknown:
        raise ValueError(
            f"unknown reward name(s) {', '.join(map(repr, unknown))}; "
            f"valid names: {', '.join(REWARD_FUNCTIONS)}"
        )
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise ValueError(f"weights.{name} must be a number, got {weight!r}")
        if not math.isfinite(weight):
            raise ValueError(f"weights.{name} must be finite, got {weight!r}")


def _bind(name: str, weight: float, min_words: int) -> RewardFn:
    base = REWARD_FUNCTIONS[name]
    options: dict[str, Any] = {"weight": weight}
    if "min_words" in inspect.signature(base).parameters:
        options["min_words"] = min_words

    def reward(prompts: Any, completions: Any, answer: Any = None, **kwargs: Any) -> list[float]:
        return base(prompts, completions, answer, **options)

    # Tunix logs each reward as "rewards/{fn.__name__}".
    reward.__name__ = name
    reward.__qualname__ = f"make_reward_fns.<{name}>"
    reward.__doc__ = f"{base.__name__} with {options} bound.\n\n{base.__doc__}"
    return reward


def make_reward_fns(weights: Mapping[str, float], *, min_words: int = 20) -> list[RewardFn]:
    """Reward functions with their weights bound, ready for ``GRPOLearner(reward_fns=...)``.

    Each has Tunix's signature and ``__name__`` equal to its registry name. A weight
    of 0 disables that reward (no function is returned for it). Raises ValueError for
    unknown names (listing the valid ones) or non-finite weights.
    """
    check_weights(weights)
    return [_bind(name, float(w), min_words) for name, w in weights.items() if w != 0]


def score(
    completions: Any,
    answers: Any,
    weights: Mapping[str, float] = DEFAULT_WEIGHTS,
    *,
    min_words: int = 20,
) -> list[dict[str, float]]:
    """Per-completion breakdown ``{name: value, ..., "total": sum}`` for logging.

    >>> score(["<reasoning>4</reasoning><answer>4</answer>"], ["4"], {"correctness": 25.0})
    [{'correctness': 25.0, 'total': 25.0}]
    """
    check_weights(weights)
    texts = _texts(completions)
    prompts = [""] * len(texts)
    columns = {
        name: _bind(name, float(w), min_words)(prompts, texts, answers)
        for name, w in weights.items()
    }
    rows = []
    for i in range(len(texts)):
        row = {name: values[i] for name, values in columns.items()}
        row["total"] = sum(row.values())
        rows.append(row)
    return rows
