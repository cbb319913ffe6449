"""The server's API key (every route but /health needs `Authorization: Bearer KEY`) and
its model names (a request naming another model is a 404 `model_not_found`)."""

from __future__ import annotations

import pytest

from bigthoughts.serve.handlers import ServeConfig
from tests.serve_helpers import ScriptedEngine, running, tiny_config

BODY = {"model": "tiny", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}


def test_every_route_but_health_needs_the_key():
    config = tiny_config(api_key="s3cret")
    with running(ScriptedEngine(["<answer>4</answer>"]), config) as (_, raw, _app):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            for method, path in (("post", "/v1/chat/completions"), ("get", "/v1/models")):
                got = raw.request(method, path, json=BODY if method == "post" else None,
                                  headers=headers)
                assert got.status_code == 401, (headers, path)
                assert got.json()["error"]["code"] == "invalid_api_key"
        assert raw.get("/health").status_code == 200  # probes need no key
        ok = raw.post("/v1/chat/completions", json=BODY,
                      headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert ok.json()["choices"][0]["message"]["content"] == "<answer>4</answer>"


def test_a_request_for_another_model_is_404_and_aliases_are_listed():
    config = tiny_config(aliases=("tiny-base", "tiny"))
    with running(ScriptedEngine(["<answer>4</answer>"]), config) as (_, raw, _app):
        listed = [m["id"] for m in raw.get("/v1/models").json()["data"]]
        assert listed == ["tiny", "tiny-base"]
        for name in ("../../etc/passwd", "gpt-4"):
            got = raw.post("/v1/chat/completions", json=dict(BODY, model=name))
            assert got.status_code == 404
            assert got.json()["error"]["code"] == "model_not_found"
            assert "tiny, tiny-base" in got.json()["error"]["message"]
        for name in ("tiny", "tiny-base"):
            assert raw.post("/v1/chat/completions", json=dict(BODY, model=name)
                            ).status_code == 200
        unnamed = {k: v for k, v in BODY.items() if k != "model"}
        assert raw.post("/v1/chat/completions", json=unnamed).status_code == 200


def test_an_empty_key_is_refused():
    with pytest.raises(ValueError, match="must not be empty"):
        ServeConfig(api_key="  ")
