"""What every inference engine shares: the request, the result, stops and the calculator.

An engine is anything with :class:`Engine`'s ``generate``: rows are prompt-major
(``num_samples`` per prompt), ``temperatures`` is one value or one per row, ``stop``
strings end a row and are cut off, ``stop_inclusive`` ones end it and are kept (the
earliest match wins), EOS ends a row, ``max_new_tokens`` ends it as "length", and
``calculator=True`` inserts GSM8K calculator results (``<<48/2=`` -> ``24>>``) as
tokens flagged in :attr:`Generation.inserted`. The vote, evaluation, GRPO rollouts and
the server call only this, so a new engine imports this module and nothing else of
``inference/``.

    >>> find_stop("so 4</answer> more", stop=(), stop_inclusive=("</answer>",))
    (4, 13, 13)
    >>> calculator_text("He pays <<3*4=", lambda expr: str(eval(expr)))
    '12>>'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from bigthoughts.arithmetic import CALL_OPEN

__all__ = ["SEED_MAX", "Calculator", "Engine", "FinishReason", "Generation", "calculator_insert",
           "calculator_text", "check_request", "find_stop", "resolve_calculator"]

FinishReason = Literal["stop", "eos", "length", "cancelled"]
SEED_MAX = 0x7FFFFFFF  # the samplers take a non-negative 32-bit seed
Calculator = Callable[[str], "str | None"]


@dataclass(frozen=True)
class Generation:
    """One sampled continuation."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: FinishReason
    prompt_tokens: int
    temperature: float
    # True where a token was inserted by the calculator rather than sampled
    inserted: tuple[bool, ...] = ()
    # log-prob of each token under the distribution it was drawn from, softmax(logits / T)
    # (``logprobs`` are at T = 1); 0 for greedy rows and inserted tokens. With top_k /
    # top_p it is still the untruncated softmax(logits / T). Empty if not recorded
    sample_logprobs: tuple[float, ...] = ()

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def logprob(self) -> float:
        return float(sum(self.logprobs))

    @property
    def mean_logprob(self) -> float:
        return self.logprob / max(1, self.num_tokens)


class Engine(Protocol):
    """What the vote, evaluation and the server need from an inference engine."""

    def generate(self, prompts: Sequence[str], *, temperatures: float | Sequence[float] = 0.0,
                 num_samples: int = 1, max_new_tokens: int = 256, stop: Sequence[str] = (),
                 stop_inclusive: Sequence[str] = (), seed: int = 0, top_k: int | None = None,
                 top_p: float | None = None, calculator: bool | Calculator = False
                 ) -> list[Generation]: ...


def check_request(rows: int, temperatures: float | Sequence[float], num_samples: int,
                  max_new_tokens: int, top_k: int | None, top_p: float | None) -> list[float]:
    """Validates a ``generate`` request (any engine); returns one temperature per output
    row, as given (not as float32)."""
    if num_samples < 1 or max_new_tokens < 1:
        raise ValueError("num_samples and max_new_tokens must be >= 1")
    if top_k is not None and top_k < 1:
        raise ValueError("top_k must be >= 1")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError("top_p must be in (0, 1]")
    requested = [float(temperatures)] * rows if np.ndim(temperatures) == 0 \
        else [float(t) for t in temperatures]
    if len(requested) != rows:
        raise ValueError(f"need 1 or {rows} temperatures, got {len(requested)}")
    if any(not t >= 0 for t in requested):
        raise ValueError("temperatures must be >= 0")
    return requested


def find_stop(text: str, stop: Sequence[str], stop_inclusive: Sequence[str]
              ) -> tuple[int, int, int] | None:
    """The earliest stop string in ``text``: (where it starts, where the kept text ends,
    where the stop string ends), or None. A ``stop`` string is cut off the text, a
    ``stop_inclusive`` one is kept."""
    best = None
    for strings, keep in ((stop, False), (stop_inclusive, True)):
        for s in strings:
            at = text.find(s)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, at + len(s) if keep else at, at + len(s))
    return best


# an open calculator call at the end of a text: "<<" then an expression then "="
_CALL_AT_END = re.compile(CALL_OPEN + "$")


def calculator_text(text: str, calculate: Calculator) -> str | None:
    """``"RESULT>>"`` when ``text`` ends with an open ``<<EXPR=`` annotation whose
    expression ``calculate`` can evaluate; else None. (Every engine uses it: a prompt
    ending in an open call, and a row after a sampled token.)"""
    match = _CALL_AT_END.search(text)
    if match is None:
        return None
    result = calculate(match.group(1))
    return None if result is None else f"{result}>>"


def calculator_insert(text: str, piece: str, calculate: Calculator
                      ) -> tuple[bool, str | None]:
    """What the calculator does after a row samples a token whose text ``piece`` ends
    ``text`` (the row's text, with the prompt's tail in front):

    * ``(False, "RESULT>>")``: the text now ends with an open ``<<EXPR=``; insert it;
    * ``(True, "=RESULT>>")``: the token joined that ``=`` to more text (Gemma has
      one token for ``=-``); drop the token and insert this instead, so the model's
      own guess after ``=`` is replaced;
    * ``(False, None)``: nothing to do.
    """
    found = calculator_text(text, calculate)
    if found is not None:
        return False, found
    cut = piece.find("=")
    if 0 <= cut < len(piece) - 1 and text.endswith(piece):
        found = calculator_text(text[:len(text) - len(piece) + cut + 1], calculate)
        if found is not None:
            return True, piece[:cut + 1] + found
    return False, None


def resolve_calculator(calculator: bool | Calculator | None) -> Calculator | None:
    """``True`` -> the safe evaluator of :mod:`bigthoughts.arithmetic`; a function is used as
    given (expression text -> result text or None); ``False``/None -> no calculator."""
    if calculator is True:
        from bigthoughts.arithmetic import calculate

        return calculate
    if calculator is False or calculator is None:
        return None
    if not callable(calculator):
        raise TypeError("calculator must be a bool or a function expr -> str | None")
    return calculator
