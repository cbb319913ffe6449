"""Response bodies in the OpenAI schema: whole answers and server-sent-event chunks.

Streaming sends the finished text (generation is batched, not token-streamed): a
role chunk, the text in pieces of ``STREAM_PIECE`` characters, a chunk with the
finish reason (and the ``bigthoughts`` extras), a usage chunk when the client asked
for ``stream_options.include_usage``, then ``data: [DONE]``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from bigthoughts.serve.handlers import Result
from bigthoughts.serve.schema import CompletionRequest

STREAM_PIECE = 16
EXTRA_FIELD = "bigthoughts"


def _usage(result: Result) -> dict[str, int]:
    return {"prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


def _header(req: CompletionRequest, model_id: str, *, chunk: bool) -> dict[str, Any]:
    if req.chat:
        kind, prefix = ("chat.completion.chunk" if chunk else "chat.completion"), "chatcmpl"
    else:
        kind, prefix = "text_completion", "cmpl"
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
            "model": model_id}


def completion_body(req: CompletionRequest, result: Result, model_id: str) -> dict[str, Any]:
    """The whole (non-streamed) answer."""
    body = _header(req, model_id, chunk=False)
    if req.chat:
        body["choices"] = [{"index": i, "message": {"role": "assistant", "content": text},
                            "logprobs": None, "finish_reason": reason}
                           for i, (text, reason) in enumerate(result.choices)]
    else:
        body["choices"] = [{"index": i, "text": text, "logprobs": None, "finish_reason": reason}
                           for i, (text, reason) in enumerate(result.choices)]
    body["usage"] = _usage(result)
    body[EXTRA_FIELD] = result.extra
    return body


def _choice(req: CompletionRequest, index: int, text: str | None, reason: str | None,
            *, role: bool = False) -> dict[str, Any]:
    if not req.chat:
        return {"index": index, "text": text or "", "logprobs": None, "finish_reason": reason}
    delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
    if text:
        delta["content"] = text
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def stream_events(req: CompletionRequest, result: Result, model_id: str) -> Iterator[str]:
    """Server-sent events of the finished answer (see the module docstring)."""
    header = _header(req, model_id, chunk=True)
    for index, (text, reason) in enumerate(result.choices):
        if req.chat:
            yield _event({**header, "choices": [_choice(req, index, None, None, role=True)]})
        for at in range(0, len(text), STREAM_PIECE):
            piece = text[at:at + STREAM_PIECE]
            yield _event({**header, "choices": [_choice(req, index, piece, None)]})
        yield _event({**header, "choices": [_choice(req, index, None, reason)],
                      EXTRA_FIELD: result.extra})
    if req.include_usage:
        yield _event({**header, "choices": [], "usage": _usage(result)})
    yield "data: [DONE]\n\n"
