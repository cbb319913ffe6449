"""A safe, exact arithmetic evaluator and the calculator's answer text.

:func:`evaluate_expression` reads numbers and the operators people write, with a
small recursive-descent parser of its own (no ``eval``, no ``ast``, no names, no
calls) and exact :class:`~fractions.Fraction` arithmetic:

* numbers: ``48``, ``2.5``, ``.5``, ``1,200`` (commas only in groups of three),
  currency signs ``$ € £`` (ignored), and a trailing ``%`` which **divides by 100**
  (``20% * 50`` is 10, ``50%`` is 1/2);
* ``+``, ``-`` (also ``−``), ``*`` (also ``×``, ``·``, ``⋅``, and ``x``/``X`` between
  a number and a number or parenthesis, so ``3 x 4`` is 12 while ``x + 1``, ``2x``
  and ``2x + 3`` are refused), ``/`` (also ``÷``), ``^`` or ``**`` (right-associative, binding
  tighter than unary minus: ``-2^2`` is -4), unary minus and plus, parentheses.
  Implicit multiplication (``2(3)``) is refused.

Bounds, each refusing (returning None) in microseconds instead of computing:
:data:`MAX_CHARS` characters of input, :data:`MAX_DIGITS` digits per number,
:data:`MAX_DEPTH` nested parentheses or signs, an exponent that is a whole number of
at most :data:`MAX_EXPONENT` in size, and :data:`MAX_BITS` bits in the numerator or
denominator of any intermediate result (checked *before* a power is computed), so
``9**9**9**9``, a 10,000-digit number and 10,000 nested parentheses are all refused.

Example::

    >>> calculate("12*7"), calculate("10/3"), calculate("9**9**9**9") is None
    ('84', '3.333333', True)
    >>> evaluate_expression("20% * 50"), evaluate_expression("2x + 3") is None
    (Fraction(10, 1), True)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["ANNOTATION", "CALC_DECIMALS", "CALL_OPEN", "MAX_BITS", "MAX_CHARS", "MAX_DEPTH",
           "MAX_DIGITS", "MAX_EXPONENT", "NOTE", "Refused", "calculate", "evaluate_expression",
           "tokenize"]

MAX_CHARS = 500  # longest expression the evaluator reads
MAX_DIGITS = 40  # most digits in one number (integer and decimal part together)
MAX_DEPTH = 50  # deepest nesting of parentheses, signs and powers
MAX_EXPONENT = 64  # largest |n| in a ** n
MAX_BITS = 512  # largest numerator or denominator, in bits, of any intermediate result
CALC_DECIMALS = 6  # decimals calculate() rounds a non-terminating or long result to
# GSM8K's calculator annotations, one owner for every module that reads them:
# an open call "<<EXPR=" (group 1: EXPR), where both engines answer with the calculator;
CALL_OPEN = r"<<([^<>=\n]{1,160})="
# a whole annotation "<<EXPR=RESULT>>" (groups: EXPR, RESULT), as the step checker and the
# SFT result targets read it;
ANNOTATION = CALL_OPEN + r"([^<>=\n]{0,64})>>"
# any "<<...>>" note, as removed from a solution to leave plain reasoning
NOTE = r"<<[^<>]*>>"

_TOKEN_NUMBER = re.compile(r"(\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.(\d+))?|\.(\d+)")
_OPERATORS = {"+": "+", "-": "-", "\u2212": "-", "*": "*", "\u00d7": "*", "\u00b7": "*",
              "\u22c5": "*", "x": "*", "X": "*", "/": "/", "\u00f7": "/", "^": "^",
              "(": "(", ")": ")", "%": "%"}
_MULTIPLIER_X = re.compile(r"\s*[$\u20ac\u00a3]?[\d.(]")  # what may follow x in 3 x 4
_SKIPPED = frozenset(" \t\r\n$\u20ac\u00a3")


class Refused(Exception):
    """Internal: the expression is invalid or too big."""


# --- evaluator ---------------------------------------------------------------------
def _number(match: re.Match[str]) -> Fraction:
    whole = (match.group(1) or "0").replace(",", "")
    frac = match.group(2) or match.group(3) or ""
    if len(whole) + len(frac) > MAX_DIGITS:
        raise Refused("too many digits")
    return Fraction(int(whole + frac), 10 ** len(frac))


def tokenize(text: str) -> list[Fraction | str]:
    """Numbers as written (``%`` is its own token) and one-character operators."""
    tokens: list[Fraction | str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in _SKIPPED:
            i += 1
        elif ch.isdigit() or (ch == "." and i + 1 < n and text[i + 1].isdigit()):
            match = _TOKEN_NUMBER.match(text, i)
            if match is None or match.end() - i > MAX_DIGITS + MAX_DIGITS // 3 + 1:
                raise Refused("bad number")
            tokens.append(_number(match))
            i = match.end()
        elif text.startswith("**", i):
            tokens.append("^")
            i += 2
        elif ch in "xX" and not _MULTIPLIER_X.match(text, i + 1):
            raise Refused("x not between numbers")
        elif ch in _OPERATORS:
            tokens.append(_OPERATORS[ch])
            i += 1
        else:
            raise Refused(f"unexpected {ch!r}")
    return tokens


def _checked(value: Fraction) -> Fraction:
    if value.numerator.bit_length() > MAX_BITS or value.denominator.bit_length() > MAX_BITS:
        raise Refused("result too large")
    return value


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1 or abs(exponent) > MAX_EXPONENT:
        raise Refused("exponent not a small whole number")
    e = int(exponent)
    if e < 0 and base == 0:
        raise Refused("zero to a negative power")
    bits = max(base.numerator.bit_length(), base.denominator.bit_length())
    if bits * abs(e) > MAX_BITS:  # |p**e| < 2**(bits*e): refuse before computing
        raise Refused("power too large")
    return _checked(base**e)


@dataclass
class _Parser:
    """Recursive descent over tokens::

        expr  := term (("+" | "-") term)*
        term  := unary (("*" | "/") unary)*
        unary := ("-" | "+") unary | power
        power := atom ("^" unary)?
        atom  := NUMBER "%"? | "(" expr ")"
    """

    tokens: list[Fraction | str]
    pos: int = 0
    depth: int = 0

    def peek(self) -> Fraction | str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> Fraction | str | None:
        token = self.peek()
        self.pos += 1
        return token

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            op, right = self.take(), self.term()
            value = _checked(value + right if op == "+" else value - right)
        return value

    def term(self) -> Fraction:
        value = self.unary()
        while self.peek() in ("*", "/"):
            op, right = self.take(), self.unary()
            if op == "/" and right == 0:
                raise Refused("division by zero")
            value = _checked(value * right if op == "*" else value / right)
        return value

    def unary(self) -> Fraction:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise Refused("nested too deeply")
        if self.peek() in ("-", "+"):
            sign = self.take()
            value = self.unary()
            value = -value if sign == "-" else value
        else:
            value = self.atom()
            if self.peek() == "^":
                self.take()
                value = _power(value, self.unary())
        self.depth -= 1
        return value

    def atom(self) -> Fraction:
        token = self.take()
        if isinstance(token, Fraction):
            if self.peek() == "%":
                self.take()
                return token / 100
            return token
        if token == "(":
            value = self.expr()
            if self.take() != ")":
                raise Refused("unbalanced parentheses")
            return value
        raise Refused(f"expected a number, got {token!r}")


def _evaluate(text: str) -> Fraction:
    if len(text) > MAX_CHARS:
        raise Refused("expression too long")
    parser = _Parser(tokenize(text))
    value = parser.expr()
    if parser.pos != len(parser.tokens):
        raise Refused("trailing tokens")
    return value


def evaluate_expression(text: str) -> Fraction | None:
    """The exact value of an arithmetic expression, or None when it is invalid or
    exceeds a bound (see the module docstring). Never raises.

    >>> evaluate_expression("$1,200 + $300"), evaluate_expression("20% * 50")
    (Fraction(1500, 1), Fraction(10, 1))
    >>> evaluate_expression("3 x (4 - 1) / 2"), evaluate_expression("x + 1")
    (Fraction(9, 2), None)
    """
    if not isinstance(text, str):
        return None
    try:
        return _evaluate(text)
    except Refused:
        return None


def _decimal_text(value: Fraction, places: int) -> str:
    """``value`` (a multiple of 10**-places) as a decimal with trailing zeros stripped."""
    scaled = abs(value.numerator * 10**places // value.denominator)
    digits = str(scaled).rjust(places + 1, "0")
    text = digits[:-places] + "." + digits[-places:] if places else digits
    text = text.rstrip("0").rstrip(".") if places else text
    return ("-" if value < 0 and text.strip("0.") else "") + text


def calculate(expr: str) -> str | None:
    """The text a calculator inserts for ``expr``: ``"84"``, ``"2.5"``, or the value
    rounded to :data:`CALC_DECIMALS` decimals with trailing zeros stripped
    (``"3.333333"``); None when the expression is invalid or unsafe. Never raises.

    >>> calculate("48/2"), calculate("5/2"), calculate("2/3"), calculate("2x")
    ('24', '2.5', '0.666667', None)
    """
    value = evaluate_expression(expr)
    if value is None:
        return None
    if value.denominator == 1:
        return str(value.numerator)
    return _decimal_text(round(value, CALC_DECIMALS), CALC_DECIMALS)
