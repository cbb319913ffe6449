"""The one answer extractor and number normaliser, shared by rewards and evaluation.

Why one module: if the reward that trains the model and the metric that scores it
read answers differently, training optimises for something we do not measure. Every
place that turns model text (or a GSM8K ``#### N`` line) into an answer goes through
:func:`extract` / :func:`normalize_number` here.

Canonical numbers
-----------------
A number is held as an exact :class:`fractions.Fraction` and printed as:

* an integer when it is whole: ``"18.0"`` -> ``"18"``, ``"$1,800.00"`` -> ``"1800"``,
  ``"+3"`` -> ``"3"``, ``"-0"`` -> ``"0"``;
* the shortest decimal when the fraction terminates: ``"0.750"`` -> ``"0.75"``,
  ``"3/4"`` -> ``"0.75"``, ``".5"`` -> ``"0.5"``;
* a reduced ``p/q`` otherwise: ``"2/6"`` -> ``"1/3"``, ``"-4/6"`` -> ``"-2/3"``.

The reader accepts currency symbols (``$ € £``, before or after the sign), thousands
separators in groups of three (``1,800``), a percent sign (``50%`` reads as ``50``,
the number as written), the unicode minus ``−`` and trailing words (``18 dollars``).
A ``-`` glued to a preceding word or digit is an operator, not a sign, so ``16-3``
holds the numbers 16 and 3. Known limits: mixed numbers (``1 1/2``) read as two
numbers, scientific notation is not read, a fraction with a zero denominator is not
a number, and numbers longer than 300 digits are ignored.

Example::

    >>> extract_answer("<reasoning>9 * 2 = 18</reasoning><answer>$18.00</answer>")
    '18'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

__all__ = [
    "ANSWER_CLOSE",
    "ANSWER_OPEN",
    "REASONING_CLOSE",
    "REASONING_OPEN",
    "TAGS",
    "format_completion",
    "FAILURE_BUCKETS",
    "Extraction",
    "answers_equal",
    "extract",
    "extract_answer",
    "failure_bucket",
    "normalize_number",
    "parse_gold",
]

REASONING_OPEN, REASONING_CLOSE = "<reasoning>", "</reasoning>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TAGS = (REASONING_OPEN, REASONING_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
"""The completion format every prompt asks for, every reward checks and SFT teaches."""


def format_completion(reasoning: str, answer: str) -> str:
    """A completion in the format: reasoning, a newline, the answer.

    >>> format_completion("2 + 2 = 4", "4")
    '<reasoning>2 + 2 = 4</reasoning>\\n<answer>4</answer>'
    """
    return f"{REASONING_OPEN}{reasoning}{REASONING_CLOSE}\n{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"

FAILURE_BUCKETS = (
    "no_answer_tag",
    "multiple_answer_tags",
    "truncated",
    "malformed_answer_tag",
    "empty_answer",
    "non_numeric_answer",
)
"""Why strict extraction failed; see :func:`failure_bucket`."""

_MAX_DIGITS = 300
_SIGN = r"[-+\u2212]"
_INT = r"(?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)"
_NUMBER_RE = re.compile(
    rf"""
    (?:(?<![\w.)\]])(?P<sign>{_SIGN}))?        # sign, unless glued to a word: 5-3 is 5 and 3
    (?:[$€£]\s?(?P<sign2>{_SIGN})?)?           # currency, optionally followed by the sign
    (?:
        (?P<fnum>{_INT})\ ?/\ ?(?P<fden>{_INT})  # fraction 3/4
      | (?P<int>{_INT})(?:\.(?P<frac>[0-9]+))?   # integer or decimal 1,800.50
      | \.(?P<frac_only>[0-9]+)                  # bare decimal .5
    )
    """,
    re.VERBOSE,
)
# Tag-like markup (<answer>, </reasoning>, <h2>) whose names must not be read as numbers.
# It needs a letter after "<" so comparisons such as "x < 5" keep their numbers.
_TAG_RE = re.compile(r"</?[A-Za-z][\w-]*\s*/?>")


@dataclass(frozen=True)
class Extraction:
    """An extracted answer and the rule that produced it.

    ``mode`` is ``"strict"`` when the number came from the single ``<answer>`` tag,
    ``"lenient"`` when it is the last number elsewhere in the text, and ``"none"``
    (with ``value=None``) when there is no number at all.
    """

    value: str | None
    mode: Literal["strict", "lenient", "none"]


def _to_int(digits: str) -> int | None:
    digits = digits.replace(",", "")
    if len(digits) > _MAX_DIGITS:
        return None
    return int(digits)


def _match_value(m: re.Match[str]) -> Fraction | None:
    """The exact value of one regex match, or None if it is not a usable number."""
    negative = (m.group("sign") or m.group("sign2") or "+") in "-\u2212"
    if m.group("fnum") is not None:
        num, den = _to_int(m.group("fnum")), _to_int(m.group("fden"))
        if num is None or den is None or den == 0:
            return None
        value = Fraction(num, den)
    else:
        whole = m.group("int") or "0"
        frac = m.group("frac") or m.group("frac_only") or ""
        scaled = _to_int(whole + frac)
        if scaled is None or len(frac) > _MAX_DIGITS:
            return None
        value = Fraction(scaled, 10 ** len(frac))
    return -value if negative else value


def _values(text: str) -> list[Fraction]:
    """Exact values of every number in ``text``, in order of appearance."""
    found = (_match_value(m) for m in _NUMBER_RE.finditer(text))
    return [v for v in found if v is not None]


def _format(value: Fraction) -> str:
    """Canonical string for an exact value (see the module docstring)."""
    p, q = value.numerator, value.denominator
    if q == 1:
        return str(p)
    rest, twos, fives = q, 0, 0
    while rest % 2 == 0:
        rest, twos = rest // 2, twos + 1
    while rest % 5 == 0:
        rest, fives = rest // 5, fives + 1
    if rest != 1:
        return f"{p}/{q}"
    places = max(twos, fives)
    digits = str(abs(p) * 10**places // q).rjust(places + 1, "0")
    return ("-" if p < 0 else "") + digits[:-places] + "." + digits[-places:]


def normalize_number(text: str) -> str | None:
    """Canonical form of the first number in ``text``, or None if it holds none.

    Never raises (non-strings give None). Idempotent on its own output.

    >>> [normalize_number(s) for s in ["$1,800.00", "0.750", "2/6", "50%", "−3", "n/a"]]
    ['1800', '0.75', '1/3', '50', '-3', None]
    """
    if not isinstance(text, str):
        return None
    values = _values(text)
    return _format(values[0]) if values else None


def _strip_tags(text: str) -> str:
    return _TAG_RE.sub(" ", text)


def _answer_span(text: str) -> str | None:
    """Text inside the single well-formed ``<answer>...</answer>``, else None."""
    if text.count(ANSWER_OPEN) != 1 or text.count(ANSWER_CLOSE) != 1:
        return None
    start = text.index(ANSWER_OPEN) + len(ANSWER_OPEN)
    end = text.index(ANSWER_CLOSE)
    return text[start:end] if start <= end else None


def extract(completion: str) -> Extraction:
    """Extract the answer from a model completion, saying which rule matched.

    * strict: the completion holds exactly one ``<answer>`` and one ``</answer>``, in
      that order, and the text between them holds a number. When it holds several
      (``<answer>3 + 15 = 18</answer>``, or a hedge such as ``18 or 20``) the **last**
      one is taken: equations end with their result, and the last value is the one
      the model settled on.
    * lenient: otherwise, the last number in the text that comes before the final
      ``</answer>`` (the whole text when there is none). Text after the model closed
      its answer is commentary or the start of a new question, not the answer.
      Numbers inside tag names (``<h2>``) are ignored.
    * none: no number anywhere; ``value`` is None.

    Never raises; a non-string gives mode ``"none"``.

    >>> extract("<answer>3 + 15 = 18</answer>")
    Extraction(value='18', mode='strict')
    >>> extract("so the total is 42.")
    Extraction(value='42', mode='lenient')
    """
    if not isinstance(completion, str):
        return Extraction(None, "none")
    inside = _answer_span(completion)
    if inside is not None:
        values = _values(_strip_tags(inside))
        if values:
            return Extraction(_format(values[-1]), "strict")
    cut = completion.rfind(ANSWER_CLOSE)
    region = completion if cut < 0 else completion[:cut]
    values = _values(_strip_tags(region))
    if values:
        return Extraction(_format(values[-1]), "lenient")
    return Extraction(None, "none")


def extract_answer(completion: str, *, strict: bool = False) -> str | None:
    """The canonical answer of a completion: strict only, or strict then lenient.

    >>> extract_answer('<reasoning>x</reasoning><answer>$1,800.00</answer>')
    '1800'
    >>> extract_answer("the answer is 7", strict=True) is None
    True
    """
    found = extract(completion)
    if strict and found.mode != "strict":
        return None
    return found.value


def failure_bucket(completion: str) -> str | None:
    """Why strict extraction fails for ``completion``; None when it succeeds.

    One of :data:`FAILURE_BUCKETS`: ``no_answer_tag`` (neither tag), ``multiple_answer_tags``
    (a tag appears twice or more), ``truncated`` (``<answer>`` never closed),
    ``malformed_answer_tag`` (``</answer>`` without or before ``<answer>``),
    ``empty_answer`` (only whitespace inside) and ``non_numeric_answer``.

    >>> failure_bucket("<answer>eighteen</answer>")
    'non_numeric_answer'
    """
    text = completion if isinstance(completion, str) else ""
    opens, closes = text.count(ANSWER_OPEN), text.count(ANSWER_CLOSE)
    if opens == 0 and closes == 0:
        return "no_answer_tag"
    if opens > 1 or closes > 1:
        return "multiple_answer_tags"
    if closes == 0:
        return "truncated"
    inside = _answer_span(text)
    if inside is None:
        return "malformed_answer_tag"
    if not inside.strip():
        return "empty_answer"
    if not _values(_strip_tags(inside)):
        return "non_numeric_answer"
    return None


def parse_gold(answer_field: str) -> str:
    """Canonical final answer of a GSM8K solution, read from its ``#### N`` line.

    Raises ValueError when there is no ``####`` marker or what follows it is not a
    number, TypeError when ``answer_field`` is not a string.

    >>> parse_gold("She makes 9 * 2 = $<<9*2=18>>18.\\n#### 1,800")
    '1800'
    """
    if not isinstance(answer_field, str):
        raise TypeError(f"GSM8K answer must be a str, got {type(answer_field).__name__}")
    marker = answer_field.rfind("####")
    if marker < 0:
        snippet = answer_field[-60:].strip()
        raise ValueError(f"GSM8K answer has no final '#### N' line (ends with {snippet!r})")
    tail = answer_field[marker + 4 :].strip()
    first_line = tail.splitlines()[0] if tail else ""
    value = normalize_number(first_line)
    if value is None:
        raise ValueError(f"GSM8K answer ends with '#### {first_line}', which is not a number")
    return value


def _exact(text: str) -> Fraction | None:
    values = _values(text)
    return values[0] if values else None


def answers_equal(a: str | None, b: str | None, *, rel_tol: float = 1e-9) -> bool:
    """Whether two answers denote the same number.

    Exact comparison of the values first (``"0.5" == "1/2"``); if that fails, a
    relative-tolerance comparison of their floats (so ``"0.3333333333333"`` matches
    ``"1/3"``). None never equals anything, not even None. Strings without a number
    are equal only when identical after stripping whitespace. Never raises.

    >>> answers_equal("1,800", "1800.0"), answers_equal("18", None)
    (True, False)
    """
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    fa, fb = _exact(a), _exact(b)
    if fa is None or fb is None:
        return fa is None and fb is None and a.strip() == b.strip()
    if fa == fb:
        return True
    try:
        return math.isclose(float(fa), float(fb), rel_tol=rel_tol, abs_tol=0.0)
    except (OverflowError, ValueError):
        return False
