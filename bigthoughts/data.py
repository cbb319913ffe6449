"""GSM8K loading (local path or checksummed download) and the prompts we feed models.

GSM8K (Cobbe et al., 2021) ships as two JSON-lines files, ``train.jsonl`` (7,473 rows)
and ``test.jsonl`` (1,319 rows), each row ``{"question": ..., "answer": ...}`` where
the answer is a worked solution ending in a line ``#### N``. We keep the solution
text and its canonical final number (:func:`bigthoughts.answers.parse_gold`).

Where the files come from, in order: an explicit path (``--data``), the environment
variable ``BIGTHOUGHTS_DATA``, then the cache ``$XDG_CACHE_HOME/bigthoughts/gsm8k``
(``~/.cache/bigthoughts/gsm8k``), which ``bigthoughts download`` fills from the
official repository and checks against the SHA-256 digests below.

Prompts come in two shapes: Gemma chat turns for instruction-tuned models, and a
plain few-shot text for base models, which continue a pattern rather than follow an
instruction. Both ask for ``<reasoning>...</reasoning>`` then ``<answer>N</answer>``,
the format that :mod:`bigthoughts.rewards` scores.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import urllib.error
import urllib.request
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bigthoughts.answers import ANSWER_CLOSE, format_completion, parse_gold
from bigthoughts.arithmetic import NOTE
from bigthoughts.files import atomic_write_bytes, file_sha256

__all__ = [
    "ANSWER_STOP",
    "CHAT_STOP",
    "DATA_ENV_VAR",
    "FEWSHOT_EXAMPLES",
    "FEWSHOT_STOP",
    "GSM8K_SHA256",
    "GSM8K_URL",
    "PROMPT_STYLES",
    "SPLITS",
    "SYSTEM_PROMPT",
    "DataError",
    "Example",
    "PromptFormat",
    "WorkedExample",
    "build_prompt",
    "chat_prompt",
    "default_cache_dir",
    "download",
    "fewshot_prompt",
    "load_gsm8k",
    "prompt_format",
    "read_ids",
    "resolve_data_dir",
    "select_ids",
    "solution_to_reasoning",
]

SPLITS = ("train", "test")
DATA_ENV_VAR = "BIGTHOUGHTS_DATA"
GSM8K_URL = (
    "https://raw.githubusercontent.com/openai/grade-school-math/master/"
    "grade_school_math/data/{split}.jsonl"
)
GSM8K_SHA256 = {
    "train": "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
    "test": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
}


class DataError(Exception):
    """The data set could not be found, read, parsed or downloaded."""


@dataclass(frozen=True)
class Example:
    """One GSM8K problem. ``gold`` is the canonical final number of ``answer``."""

    id: str
    question: str
    answer: str
    gold: str


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/bigthoughts/gsm8k``, or ``~/.cache/bigthoughts/gsm8k``."""
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bigthoughts" / "gsm8k"


def resolve_data_dir(
    path: str | Path | None = None, *, env: Mapping[str, str] | None = None
) -> Path:
    """The GSM8K directory: ``path``, else ``$BIGTHOUGHTS_DATA``, else the cache dir.

    ``env`` defaults to ``os.environ``. Raises DataError saying what was tried and how
    to fix it when the chosen directory does not exist.
    """
    env = os.environ if env is None else env
    if path is not None:
        candidate, source = Path(path).expanduser(), "the path given"
    elif env.get(DATA_ENV_VAR):
        candidate, source = Path(env[DATA_ENV_VAR]).expanduser(), f"${DATA_ENV_VAR}"
    else:
        candidate, source = default_cache_dir(env), "the default cache directory"
    if not candidate.is_dir():
        raise DataError(
            f"GSM8K data not found: {candidate} ({source}) is not a directory. "
            f"Pass --data DIR, set {DATA_ENV_VAR}=DIR, or run `bigthoughts download`."
        )
    return candidate


def _split_file(split: str, path: str | Path | None, env: Mapping[str, str] | None) -> Path:
    if split not in SPLITS:
        raise DataError(f"unknown GSM8K split {split!r}; expected one of {', '.join(SPLITS)}")
    if path is not None and Path(path).suffix == ".jsonl":
        file = Path(path).expanduser()
    else:
        file = resolve_data_dir(path, env=env) / f"{split}.jsonl"
    if not file.is_file():
        raise DataError(
            f"GSM8K file not found: {file}. Pass --data DIR, set {DATA_ENV_VAR}=DIR, "
            "or run `bigthoughts download`."
        )
    return file


def load_gsm8k(
    split: str = "test",
    path: str | Path | None = None,
    *,
    strict: bool = False,
    limit: int | None = None,
    env: Mapping[str, str] | None = None,
    ids: Sequence[str] | None = None,
) -> list[Example]:
    """Load a GSM8K split as :class:`Example` rows, ids ``"{split}-{row:04d}"``.

    ``path`` is a directory holding ``{split}.jsonl`` or a ``.jsonl`` file; None
    resolves it with :func:`resolve_data_dir`. Rows whose answer lacks a ``#### N``
    number are skipped with one warning giving their count, or raise DataError when
    ``strict``. Malformed JSON and missing keys always raise DataError naming the file
    and line. ``limit`` keeps the first ``limit`` examples. ``ids`` keeps only the
    listed questions (:func:`select_ids`, in dataset order) before ``limit`` applies.
    """
    if ids is not None:
        return select_ids(load_gsm8k(split, path, strict=strict, env=env), ids)[:limit]
    if limit is not None and limit < 0:
        raise DataError(f"limit must be >= 0, got {limit}")
    file = _split_file(split, path, env)
    try:
        # split on "\n" only: str.splitlines() would also break at U+2028 inside a string
        lines = file.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"could not read {file}: {err}") from err
    examples: list[Example] = []
    skipped, row = 0, -1
    for lineno, line in enumerate(lines, start=1):
        if limit is not None and len(examples) >= limit:
            break
        if not line.strip():
            continue
        row += 1
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{file}:{lineno}: malformed JSON ({err.msg})") from err
        if not isinstance(record, dict):
            raise DataError(f"{file}:{lineno}: expected a JSON object, got {type(record).__name__}")
        for key in ("question", "answer"):
            if not isinstance(record.get(key), str):
                raise DataError(
                    f"{file}:{lineno}: missing or non-string key {key!r} "
                    "(each row needs 'question' and 'answer')"
                )
        try:
            gold = parse_gold(record["answer"])
        except ValueError as err:
            if strict:
                raise DataError(f"{file}:{lineno}: {err}") from err
            skipped += 1
            continue
        examples.append(Example(f"{split}-{row:04d}", record["question"], record["answer"], gold))
    if skipped:
        warnings.warn(f"skipped {skipped} rows without a '#### N' answer in {file}", stacklevel=2)
    return examples


def read_ids(path: str | Path) -> list[str]:
    """Question ids listed in a text file, one per line (``train-0042``); blank lines
    and ``#`` comments are skipped. A missing, unreadable or empty file, or a repeated
    id, raises :class:`DataError`."""
    file = Path(path).expanduser()
    try:
        lines = file.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"could not read the id list {file}: {err}") from err
    ids = [x.split("#", 1)[0].strip() for x in lines]
    ids = [x for x in ids if x]
    if not ids:
        raise DataError(f"the id list {file} names no questions")
    repeated = sorted(x for x, n in Counter(ids).items() if n > 1)
    if repeated:
        raise DataError(f"the id list {file} repeats {', '.join(repeated[:5])}")
    return ids


def select_ids(examples: Sequence[Example], ids: Sequence[str]) -> list[Example]:
    """The examples whose id is in ``ids``, in their dataset order; an id that names
    none of them raises :class:`DataError` (a typo or the wrong split)."""
    wanted = set(ids)
    known = {e.id for e in examples}
    unknown = [x for x in ids if x not in known]
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise DataError(f"no question has the id {', '.join(unknown[:5])}{more} "
                        "(ids look like train-0042; is it the right split?)")
    return [e for e in examples if e.id in wanted]


def _fetch(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def download(
    dest: Path | None = None,
    *,
    splits: Sequence[str] = SPLITS,
    timeout: float = 30,
    env: Mapping[str, str] | None = None,
) -> Path:
    """Fetch the official GSM8K files into ``dest`` (default: the cache dir); return it.

    Each file is checked against :data:`GSM8K_SHA256` before it replaces anything
    (written to a temporary file, then ``os.replace``). Files already present with
    the right digest are not fetched again. Raises DataError when offline or when a
    digest does not match (the bad file is not kept).
    """
    dest = Path(dest).expanduser() if dest is not None else default_cache_dir(env)
    for split in splits:
        if split not in SPLITS:
            raise DataError(f"unknown GSM8K split {split!r}; expected one of {', '.join(SPLITS)}")
    dest.mkdir(parents=True, exist_ok=True)
    for split in splits:
        target, expected = dest / f"{split}.jsonl", GSM8K_SHA256[split]
        if target.is_file() and file_sha256(target) == expected:
            continue
        url = GSM8K_URL.format(split=split)
        try:
            payload = _fetch(url, timeout)
        except urllib.error.HTTPError as err:
            raise DataError(
                f"could not download GSM8K from {url}: HTTP {err.code} {err.reason}. "
                f"Copy train.jsonl/test.jsonl into {dest} or set {DATA_ENV_VAR}"
            ) from err
        except (OSError, http.client.HTTPException, ValueError) as err:
            reason = getattr(err, "reason", None) or err
            raise DataError(
                f"could not download GSM8K from {url}: {reason}. You appear to be offline; "
                f"copy train.jsonl/test.jsonl into {dest} or set {DATA_ENV_VAR}"
            ) from err
        actual = hashlib.sha256(payload).hexdigest()
        if actual != expected:
            raise DataError(
                f"checksum mismatch for {url}: expected sha256 {expected}, got {actual}; "
                "the file was not saved"
            )
        atomic_write_bytes(target, payload)
    return dest


SYSTEM_PROMPT = (
    "Solve the math word problem. Think step by step and write your reasoning between "
    "<reasoning> and </reasoning>. Then give only the final answer, a single number "
    "without units, between <answer> and </answer>."
)

FEWSHOT_STOP = "\nQuestion:"
"""Where a base model starts inventing the next few-shot question: stop generating."""
ANSWER_STOP = ANSWER_CLOSE
CHAT_START, CHAT_STOP = "<start_of_turn>", "<end_of_turn>"
"""Gemma's chat turn markers; the end of the model's turn is where generation stops."""
"""Nothing after the closed answer is needed: stop generating."""


@dataclass(frozen=True)
class WorkedExample:
    """A hand-written few-shot demonstration (not taken from GSM8K)."""

    question: str
    reasoning: str
    answer: str


FEWSHOT_EXAMPLES = (
    WorkedExample(
        question=(
            "A baker makes 24 muffins in the morning and 18 muffins in the afternoon. "
            "She sells 30 of them. How many muffins does she have left?"
        ),
        reasoning=(
            "The baker makes 24 + 18 = 42 muffins in total. "
            "After selling 30 of them she has 42 - 30 = 12 muffins left."
        ),
        answer="12",
    ),
    WorkedExample(
        question=(
            "Tickets to a school play cost $6 for students and $9 for adults. A family "
            "buys 3 student tickets and 2 adult tickets. How many dollars do they pay?"
        ),
        reasoning=(
            "The student tickets cost 3 * 6 = 18 dollars. "
            "The adult tickets cost 2 * 9 = 18 dollars. "
            "Together they pay 18 + 18 = 36 dollars."
        ),
        answer="36",
    ),
    WorkedExample(
        question=(
            "Maya reads 15 pages of her book every day. The book has 210 pages. "
            "How many weeks does it take her to finish the book?"
        ),
        reasoning=(
            "Maya needs 210 / 15 = 14 days to read the whole book. "
            "A week has 7 days, so that takes 14 / 7 = 2 weeks."
        ),
        answer="2",
    ),
)


def check_shots(shots: int) -> None:
    """Raises a one-line ValueError unless 0 <= ``shots`` <= the worked examples we have."""
    if not 0 <= shots <= len(FEWSHOT_EXAMPLES):
        raise ValueError(f"shots must be between 0 and {len(FEWSHOT_EXAMPLES)}, got {shots}")


def chat_template(messages: Sequence[tuple[str, str]]) -> str:
    """Gemma's turns of ``(role, text)`` messages, opening the model's turn. Gemma has no
    system role: system/developer text leads the first user turn."""
    system = "\n\n".join(t for r, t in messages if r in ("system", "developer") and t.strip())
    turns = []
    for role, text in messages:
        if role in ("system", "developer"):
            continue
        if role == "user" and system:
            text, system = f"{system}\n\n{text}", ""
        speaker = "model" if role == "assistant" else "user"
        turns.append(f"{CHAT_START}{speaker}\n{text}{CHAT_STOP}\n")
    return "".join(turns) + f"{CHAT_START}model\n"


def chat_prompt(question: str, *, system: str = SYSTEM_PROMPT) -> str:
    """One Gemma user turn holding the instructions and the question, opening the model turn.

    >>> chat_prompt("2 + 2?", system="Be brief.")
    '<start_of_turn>user\\nBe brief.\\n\\n2 + 2?<end_of_turn>\\n<start_of_turn>model\\n'
    """
    return chat_template([("system", system), ("user", question)])


def fewshot_prompt(question: str, *, shots: int = 2, system: str = SYSTEM_PROMPT) -> str:
    """Plain-text prompt for base models: instructions, ``shots`` worked examples, question.

    ``shots=0`` is the zero-shot prompt (instructions only). Stop generation at
    :data:`FEWSHOT_STOP`.
    """
    check_shots(shots)
    parts = [f"{system}\n\n"]
    for shot in FEWSHOT_EXAMPLES[:shots]:
        parts.append(f"Question: {shot.question}\nAnswer: "
                     f"{format_completion(shot.reasoning, shot.answer)}\n\n")
    parts.append(f"Question: {question}\nAnswer:")
    return "".join(parts)


PROMPT_STYLES = ("chat", "fewshot", "zeroshot")



@dataclass(frozen=True, kw_only=True)
class PromptFormat:
    """A prompt style and the stop strings that go with it: the one owner of both.

    ``style`` is ``"chat"`` (a Gemma user turn, for instruction-tuned models),
    ``"fewshot"`` (``shots`` worked examples, for base models) or ``"zeroshot"``
    (the few-shot layout without examples). ``stop`` strings end a generation and are
    cut off its text; ``stop_inclusive`` ones end it and are kept (the closed answer).
    Build one with :func:`prompt_format`.

    >>> fmt = prompt_format("chat")
    >>> fmt.stop, fmt.stop_inclusive
    (('<end_of_turn>',), ('</answer>',))
    """

    style: Literal["chat", "fewshot", "zeroshot"]
    shots: int
    stop: tuple[str, ...]
    stop_inclusive: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.style not in PROMPT_STYLES:
            raise ValueError(f"unknown prompt style {self.style!r}; "
                             f"expected one of {', '.join(PROMPT_STYLES)}")
        check_shots(self.shots)

    def prompt(self, question: str) -> str:
        """The prompt for ``question`` in this format.

        Raises a one-line ValueError for text that is not valid Unicode (lone
        surrogates, e.g. undecodable bytes from the command line), which no
        tokenizer can encode.
        """
        try:
            question.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(f"the question is not valid UTF-8 text (position {err.start})") \
                from None
        if self.style == "chat":
            return chat_prompt(question)
        return fewshot_prompt(question, shots=self.shots)


def prompt_format(style: str, shots: int = 2) -> PromptFormat:
    """The :class:`PromptFormat` of ``style``; ``shots`` counts for ``"fewshot"`` only.

    Raises a one-line ValueError for an unknown style or a bad number of shots (whatever
    the style: a bad ``--shots`` is a mistake even where it would be ignored).
    """
    check_shots(shots)
    if style == "chat":
        return PromptFormat(style="chat", shots=0, stop=(CHAT_STOP,),
                            stop_inclusive=(ANSWER_STOP,))
    if style in ("fewshot", "zeroshot"):
        return PromptFormat(style=style, shots=shots if style == "fewshot" else 0,  # type: ignore[arg-type]
                            stop=(FEWSHOT_STOP,), stop_inclusive=(ANSWER_STOP,))
    raise ValueError(f"unknown prompt style {style!r}; expected one of {', '.join(PROMPT_STYLES)}")


def build_prompt(
    question: str, style: Literal["chat", "fewshot", "zeroshot"], shots: int = 2
) -> str:
    """Prompt for ``question`` in ``style``: ``prompt_format(style, shots).prompt(question)``."""
    return prompt_format(style, shots).prompt(question)


_CALCULATOR_RE = re.compile(NOTE)


def solution_to_reasoning(answer_text: str) -> str:
    """A GSM8K solution as plain reasoning: ``<<a*b=c>>`` notes and ``#### N`` removed.

    >>> solution_to_reasoning("He pays 3*2=$<<3*2=6>>6.\\n#### 6")
    'He pays 3*2=$6.'
    """
    lines = _CALCULATOR_RE.sub("", answer_text).splitlines()
    kept = [line.strip() for line in lines if not line.lstrip().startswith("####")]
    return "\n".join(line for line in kept if line)
