"""Questions -> prompts -> sampled traces -> extracted answers -> a vote.

The one path shared by ``bigthoughts ask`` and ``bigthoughts eval``. A k-vote for a
batch of questions is ONE generation call: each prompt is prefilled once and its
cache repeated for the k samples, whose temperatures (the ladder) are per-row.

Adaptive voting draws in rounds: ``min_samples`` first, then one more sample per
question that is still open, until the stopping rule settles it (or ``votes`` is
reached). Later rounds re-prefill their prompt; that costs one prompt pass per
round, which is why the fixed k-vote remains the default.

Example::

    solver = Solver(Sampler(lm.model, lm.tokenizer), format=prompt_format("fewshot"))
    [solution] = solver.solve(["Tom has 3 apples and buys 4 more. How many?"])
    solution.vote.answer, solution.vote.agreement
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from bigthoughts.answers import extract_answer
from bigthoughts.data import PromptFormat, prompt_format
from bigthoughts.inference.contract import Engine, Generation
from bigthoughts.inference.voting import (
    AdaptiveMajority,
    Sample,
    VoteConfig,
    VoteResult,
    get_strategy,
)


@dataclass(frozen=True)
class Solution:
    """A question's traces and the vote over them."""

    question: str
    prompt: str
    generations: tuple[Generation, ...]
    vote: VoteResult
    seconds: float  # wall time attributed to this question (batch time / batch size)

    @property
    def samples(self) -> tuple[Sample, ...]:
        return tuple(to_sample(g) for g in self.generations)


def to_sample(gen: Generation) -> Sample:
    return Sample(text=gen.text, answer=extract_answer(gen.text), temperature=gen.temperature,
                  logprob=gen.logprob, num_tokens=gen.num_tokens)


class Solver:
    """Answers questions with a sampler, a :class:`~bigthoughts.data.PromptFormat` and a
    vote configuration.

    ``format`` defaults to ``prompt_format(style, shots)`` (``style`` "fewshot"): the
    format owns both the prompt text and the stop strings.
    """

    def __init__(self, sampler: Engine, *, format: PromptFormat | None = None,
                 style: str = "fewshot", shots: int = 2, vote: VoteConfig | None = None,
                 seed: int = 0, calculator: bool = False):
        self.sampler = sampler
        self.calculator = calculator
        self.format = format if format is not None else prompt_format(style, shots)
        self.vote = vote or VoteConfig()
        self.strategy = get_strategy(self.vote.strategy, **(
            {"max_samples": self.vote.votes, "min_samples": min(2, self.vote.votes)}
            if self.vote.strategy == "adaptive" else {}))
        self.seed = seed

    @property
    def style(self) -> str:
        return self.format.style

    def prompt(self, question: str) -> str:
        return self.format.prompt(question)

    def _draw(self, prompts: Sequence[str], temps: Sequence[Sequence[float]], seed: int):
        """One generation call: ``len(temps[i])`` samples for prompt i (all the same k)."""
        k = len(temps[0])
        flat = [t for row in temps for t in row]
        gens = self.sampler.generate(
            list(prompts), temperatures=flat, num_samples=k,
            max_new_tokens=self.vote.max_new_tokens, stop=list(self.format.stop),
            stop_inclusive=list(self.format.stop_inclusive), seed=seed,
            **({"calculator": True} if self.calculator else {}),
        )
        return [gens[i * k:(i + 1) * k] for i in range(len(prompts))]

    def solve(self, questions: Sequence[str], *, seed: int | None = None) -> list[Solution]:
        """Answers a batch of questions (one generation call, or rounds if adaptive)."""
        if not questions:
            return []
        seed = self.seed if seed is None else seed
        prompts = [self.prompt(q) for q in questions]
        schedule = self.vote.schedule()
        start = time.perf_counter()
        if isinstance(self.strategy, AdaptiveMajority):
            drawn = self._solve_adaptive(prompts, schedule, seed)
        else:
            drawn = self._draw(prompts, [schedule] * len(prompts), seed)
        per_question = (time.perf_counter() - start) / len(questions)
        return [
            Solution(question=q, prompt=p, generations=tuple(g),
                     vote=self.strategy.decide([to_sample(x) for x in g]),
                     seconds=per_question)
            for q, p, g in zip(questions, prompts, drawn, strict=True)
        ]

    def _solve_adaptive(self, prompts, schedule, seed):
        stop = self.strategy.stop
        first = schedule[: stop.min_samples]
        drawn = self._draw(prompts, [first] * len(prompts), seed)
        for round_ in range(1, len(schedule) - stop.min_samples + 1):
            open_ = [i for i, g in enumerate(drawn)
                     if not self.strategy.should_stop([to_sample(x) for x in g])]
            if not open_:
                break
            index = stop.min_samples + round_ - 1
            more = self._draw([prompts[i] for i in open_], [[schedule[index]]] * len(open_),
                              seed + 7919 * round_)
            for i, extra in zip(open_, more, strict=True):
                drawn[i] = list(drawn[i]) + list(extra)
        return drawn
