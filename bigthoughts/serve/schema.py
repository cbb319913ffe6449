"""Request parsing and validation for the OpenAI-compatible endpoints.

Requests are read as raw bytes and validated by hand (not by FastAPI's pydantic
layer) so that every mistake becomes one OpenAI-style error body naming the
offending field, ``{"error": {"message", "type", "param", "code"}}``, with status
400 (bad value), 413 (body too large) or 422 (well-formed JSON of the wrong shape).
Fields clients send that we do not use (``frequency_penalty``, ``user``, ...) are
ignored, as the OpenAI server ignores unknown fields.

The consensus extension rides in the body (``extra_body`` of the OpenAI client)::

    {"vote": {"k": 5, "strategy": "majority|weighted|adaptive"}, "calculator": true}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from bigthoughts.inference.voting import STRATEGIES
from bigthoughts.models.limits import DEFAULT_MAX_PROMPT_TOKENS

MAX_STOP_STRINGS = 4  # as the OpenAI API
CHAT_ROLES = ("system", "developer", "user", "assistant")


class APIError(Exception):
    """An error answered as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, type_: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What a request may ask for.

    ``max_n`` bounds ``n`` and the vote's k (samples per question); ``context_length``
    bounds prompt tokens + ``max_tokens``; ``max_prompt_tokens`` the prompt alone
    (``--max-prompt-tokens``); ``max_request_bytes`` bounds the body.
    """

    max_n: int = 16
    context_length: int = 32768
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS
    default_max_tokens: int = 256
    max_request_bytes: int = 256 * 1024

    def __post_init__(self) -> None:
        for name in ("max_n", "context_length", "max_prompt_tokens", "default_max_tokens",
                     "max_request_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True, kw_only=True)
class Vote:
    """The consensus extension: k samples (k in the paper's self-consistency) and a strategy."""

    k: int = 5
    strategy: str = "majority"

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown vote strategy {self.strategy!r}")


@dataclass(frozen=True, kw_only=True)
class CompletionRequest:
    """A validated request to either endpoint.

    ``messages`` is set for chat (role, text) pairs, ``prompts`` for completions.
    """

    model: str | None
    messages: tuple[tuple[str, str], ...] = ()
    prompts: tuple[str, ...] = ()
    max_tokens: int
    temperature: float
    top_p: float | None
    n: int
    stop: tuple[str, ...]
    seed: int | None
    stream: bool
    include_usage: bool
    vote: Vote | None
    calculator: bool

    @property
    def chat(self) -> bool:
        return bool(self.messages)


def read_json(body: bytes, limits: Limits) -> dict[str, Any]:
    """The request body as a JSON object, or an APIError (413 / 400 / 422)."""
    if len(body) > limits.max_request_bytes:
        raise APIError(413, f"request body is {len(body)} bytes; the limit is "
                            f"{limits.max_request_bytes}", code="request_too_large")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise APIError(400, f"malformed JSON body: {exc}", code="invalid_json") from None
    except RecursionError:
        raise APIError(400, "malformed JSON body: nested too deeply",
                       code="invalid_json") from None
    try:  # JSON may spell a lone UTF-16 surrogate ("\ud800"), which no text can hold
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(400, "the body holds a lone UTF-16 surrogate (\\ud800-\\udfff "
                            "without its pair): not valid Unicode text",
                       code="invalid_unicode") from None
    except RecursionError:
        raise APIError(400, "malformed JSON body: nested too deeply",
                       code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(422, "the request body must be a JSON object", code="invalid_type")
    return data


def _type_error(param: str, expected: str, value: Any) -> APIError:
    return APIError(422, f"{param} must be {expected}, got {type(value).__name__} "
                         f"{json.dumps(value)[:80]}", param=param, code="invalid_type")


def _get_int(data: dict, name: str, default: int | None, lo: int, hi: int,
             *, param: str | None = None) -> int | None:
    value, param = data.get(name), param or name
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(param, "an integer", value)
    if not lo <= value <= hi:
        raise APIError(400, f"{param} must be between {lo} and {hi}, got {value}", param=param,
                       code="out_of_range")
    return value


def _get_float(data: dict, name: str, default: float | None, lo: float, hi: float,
               *, open_lo: bool = False) -> float | None:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _type_error(name, "a number", value)
    if not math.isfinite(value) or value < lo or value > hi or (open_lo and value == lo):
        bounds = f"({lo}, {hi}]" if open_lo else f"[{lo}, {hi}]"
        raise APIError(400, f"{name} must be in {bounds}, got {value}", param=name,
                       code="out_of_range")
    return float(value)


def _get_bool(data: dict, name: str, default: bool) -> bool:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _type_error(name, "a boolean", value)
    return value


def _stop(data: dict) -> tuple[str, ...]:
    value = data.get("stop")
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise _type_error("stop", "a string or a list of strings", value)
    if len(items) > MAX_STOP_STRINGS or any(not s for s in items):
        raise APIError(400, f"stop takes 1 to {MAX_STOP_STRINGS} non-empty strings",
                       param="stop", code="out_of_range")
    return tuple(items)


def _vote(data: dict, limits: Limits) -> Vote | None:
    value = data.get("vote")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _type_error("vote", "an object like {\"k\": 5, \"strategy\": \"majority\"}", value)
    k = _get_int(value, "k", 5, 1, limits.max_n, param="vote.k")
    strategy = value.get("strategy", "majority")
    if not isinstance(strategy, str):
        raise _type_error("vote.strategy", "a string", strategy)
    if strategy not in STRATEGIES:
        raise APIError(400, f"unknown vote strategy {strategy!r}; valid strategies: "
                            f"{', '.join(STRATEGIES)}", param="vote.strategy",
                       code="invalid_value")
    return Vote(k=k, strategy=strategy)


def _message_text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": "..."}, ...]
        if all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
               for p in content):
            return "".join(p["text"] for p in content)
    raise _type_error(param, "a string or a list of text parts", content)


def _messages(data: dict) -> tuple[tuple[str, str], ...]:
    value = data.get("messages")
    if value is None:
        raise APIError(400, "messages is required", param="messages", code="missing_field")
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise _type_error("messages", "a list of message objects", value)
    out = []
    for i, m in enumerate(value):
        role = m.get("role")
        if role not in CHAT_ROLES:
            raise APIError(400, f"messages[{i}].role must be one of {', '.join(CHAT_ROLES)}, "
                                f"got {role!r}", param=f"messages[{i}].role",
                           code="invalid_value")
        out.append((role, _message_text(m.get("content"), f"messages[{i}].content")))
    if not any(role == "user" and text.strip() for role, text in out):
        raise APIError(400, "the prompt is empty: no user message with text", param="messages",
                       code="empty_prompt")
    return tuple(out)


def _prompts(data: dict) -> tuple[str, ...]:
    value = data.get("prompt")
    if value is None:
        raise APIError(400, "prompt is required", param="prompt", code="missing_field")
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(p, str) for p in items):
        raise _type_error("prompt", "a string or a list of strings", value)
    if not items or any(not p.strip() for p in items):
        raise APIError(400, "the prompt is empty", param="prompt", code="empty_prompt")
    return tuple(items)


def parse_request(data: dict[str, Any], *, chat: bool, limits: Limits,
                  calculator: bool = False) -> CompletionRequest:
    """Validates a decoded body for ``/v1/chat/completions`` (chat) or ``/v1/completions``;
    ``calculator`` is the server's default for requests that do not say."""
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise _type_error("model", "a string", model)
    max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
    max_tokens = _get_int({"max_tokens": max_tokens}, "max_tokens", limits.default_max_tokens,
                          1, limits.context_length)
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _type_error("stream_options", "an object", options)
    vote = _vote(data, limits)
    n = _get_int(data, "n", 1, 1, limits.max_n)
    if vote is not None and n != 1:
        raise APIError(400, "a vote answers with one choice: n must be 1", param="n",
                       code="out_of_range")
    req = CompletionRequest(
        model=model,
        messages=_messages(data) if chat else (),
        prompts=() if chat else _prompts(data),
        max_tokens=max_tokens,
        temperature=_get_float(data, "temperature", 1.0, 0.0, 2.0),
        top_p=_get_float(data, "top_p", None, 0.0, 1.0, open_lo=True),
        n=n,
        stop=_stop(data),
        seed=_get_int(data, "seed", None, -(2**63), 2**63 - 1),
        stream=_get_bool(data, "stream", False),
        include_usage=_get_bool(options or {}, "include_usage", False),
        vote=vote,
        calculator=_get_bool(data, "calculator", calculator),
    )
    if len(req.prompts) * n > limits.max_n:
        raise APIError(400, f"prompts x n must be at most {limits.max_n}", param="n",
                       code="out_of_range")
    return req
