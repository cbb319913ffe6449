"""A prompt over ``--max-prompt-tokens`` is a 400 naming the limit (counted by the
engine's own tokenizer); a request running past ``--request-timeout`` is stopped with a
504; the server then answers normally."""

from __future__ import annotations

import threading
import time

from bigthoughts.serve.schema import Limits
from tests.serve_helpers import TINY_LIMITS, ScriptedEngine, running, tiny_config

LIMITS = Limits(max_n=8, context_length=2048, max_prompt_tokens=40, default_max_tokens=8,
                max_request_bytes=64 * 1024)


def test_a_prompt_over_the_limit_is_refused_with_the_limit():
    engine = ScriptedEngine(["<answer>4</answer>"])  # byte tokenizer: a token per byte + BOS
    with running(engine, tiny_config(limits=LIMITS)) as (_, raw, _):
        ok = raw.post("/v1/completions", json={"prompt": "x" * 39, "max_tokens": 4})
        assert ok.status_code == 200  # 39 bytes + BOS = 40 tokens: at the limit
        long = raw.post("/v1/completions", json={"prompt": "x" * 40, "max_tokens": 4})
        assert long.status_code == 400
        err = long.json()["error"]
        assert err["code"] == "context_length_exceeded" and err["param"] == "prompt"
        assert "41 tokens, more than the 40 this server accepts" in err["message"]
        chat = raw.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "y" * 200}]})
        assert chat.status_code == 400 and chat.json()["error"]["param"] == "messages"
        assert len(engine.calls) == 1  # the refused ones never reached the engine
        assert raw.post("/v1/completions", json={"prompt": "hi"}).status_code == 200


class SlowEngine(ScriptedEngine):
    """Takes ``delay`` seconds for a prompt containing SLOW, unless cancelled first."""

    def __init__(self, texts, delay: float):
        super().__init__(texts)
        self.delay, self.stopped = delay, threading.Event()

    def generate(self, prompts, *, cancelled=None, **kwargs):
        if any("SLOW" in p for p in prompts):
            deadline = time.monotonic() + self.delay
            while time.monotonic() < deadline:
                if cancelled is not None and cancelled(0):
                    self.stopped.set()
                    break
                time.sleep(0.02)
        return super().generate(prompts, **kwargs)


def test_a_request_over_the_time_limit_is_stopped_with_504():
    engine = SlowEngine(["<answer>4</answer>"], delay=30.0)
    config = tiny_config(limits=TINY_LIMITS, request_timeout_s=1.0)
    with running(engine, config) as (_, raw, _):
        start = time.monotonic()
        slow = raw.post("/v1/completions", json={"prompt": "SLOW", "max_tokens": 4})
        assert slow.status_code == 504, slow.text
        assert 1.0 <= time.monotonic() - start < 10.0
        assert slow.json()["error"]["code"] == "timeout"
        assert "limit of 1 s" in slow.json()["error"]["message"]
        assert engine.stopped.wait(5)  # the engine was told to stop its rows
        fast = raw.post("/v1/completions", json={"prompt": "hi", "max_tokens": 4})
        assert fast.status_code == 200 and fast.json()["choices"][0]["text"]
