"""Every bad input gets a 4xx OpenAI-style JSON error, and the server keeps serving."""

import openai
import pytest

from bigthoughts.serve.schema import Limits, parse_request
from tests.serve_helpers import TINY_LIMITS, ScriptedEngine, running

USER = [{"role": "user", "content": "What is 2 + 2?"}]


class NoCalculatorEngine(ScriptedEngine):
    """A scripted engine whose generate() lacks the calculator keyword."""

    def generate(self, prompts, *, temperatures, num_samples, max_new_tokens, stop,
                 stop_inclusive, seed, top_k=None, top_p=None):
        return super().generate(prompts, temperatures=temperatures, num_samples=num_samples,
                                max_new_tokens=max_new_tokens, stop=stop,
                                stop_inclusive=stop_inclusive, seed=seed)


@pytest.fixture(scope="module")
def server():
    engine = NoCalculatorEngine(["<answer>4</answer>"])
    with running(engine) as (client, raw, _):
        yield client, raw, engine


def chat(**fields):
    return {"model": "tiny", "messages": USER, **fields}


# (body, status, param, code); the bytes/JSON bodies go to /v1/chat/completions
BAD_CHAT = [
    (b"{not json", 400, None, "invalid_json"),
    (b"[1, 2]", 422, None, "invalid_type"),
    ({"model": "tiny"}, 400, "messages", "missing_field"),
    (chat(messages="hi"), 422, "messages", "invalid_type"),
    (chat(messages=[{"role": "wizard", "content": "x"}]), 400, "messages[0].role",
     "invalid_value"),
    (chat(messages=[{"role": "user", "content": 5}]), 422, "messages[0].content", "invalid_type"),
    (chat(messages=[{"role": "user", "content": "   "}]), 400, "messages", "empty_prompt"),
    (chat(model=3), 422, "model", "invalid_type"),
    (chat(max_tokens="8"), 422, "max_tokens", "invalid_type"),
    (chat(max_tokens=0), 400, "max_tokens", "out_of_range"),
    (chat(max_tokens=TINY_LIMITS.context_length + 1), 400, "max_tokens", "out_of_range"),
    (chat(max_tokens=TINY_LIMITS.context_length - 5), 400, "max_tokens",
     "context_length_exceeded"),
    (chat(temperature="hot"), 422, "temperature", "invalid_type"),
    (chat(temperature=-0.5), 400, "temperature", "out_of_range"),
    (chat(top_p=0), 400, "top_p", "out_of_range"),
    (chat(n=1.5), 422, "n", "invalid_type"),
    (chat(n=0), 400, "n", "out_of_range"),
    (chat(n=TINY_LIMITS.max_n + 1), 400, "n", "out_of_range"),
    (chat(stop=["a", 1]), 422, "stop", "invalid_type"),
    (chat(stop=["a", "b", "c", "d", "e"]), 400, "stop", "out_of_range"),
    (chat(seed="1"), 422, "seed", "invalid_type"),
    (chat(stream="yes"), 422, "stream", "invalid_type"),
    (chat(vote=5), 422, "vote", "invalid_type"),
    (chat(vote={"k": 0}), 400, "vote.k", "out_of_range"),
    (chat(vote={"k": TINY_LIMITS.max_n + 1}), 400, "vote.k", "out_of_range"),
    (chat(vote={"k": "5"}), 422, "vote.k", "invalid_type"),
    (chat(vote={"strategy": "loudest"}), 400, "vote.strategy", "invalid_value"),
    (chat(vote={"k": 3}, n=2), 400, "n", "out_of_range"),
    (chat(calculator="on"), 422, "calculator", "invalid_type"),
    (chat(calculator=True), 400, "calculator", "calculator_unavailable"),
    (chat(messages=[{"role": "user", "content": "x" * 1_000_000}]), 413, None,
     "request_too_large"),
    (b'{"model": "tiny", "messages": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", 400, None,
     "invalid_json"),  # deeper than the JSON parser recurses
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi \\ud800"}]}', 400,
     None, "invalid_unicode"),  # a lone surrogate: no UTF-8 text holds it
]


@pytest.mark.parametrize(("body", "status", "param", "code"), BAD_CHAT,
                         ids=[f"{i}-{c}" for i, (_, _, _, c) in enumerate(BAD_CHAT)])
def test_bad_chat_request_gets_an_openai_error(server, body, status, param, code):
    _, raw, engine = server
    calls_before = len(engine.calls)
    if isinstance(body, bytes):
        r = raw.post("/v1/chat/completions", content=body,
                     headers={"content-type": "application/json"})
    else:
        r = raw.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["code"]) == (param, code)
    assert error["type"] == "invalid_request_error" and error["message"]
    assert len(engine.calls) == calls_before  # nothing reached the engine
    assert raw.get("/health").status_code == 200  # and the server lives on


@pytest.mark.parametrize(("prompt", "status", "code"), [
    ("", 400, "empty_prompt"), ([], 400, "empty_prompt"), (["ok", " "], 400, "empty_prompt"),
    (7, 422, "invalid_type"), ("y" * 1_000_000, 413, "request_too_large")])
def test_bad_completion_prompt(server, prompt, status, code):
    _, raw, _ = server
    r = raw.post("/v1/completions", json={"model": "tiny", "prompt": prompt})
    assert r.status_code == status and r.json()["error"]["code"] == code


def test_openai_client_raises_typed_errors_and_the_server_keeps_serving(server):
    client, raw, engine = server
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=USER,
                                       extra_body={"vote": {"strategy": "loudest"}})
    assert info.value.body["param"] == "vote.strategy"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="tiny", input="x")
    assert raw.get("/v1/chat/completions").status_code == 405
    r = client.chat.completions.create(model="tiny", messages=USER,
                                       extra_body={"vote": {"k": 3}})
    assert r.choices[0].message.content == "4"
    assert engine.calls[-1]["num_samples"] == 3


def test_parse_request_defaults_and_aliases():
    req = parse_request({"messages": USER, "max_completion_tokens": 9}, chat=True,
                        limits=Limits(max_n=4))
    assert (req.max_tokens, req.n, req.temperature, req.top_p, req.stop) == (9, 1, 1.0, None, ())
    assert req.vote is None and not req.stream and req.chat
    req = parse_request({"prompt": ["a", "b"], "n": 2, "stop": "x"}, chat=False,
                        limits=Limits(max_n=4))
    assert req.prompts == ("a", "b") and req.stop == ("x",) and not req.chat


def test_chunked_body_without_length_over_the_limit_is_413(server):
    _, raw, _ = server

    def body():  # no Content-Length: the server counts while it reads
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(TINY_LIMITS.max_request_bytes // 1024 + 2):
            yield b"x" * 1024
        yield b'"}]}'

    r = raw.post("/v1/chat/completions", content=body(),
                 headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert "content-length" not in r.request.headers
