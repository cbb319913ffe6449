"""The acceptance call on the embedded Gemma 3 270M: a stock OpenAI client gets a vote."""

from collections import Counter

import pytest

from bigthoughts.answers import extract_answer
from bigthoughts.inference.jax_sampler import Sampler
from bigthoughts.inference.voting import DEFAULT_LADDER
from bigthoughts.serve.app import create_app, serving
from bigthoughts.serve.handlers import ServeConfig

QUESTION = "Tom has 3 apples and buys 4 more apples. How many apples does Tom have now?"


@pytest.mark.real
def test_openai_client_gets_the_voted_answer_with_its_votes(real_model):
    import openai

    spec = real_model.spec
    app = create_app(Sampler(real_model.model, real_model.tokenizer),
                     ServeConfig(model_id=spec.name, prompt_style=spec.prompt_style))
    with serving(app, host="127.0.0.1") as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=900)
        r = client.chat.completions.create(
            model=spec.name, messages=[{"role": "user", "content": QUESTION}], max_tokens=64,
            extra_body={"vote": {"k": 5}})
    extra = r.model_extra["bigthoughts"]
    traces = extra["traces"]
    assert [t["temperature"] for t in traces] == list(DEFAULT_LADDER)
    assert all(0 < t["tokens"] <= 64 for t in traces)
    answers = [extract_answer(t["text"]) for t in traces]  # recount from the raw traces
    assert [t["answer"] for t in traces] == answers
    counts = Counter(a for a in answers if a is not None)
    assert extra["votes"] == dict(counts)
    if counts:
        top = max(counts.values())
        assert counts[extra["answer"]] == top
        assert extra["agreement"] == pytest.approx(top / sum(counts.values()))
        assert r.choices[0].message.content == extra["answer"]
    else:
        assert extra["answer"] is None and r.choices[0].message.content == ""
    assert r.usage.completion_tokens == sum(t["tokens"] for t in traces)
    assert r.choices[0].finish_reason == "stop"
