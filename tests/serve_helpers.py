"""Engines and server fixtures shared by the serve tests (no network beyond 127.0.0.1)."""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import openai

from bigthoughts.inference.contract import Generation
from bigthoughts.serve.app import create_app, serving
from bigthoughts.serve.batcher import takes_keyword
from bigthoughts.serve.handlers import ServeConfig
from bigthoughts.serve.schema import Limits
from tests.tiny import byte_tokenizer

TINY_LIMITS = Limits(max_n=8, context_length=2048, default_max_tokens=8,
                     max_request_bytes=64 * 1024)


def tiny_config(**overrides) -> ServeConfig:
    options = dict(model_id="tiny", prompt_style="zeroshot", limits=TINY_LIMITS,
                   max_batch_rows=16, queue_size=8, batch_wait_s=0.0)
    options.update(overrides)
    return ServeConfig(**options)


class GatedEngine:
    """Wraps an engine: records every call, can hold calls at a gate, fails on "FAIL"."""

    def __init__(self, inner):
        self.inner = inner
        self.tokenizer = inner.tokenizer
        self.calls: list[list[str]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def generate(self, prompts, **kwargs):
        self.calls.append(list(prompts))
        self.entered.set()
        assert self.gate.wait(timeout=120), "the test never opened the gate"
        if any("FAIL" in p for p in prompts):
            raise RuntimeError("engine exploded")
        if not takes_keyword(self.inner.generate, "cancelled"):
            kwargs.pop("cancelled", None)
        return self.inner.generate(prompts, **kwargs)


class ScriptedEngine:
    """Returns scripted texts, the n-th row overall gets ``texts[n % len(texts)]``.

    Row n's tokens each have log-prob ``-0.1 * (n + 1)``; it accepts ``calculator``.
    """

    def __init__(self, texts):
        self.texts = list(texts)
        self.tokenizer = byte_tokenizer()
        self.calls: list[dict] = []
        self.drawn = 0

    def generate(self, prompts, *, temperatures, num_samples, max_new_tokens, stop,
                 stop_inclusive, seed, top_k=None, top_p=None, calculator=False):
        rows = len(prompts) * num_samples
        temps = [float(temperatures)] * rows if isinstance(temperatures, int | float) \
            else list(temperatures)
        self.calls.append(dict(prompts=list(prompts), temperatures=temps,
                               num_samples=num_samples, calculator=calculator, stop=stop,
                               stop_inclusive=stop_inclusive, max_new_tokens=max_new_tokens))
        out = []
        for row in range(rows):
            n = self.drawn
            self.drawn += 1
            out.append(Generation(text=self.texts[n % len(self.texts)], token_ids=(7, 7, 7),
                                  logprobs=(-0.1 * (n + 1),) * 3, finish_reason="stop",
                                  prompt_tokens=11, temperature=temps[row]))
        return out


@contextlib.contextmanager
def running(engine, config: ServeConfig | None = None):
    """(OpenAI client without retries, raw httpx client, app) on a free loopback port."""
    app = create_app(engine, config or tiny_config())
    with serving(app, host="127.0.0.1") as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=120)
        with httpx.Client(base_url=base_url.removesuffix("/v1"), timeout=120) as raw:
            yield client, raw, app


def wait_for(predicate, what: str, timeout_s: float = 60.0) -> None:
    """Polls ``predicate`` (bounded) until it holds."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
