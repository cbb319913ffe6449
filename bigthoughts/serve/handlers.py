"""What a validated request asks of the engine: prompts, stops, a vote.

Prompts follow the model kind (``ServeConfig.prompt_style``):

* instruction-tuned models (``"chat"``): chat messages go through the Gemma chat
  template (system/developer text leads the first user turn, as Gemma has no system
  role) and generation stops at ``<end_of_turn>``;
* base models (``"fewshot"``/``"zeroshot"``, the embedded default): the last user
  message is a GSM8K question, prompted as ``bigthoughts ask`` does
  (:func:`bigthoughts.data.build_prompt`), stopping at the next ``Question:`` or
  after ``</answer>``.

``/v1/completions`` sends its prompt as is. A vote (any endpoint) takes the question
(the last user message, or the prompt) to :class:`bigthoughts.inference.solve.Solver`, which
builds the prompt, draws the temperature ladder and decides; its engine here is a
:class:`RequestEngine` that turns each draw into a batcher job, so votes batch with
other requests too. Request ``temperature``/``top_p``/``stop`` do not apply to a
vote (the ladder and the prompt style's stops do).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bigthoughts.answers import extract_answer
from bigthoughts.data import CHAT_STOP, build_prompt, chat_template, prompt_format
from bigthoughts.inference.contract import SEED_MAX
from bigthoughts.inference.solve import Solution, Solver
from bigthoughts.inference.voting import VoteConfig, ladder
from bigthoughts.serve.batcher import Batcher, GenerationSettings, Job, takes_keyword
from bigthoughts.serve.schema import APIError, CompletionRequest, Limits


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """How the server prompts, batches and bounds requests.

    ``max_batch_rows`` bounds the rows (prompts x samples) of one engine call;
    ``queue_size`` bounds the jobs waiting for the engine (more: 503);
    ``batch_wait_s`` is how long a free engine waits for concurrent arrivals;
    ``pad_batches`` rounds a batch's prompt count up to a power of two (JAX engines:
    fewer shapes to compile).
    """

    model_id: str = "gemma3-270m"
    prompt_style: str = "fewshot"
    shots: int = 2
    limits: Limits = field(default_factory=Limits)
    max_batch_rows: int = 32
    queue_size: int = 64
    batch_wait_s: float = 0.05
    pad_batches: bool = False
    calculator: bool = False  # for requests that do not say (the shipped model's setting)
    aliases: tuple[str, ...] = ()  # other names a request's `model` may use (/v1/models)
    api_key: str | None = None  # every route but /health then needs `Bearer KEY`
    request_timeout_s: float = 600.0  # a request running longer is stopped: 504

    @property
    def model_names(self) -> tuple[str, ...]:
        return (self.model_id, *(a for a in self.aliases if a != self.model_id))

    def __post_init__(self) -> None:
        build_prompt("?", self.prompt_style, shots=self.shots)  # ValueError: bad style/shots
        if self.max_batch_rows < self.limits.max_n:
            raise ValueError(f"max_batch_rows ({self.max_batch_rows}) must be >= "
                             f"limits.max_n ({self.limits.max_n}): one request must fit a batch")
        if self.queue_size < 1 or self.batch_wait_s < 0:
            raise ValueError("queue_size must be >= 1 and batch_wait_s >= 0")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("the API key must not be empty")
        if not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")


@dataclass(frozen=True)
class Result:
    """What a request got: one (text, OpenAI finish_reason) per choice, usage, extras."""

    choices: tuple[tuple[str, str], ...]
    prompt_tokens: int
    completion_tokens: int
    extra: dict[str, Any]


def accepts_calculator(engine) -> bool:
    """Whether ``engine.generate`` takes the ``calculator`` keyword."""
    return takes_keyword(engine.generate, "calculator")


def last_question(req: CompletionRequest) -> str:
    if req.chat:
        return next(t for r, t in reversed(req.messages) if r == "user" and t.strip())
    return req.prompts[0]


def finish_reason(reason: str) -> str:
    """The engine's eos/stop/length as OpenAI's stop/length."""
    return "length" if reason == "length" else "stop"


class RequestEngine:
    """The engine one request sees: each ``generate`` call is a batcher job of its own.

    Solver calls it from the request's thread; the call blocks until the batch that
    took the job is done. ``cancel()`` (the client left) drops queued jobs.
    """

    def __init__(self, batcher: Batcher, *, calculator: bool = False):
        self.batcher = batcher
        self.calculator = calculator
        self.cancelled = threading.Event()
        self.jobs: list[Job] = []

    def generate(self, prompts, *, temperatures, num_samples: int = 1, max_new_tokens: int,
                 stop=(), stop_inclusive=(), seed: int = 0, top_k=None, top_p=None):
        rows = len(prompts) * num_samples
        temps = [float(temperatures)] * rows if isinstance(temperatures, int | float) \
            else list(temperatures)
        settings = GenerationSettings(
            max_new_tokens=max_new_tokens, stop=tuple(stop), stop_inclusive=tuple(stop_inclusive),
            seed=seed & SEED_MAX, top_k=top_k, top_p=top_p, calculator=self.calculator)
        job = self.batcher.submit(prompts, temperatures=temps, num_samples=num_samples,
                                  settings=settings, cancelled=self.cancelled)
        self.jobs.append(job)
        return job.future.result()

    def cancel(self) -> None:
        self.cancelled.set()
        for job in list(self.jobs):
            self.batcher.cancel(job)


class Plan:
    """A validated request turned into prompts; :meth:`run` executes it (blocking)."""

    def __init__(self, req: CompletionRequest, config: ServeConfig,
                 count: Callable[[str], int] | None = None):
        self.req = req
        self.config = config
        self.count = count  # a prompt's tokens by the engine's tokenizer
        fmt = prompt_format(config.prompt_style, config.shots)
        stop, inclusive = list(req.stop), []
        if req.vote is not None:
            prompts = [fmt.prompt(last_question(req))]
        elif not req.chat:
            prompts = list(req.prompts)
        elif fmt.style == "chat":  # the conversation as sent, to the end of the model's turn
            prompts, stop = [chat_template(req.messages)], [CHAT_STOP, *stop]
        else:  # a GSM8K question, prompted as `ask` does
            prompts = [fmt.prompt(last_question(req))]
            stop, inclusive = [*fmt.stop, *stop], list(fmt.stop_inclusive)
        self.prompts, self.stop, self.stop_inclusive = prompts, stop, inclusive
        self._check_context()

    def _count(self, prompt: str) -> int:
        if self.count is None:  # an engine without a tokenizer: bytes bound tokens
            return len(prompt.encode()) + 1
        return self.count(prompt)

    def _check_context(self) -> None:
        limits = self.config.limits
        limit = limits.context_length
        longest = max(self._count(p) for p in self.prompts)
        param = "messages" if self.req.chat else "prompt"
        if longest > limits.max_prompt_tokens:
            raise APIError(400, f"the prompt has {longest} tokens, more than the "
                                f"{limits.max_prompt_tokens} this server accepts",
                           param=param, code="context_length_exceeded")
        if longest + self.req.max_tokens > limit:
            if longest < limit:
                param = "max_tokens"
            raise APIError(400, f"the prompt ({longest} tokens) plus max_tokens "
                                f"({self.req.max_tokens}) exceed the model's context of "
                                f"{limit} tokens", param=param, code="context_length_exceeded")

    def run(self, engine: RequestEngine) -> Result:
        return self._vote(engine) if self.req.vote is not None else self._sample(engine)

    def _sample(self, engine: RequestEngine) -> Result:
        req = self.req
        gens = engine.generate(
            self.prompts, temperatures=req.temperature, num_samples=req.n,
            max_new_tokens=req.max_tokens, stop=self.stop, stop_inclusive=self.stop_inclusive,
            seed=req.seed or 0, top_p=req.top_p)
        return Result(
            choices=tuple((g.text, finish_reason(g.finish_reason)) for g in gens),
            prompt_tokens=sum(g.prompt_tokens for g in gens[::req.n]),
            completion_tokens=sum(g.num_tokens for g in gens),
            extra={"answers": [extract_answer(g.text) for g in gens]})

    def _vote(self, engine: RequestEngine) -> Result:
        req, vote = self.req, self.req.vote
        config = VoteConfig(votes=vote.k, temperatures=ladder(vote.k), strategy=vote.strategy,
                            max_new_tokens=req.max_tokens)
        solver = Solver(engine, style=self.config.prompt_style, shots=self.config.shots,
                        vote=config, seed=(req.seed or 0) & SEED_MAX)
        [solution] = solver.solve([last_question(req)])
        return vote_result(solution, vote.strategy)


def vote_result(solution: Solution, strategy: str) -> Result:
    """The voted answer as the message; agreement, votes and traces as extras."""
    vote, gens = solution.vote, solution.generations
    traces = [{"text": g.text, "answer": s.answer, "temperature": g.temperature,
               "tokens": g.num_tokens, "logprob": g.logprob,
               "finish_reason": finish_reason(g.finish_reason)}
              for g, s in zip(gens, solution.samples, strict=True)]
    extra = {"answer": vote.answer, "agreement": vote.agreement, "votes": vote.counts,
             "samples": len(gens), "votes_used": vote.votes_used, "strategy": strategy,
             "traces": traces}
    return Result(choices=((vote.answer or "", "stop"),),
                  prompt_tokens=gens[0].prompt_tokens if gens else 0,
                  completion_tokens=sum(g.num_tokens for g in gens), extra=extra)
