"""Data of the supervised warm start: GSM8K *train* solutions as tagged completions.

Each training solution becomes the completion the GRPO rewards ask for::

    GSM8K   "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\\n...\\n#### 72"
    target  "<reasoning>Natalia sold 48/2 = <<48/2=24>>24 clips in May.\\n...</reasoning>\\n"
            "<answer>72</answer>"

behind a *zero-shot* prompt, so the format no longer depends on worked examples in
the prompt. ``annotations=True`` keeps GSM8K's ``<<expr=result>>`` calculator notes:
a model trained on them writes ``<<48/2=`` and, with ``--calculator``, the sampler
supplies ``24>>`` (see :mod:`bigthoughts.inference.jax_sampler`); ``False`` strips them.

A seeded slice of *train* is held out for validation; GSM8K *test* is never touched.
Batches are length-bucketed: each epoch is a seeded shuffle, cut into windows of
``window`` batches whose examples are sorted by length before being batched, and the
batches are shuffled again, so padding stays small and the order is reproducible
from ``(seed, epoch)`` alone (an exact resume needs only the batch position).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bigthoughts.answers import format_completion
from bigthoughts.arithmetic import ANNOTATION, NOTE, calculate
from bigthoughts.data import Example

_NOTE = re.compile(NOTE)
_RESULT = re.compile(ANNOTATION)
LOSS_ON = ("completion", "results")


def completion_text(example: Example, *, annotations: bool = True) -> str:
    """The tagged completion for a GSM8K example (see the module docstring).

    >>> e = Example(id="t", question="q", answer="He pays 3*2=$<<3*2=6>>6.\\n#### 6", gold="6")
    >>> completion_text(e)
    '<reasoning>He pays 3*2=$<<3*2=6>>6.</reasoning>\\n<answer>6</answer>'
    >>> completion_text(e, annotations=False)
    '<reasoning>He pays 3*2=$6.</reasoning>\\n<answer>6</answer>'
    """
    lines = [line.strip() for line in example.answer.splitlines()]
    steps = [line for line in lines if line and not line.startswith("####")]
    reasoning = "\n".join(steps)
    if not annotations:
        reasoning = _NOTE.sub("", reasoning)
    return format_completion(reasoning, example.gold)


@dataclass(frozen=True)
class SFTExample:
    """One tokenized pair: the prompt (with BOS) and the completion (ends with EOS)."""

    id: str
    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    # per completion token, 1 if it is a target; None: all completion tokens are targets
    targets: tuple[int, ...] | None = None

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


def split_validation(examples: Sequence[Example], size: int, seed: int
                     ) -> tuple[list[Example], list[Example]]:
    """(train, validation): ``size`` examples held out by a seeded permutation."""
    if not 0 <= size < len(examples):
        raise ValueError(f"validation size must be in [0, {len(examples)}), got {size}")
    order = np.random.default_rng(seed).permutation(len(examples))
    held = set(order[:size].tolist())
    train = [e for i, e in enumerate(examples) if i not in held]
    return train, [examples[i] for i in sorted(held)]


def result_targets(text: str, tokenizer) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(ids, targets)`` of a completion whose only targets are calculator results.

    The text is encoded in pieces: ``…<<48/2`` | ``=24>>`` | the rest. The middle
    piece is what the sampler's calculator supplies (:mod:`bigthoughts.inference.jax_sampler`
    encodes ``24>>`` after the model's ``=``, or ``=24>>`` when the model's token
    joined ``=`` to what follows, as Gemma's ``=-`` does); the ``=`` in it is a
    target too, so a sign that shares its token is learnt. A piece is a target (1)
    only when the calculator gives exactly the written result, so a trace's own
    wrong arithmetic is never learnt.
    """
    ids: list[int] = []
    targets: list[int] = []

    def add(piece: str, target: bool) -> None:
        if piece:
            new = tokenizer.encode(piece)
            ids.extend(new)
            targets.extend([int(target)] * len(new))

    pos = 0
    for match in _RESULT.finditer(text):
        add(text[pos:match.start(2) - 1], False)
        add(f"={match.group(2)}>>", calculate(match.group(1)) == match.group(2))
        pos = match.end()
    add(text[pos:], False)
    return tuple(ids), tuple(targets)


def tokenize(examples: Sequence[Example], tokenizer, prompt, *, annotations: bool,
             max_length: int, loss_on: str = "completion") -> tuple[list[SFTExample], int]:
    """Tokenizes ``prompt(question)`` + completion + EOS; drops (and counts) pairs
    longer than ``max_length`` tokens rather than cutting their answers off.

    ``loss_on="results"`` makes only the calculator results the targets
    (:func:`result_targets`: the model learns the calculator's arithmetic on the
    set-ups it writes, and nothing else); pairs with no right result are dropped."""
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on must be one of {', '.join(LOSS_ON)}, got {loss_on!r}")
    if loss_on == "results" and not annotations:
        raise ValueError("loss_on='results' learns the results of the <<expr=result>> "
                         "notes: it needs annotations=True")
    out, dropped = [], 0
    for e in examples:
        p = tuple(tokenizer.encode(prompt(e.question), add_bos=True))
        text = completion_text(e, annotations=annotations)
        targets = None
        if loss_on == "results":
            ids, marks = result_targets(text, tokenizer)
            c, targets = (*ids, tokenizer.eos_id()), (*marks, 0)
            if not any(targets):
                dropped += 1
                continue
        else:
            c = (*tokenizer.encode(text), tokenizer.eos_id())
        if len(p) + len(c) > max_length:
            dropped += 1
            continue
        out.append(SFTExample(id=e.id, prompt_ids=p, completion_ids=c, targets=targets))
    return out, dropped


class BucketedOrder:
    """Endless length-bucketed batches; epoch e is a function of ``(seed, e)`` only."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, *,
                 window: int = 16, position: int = 0):
        if batch_size < 1 or not lengths:
            raise ValueError("need batch_size >= 1 and at least one example")
        self.lengths = np.asarray(lengths)
        self.batch_size, self.seed, self.window = batch_size, seed, window
        self.position = position  # batches taken so far, over all epochs
        self._epoch_cache: tuple[int, list[list[int]]] | None = None

    def _epoch(self, epoch: int) -> list[list[int]]:
        if self._epoch_cache and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        rng = np.random.default_rng((self.seed, epoch))
        order = rng.permutation(len(self.lengths))
        span = self.batch_size * self.window
        batches = []
        for start in range(0, len(order), span):
            group = sorted(order[start:start + span].tolist(), key=lambda i: self.lengths[i])
            batches += [group[i:i + self.batch_size] for i in range(0, len(group),
                                                                    self.batch_size)]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        self._epoch_cache = (epoch, batches)
        return batches

    def next(self) -> list[int]:
        per_epoch = -(-len(self.lengths) // self.batch_size)
        epoch, index = divmod(self.position, per_epoch)
        self.position += 1
        return self._epoch(epoch)[index]


def pad_batch(items: Sequence[SFTExample], pad_id: int, multiple: int = 64):
    """Left-padded ``tokens [B, L]`` and ``valid [B, L]``, and ``loss_mask [B, C]`` over
    the last C target positions (1 at the completion's tokens: all of them, or those
    its ``targets`` marks).

    Left padding puts every completion at the end, so only the last C positions need
    vocabulary logits (the prompt is context only). L and C are multiples of
    ``multiple`` so few shapes compile."""
    def up(n: int) -> int:
        return max(multiple, -(-n // multiple) * multiple)

    length = up(max(x.length for x in items))
    window = min(up(max(len(x.completion_ids) for x in items)), length - 1)
    tokens = np.full((len(items), length), pad_id, dtype=np.int32)
    valid = np.zeros((len(items), length), dtype=bool)
    loss_mask = np.zeros((len(items), window), dtype=np.float32)
    for i, x in enumerate(items):
        seq = x.prompt_ids + x.completion_ids
        tokens[i, length - len(seq):] = seq
        valid[i, length - len(seq):] = True
        loss_mask[i, window - len(x.completion_ids):] = 1.0 if x.targets is None \
            else np.asarray(x.targets, dtype=np.float32)
    return tokens, valid, loss_mask
