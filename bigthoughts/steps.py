"""The step checker: a finder for the computations a reasoning trace claims, checked
by the safe exact evaluator of :mod:`bigthoughts.arithmetic`.

It serves process rewards (:mod:`bigthoughts.rewards`) and the evaluation's
per-trace step counts; the calculator inside generation calls
:func:`bigthoughts.arithmetic.calculate` (re-exported here) on the text between
``<<`` and ``=``.

The step finder
---------------
:func:`find_steps` reports two kinds of claimed computation:

* GSM8K annotations ``<<48/2=24>>`` (expression and result inside the brackets);
* inline equations ``48 / 2 = 24``, ``$1,200 + $300 = $1,500``, ``3 × 4 = 12``, and
  chains ``2 + 3 = 5 * 2 = 10``: every ``=`` is one step whose expression is the
  arithmetic written just before it (back to the previous ``=``, on the same line)
  and whose claimed result is the number just after it (``3/6 = 1/2`` and
  ``3 / 2 = 1 1/2`` claim a fraction when no chain follows). In a chain each link is
  checked as written, so ``5 * 2 = 10`` is checked from the claimed 5 (a wrong first
  link does not make the second one wrong too); a link is also right when the whole
  next segment equals it, as in ``42 / 3 + 16 = 14 + 16 = 30``.

The expression is the longest arithmetic suffix of the text before the ``=`` that
evaluates, starting at its first number or after a separator (``He had 5. 3 + 4 =
7`` reads ``3 + 4``), never inside a term (``9(8)-5`` is not read as ``(8)-5``).

Skipped, so they do not count as steps: an ``=`` whose left side has no arithmetic
operator (``x = 5``, ``total = 7``, ``5 = 5``), whose right side does not start with
a number (``= <<...>>``, ``= Christmas``), ``==``, ``<=``, ``>=`` and ``!=``; the
text before an ``=`` is cut at letters and line ends, so ``3-4 days`` or a date
written in words never enters an expression; a left side that continues words
(``60 students x 2/3 = 40``, ``M + 4 = 8``) is skipped, its operands unreadable; a
claim glued to letters (``= 5A/5``) is algebra, not a number. A left side that looks
like arithmetic but that the evaluator refuses (``2x + 3 = 11``, ``9**9**9**9 = 1``)
is reported with ``value=None`` and ``correct=None`` (unchecked). At most
:data:`MAX_STEPS` steps are read from one trace.

When a claim is right
---------------------
A claimed result is right when it equals the computed value exactly, or within a
relative 1e-6, or, when it is written with d >= 1 decimals, when it is the value
rounded to d decimals (``|claim - value| <= 0.5 * 10**-d``: ``10/3 = 3.33`` and
``2/3 = 0.67`` are right, ``2/3 = 0.66`` and ``7/2 = 3`` are wrong). A claim written
with ``%`` is right if either reading fits: ``20 / 100 = 20%`` and ``0.2 * 100 = 20%``.

Example::

    >>> calculate("12*7"), calculate("10/3"), calculate("9**9**9**9") is None
    ('84', '3.333333', True)
    >>> check_steps("She sells 16 - 3 - 4 = 9 eggs and makes 9 * 2 = $19.")
    StepReport(checked=2, right=1, wrong=1)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Literal

from bigthoughts.arithmetic import (  # noqa: F401  (re-exported: one import for callers)
    ANNOTATION,
    CALC_DECIMALS,
    MAX_BITS,
    MAX_CHARS,
    MAX_DEPTH,
    MAX_DIGITS,
    MAX_EXPONENT,
    Refused,
    calculate,
    evaluate_expression,
    tokenize,
)

__all__ = [
    "CALC_DECIMALS", "MAX_BITS", "MAX_CHARS", "MAX_DEPTH", "MAX_DIGITS", "MAX_EXPONENT",
    "MAX_STEPS", "Step", "StepReport", "calculate", "check_steps", "claim_is_right",
    "evaluate_expression", "find_steps",
]

MAX_STEPS = 1000  # most steps find_steps reads from one trace


# --- claims ------------------------------------------------------------------------
_CLAIM_RE = re.compile(
    r"[ \t]*[$\u20ac\u00a3]?[ \t]?(?P<sign>[-\u2212])?[$\u20ac\u00a3]?"
    r"(?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+)?(?:\.(?P<frac>\d+))?(?P<pct>[ \t]?%)?"
    r"(?![A-Za-z\d]|[.,]\d)"  # "5A/5" or "1.2Y" is algebra, not a claimed number
)
_FRACTION_CLAIM_RE = re.compile(
    r"[ \t]*(?:(?P<whole>\d{1,9})[ \t]+)?(?P<num>\d{1,9})[ \t]?/[ \t]?(?P<den>\d{1,9})"
    r"(?![\d,/A-Za-z]|\.\d)[ \t]*")


@dataclass(frozen=True)
class _Claim:
    value: Fraction  # the number as written (20 for "20%")
    decimals: int
    percent: bool
    start: int
    end: int


def _read_claim(text: str, pos: int) -> _Claim | None:
    """The number written at ``text[pos:]`` (after optional spaces and currency)."""
    match = _CLAIM_RE.match(text, pos)
    if match is None or (match["int"] is None and match["frac"] is None):
        return None
    whole, frac = (match["int"] or "0").replace(",", ""), match["frac"] or ""
    if len(whole) + len(frac) > MAX_DIGITS:
        return None
    value = Fraction(int(whole + frac), 10 ** len(frac))
    start = pos + len(match.group()) - len(match.group().lstrip(" \t"))
    return _Claim(-value if match["sign"] else value, len(frac), bool(match["pct"]), start,
                  match.end())


def _close(written: Fraction, decimals: int, target: Fraction) -> bool:
    diff = abs(written - target)
    if diff == 0 or diff <= Fraction(1, 10**6) * abs(target):
        return True
    return decimals >= 1 and diff <= Fraction(1, 2 * 10**decimals)


def claim_is_right(value: Fraction, claimed: Fraction, *, decimals: int = 0,
                   percent: bool = False) -> bool:
    """Whether ``claimed`` (written with ``decimals`` decimals, and ``%`` if
    ``percent``) is a right result for the exact ``value``; the rule is in the module
    docstring.

    >>> claim_is_right(Fraction(10, 3), Fraction(333, 100), decimals=2)
    True
    >>> claim_is_right(Fraction(7, 2), Fraction(3))
    False
    """
    targets = (value, value * 100) if percent else (value,)
    return any(_close(claimed, decimals, t) for t in targets)


# --- steps -------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One computation a trace claims.

    ``expression`` is the arithmetic as written, ``claimed`` the result as written,
    ``value`` the evaluator's exact value (None when it refused), ``correct`` whether
    the claim is right (None when unchecked), ``span`` the (start, end) characters of
    the step in the trace, ``operands`` the numbers written in the expression,
    ``claimed_value`` the number the claim writes (20 for ``20%``) and ``kind`` where
    it came from (a ``<<...>>`` annotation or an inline equation).
    """

    expression: str
    claimed: str
    value: Fraction | None
    correct: bool | None
    span: tuple[int, int]
    operands: tuple[Fraction, ...] = ()
    claimed_value: Fraction | None = None
    kind: Literal["annotation", "inline"] = "inline"


@dataclass(frozen=True)
class StepReport:
    """Counts over a trace's steps: ``checked`` = ``right`` + ``wrong`` (steps the
    evaluator could read); ``steps`` holds them all, unchecked ones included."""

    checked: int
    right: int
    wrong: int
    steps: tuple[Step, ...] = field(default=(), repr=False, compare=False)


_ANNOTATION_RE = re.compile(ANNOTATION)
_HAS_OPERATOR_RE = re.compile(r"[\d)%.][ \t]*(?:[-+*/^xX\u2212\u00d7\u00b7\u22c5\u00f7])")
_RUN_CHARS = frozenset("0123456789.,$\u20ac\u00a3%+-\u2212*/\u00d7\u00b7\u22c5\u00f7^()xX \t")
_STARTS = frozenset("0123456789.($\u20ac\u00a3-\u2212")
_SEPARATORS = frozenset(".,(")
_CONTINUES_WORDS_RE = re.compile(
    r"[ \t]*(?:[+*/^)\u00d7\u00b7\u22c5\u00f7]|[-\u2212][ \t])|[ \t]+[xX]")
_MAX_CANDIDATES = 4


def _operands(expression: str) -> tuple[Fraction, ...]:
    try:
        return tuple(t for t in tokenize(expression) if isinstance(t, Fraction))
    except Refused:
        return ()


def _make_step(expression: str, claim: _Claim, text: str, span: tuple[int, int],
               kind: Literal["annotation", "inline"]) -> Step:
    value = evaluate_expression(expression)
    correct = None if value is None else claim_is_right(
        value, claim.value, decimals=claim.decimals, percent=claim.percent)
    return Step(expression=expression.strip(), claimed=text[claim.start:claim.end].strip(),
                value=value, correct=correct, span=span, operands=_operands(expression),
                claimed_value=claim.value, kind=kind)


def _annotation_steps(trace: str) -> tuple[list[Step], set[int]]:
    steps, inside = [], set()
    for match in _ANNOTATION_RE.finditer(trace):
        inside.add(match.start(2) - 1)
        expression, result = match.group(1), match.group(2)
        claim = _read_claim(result, 0)
        if claim is None or result[claim.end:].strip() or not _HAS_OPERATOR_RE.search(expression):
            continue
        offset = match.start(2)
        shifted = _Claim(claim.value, claim.decimals, claim.percent, offset + claim.start,
                         offset + claim.end)
        steps.append(_make_step(expression, shifted, trace, match.span(), "annotation"))
    return steps, inside


def _left_run(trace: str, eq: int) -> tuple[int, str]:
    """Start and text of the arithmetic-looking run that ends at ``trace[eq]``."""
    start = eq
    while start > 0 and eq - start <= MAX_CHARS and trace[start - 1] in _RUN_CHARS:
        start -= 1
    return start, trace[start:eq]


def _candidates(run: str) -> list[int]:
    """Where an expression may start in ``run``: its first token, or a token after a
    separator such as ``.``, ``,`` or an unmatched ``(`` (so ``9**9`` never starts
    inside ``9**9**9**9``, nor ``(8)`` inside ``9(8)``)."""
    out, previous = [], ""
    for i, ch in enumerate(run):
        if ch in _STARTS and (not out or previous in _SEPARATORS):
            glued = ch.isdigit() and i > 0 and run[i - 1] in "0123456789.,"
            if not glued:
                out.append(i)
                if len(out) == _MAX_CANDIDATES:
                    break
        if ch not in " \t":
            previous = ch
    return out


def _expression_at(run: str) -> str | None:
    """The longest suffix of ``run`` that evaluates, else the first arithmetic one;
    None when ``run`` continues words (``60 students x 2/3``, ``M + 4``): the words
    are operands we cannot read, so the step is skipped."""
    if _CONTINUES_WORDS_RE.match(run):
        return None
    found = [run[i:] for i in _candidates(run) if _HAS_OPERATOR_RE.search(run[i:])]
    for expression in found:
        if evaluate_expression(expression) is not None:
            return expression
    return found[0] if found else None


def _claim_after(trace: str, eq: int) -> _Claim | None:
    """The claim right after the ``=`` at ``eq``; a fraction ``p/q`` or mixed number
    ``1 1/2`` only when no chain follows (in ``= 5 / 5 = 1`` the claim is 5)."""
    fraction = _FRACTION_CLAIM_RE.match(trace, eq + 1)
    if fraction is not None and trace[fraction.end():fraction.end() + 1] not in ("=", "*"):
        whole, den = int(fraction["whole"] or 0), int(fraction["den"])
        if den:
            start = fraction.start() + len(fraction.group()) - len(fraction.group().lstrip())
            return _Claim(whole + Fraction(int(fraction["num"]), den), 0, False, start,
                          fraction.end())
    return _read_claim(trace, eq + 1)


def _equality_reading(step: Step, trace: str, eq: int) -> Step:
    """A wrong link of a chain read as an equality: ``42 / 3 + 16 = 14 + 16 = 30`` is
    right because the whole segment ``14 + 16`` equals the left side."""
    if step.correct is not False:
        return step
    end = eq + 1
    while end < len(trace) and end - eq <= MAX_CHARS and trace[end] in _RUN_CHARS:
        end += 1
    if trace[end:end + 1] != "=" or trace[end + 1:end + 2] == "=":
        return step
    segment = trace[eq + 1:end]
    value = evaluate_expression(segment) if _HAS_OPERATOR_RE.search(segment) else None
    if value is None or step.value is None or not claim_is_right(step.value, value):
        return step
    return replace(step, claimed=segment.strip(), claimed_value=value, correct=True,
                   span=(step.span[0], end))


def _inline_steps(trace: str, skip: set[int]) -> list[Step]:
    steps = []
    eq = trace.find("=")
    while eq >= 0 and len(steps) < MAX_STEPS:
        before, after = trace[eq - 1:eq], trace[eq + 1:eq + 2]
        if eq not in skip and before not in ("=", "<", ">", "!") and after != "=":
            start, run = _left_run(trace, eq)
            expression = _expression_at(run) if eq - start <= MAX_CHARS else None
            claim = _claim_after(trace, eq) if expression is not None else None
            if expression is not None and claim is not None:
                first = start + len(run) - len(expression)
                step = _make_step(expression, claim, trace, (first, claim.end), "inline")
                steps.append(_equality_reading(step, trace, eq))
        eq = trace.find("=", eq + 1)
    return steps


def find_steps(trace: str) -> list[Step]:
    """The computations ``trace`` claims, in order (rules in the module docstring).
    Never raises; a non-string has no steps.

    >>> [(s.expression, s.claimed, s.correct) for s in find_steps("2 + 3 = 5 * 2 = 11")]
    [('2 + 3', '5', True), ('5 * 2', '11', False)]
    """
    if not isinstance(trace, str):
        return []
    annotated, inside = _annotation_steps(trace)
    steps = sorted(annotated + _inline_steps(trace, inside), key=lambda s: s.span)
    return steps[:MAX_STEPS]


def check_steps(trace: str) -> StepReport:
    """Counts of the checked, right and wrong steps of ``trace``. Never raises.

    >>> check_steps("Half of 48 is <<48/2=24>>24, then 24 * 3 = 72 and 10/3 = 3.33.")
    StepReport(checked=3, right=3, wrong=0)
    """
    steps = find_steps(trace)
    right = sum(s.correct is True for s in steps)
    wrong = sum(s.correct is False for s in steps)
    return StepReport(checked=right + wrong, right=right, wrong=wrong, steps=tuple(steps))
