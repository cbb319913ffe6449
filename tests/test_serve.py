"""The server's endpoints with the real `openai` client (tiny model; scripted engines)."""

import math

import pytest

from bigthoughts.data import (
    ANSWER_STOP,
    FEWSHOT_STOP,
    SYSTEM_PROMPT,
    build_prompt,
    chat_prompt,
    chat_template,
)
from bigthoughts.inference.jax_sampler import Sampler
from bigthoughts.inference.solve import Solver
from bigthoughts.inference.voting import VoteConfig, ladder
from bigthoughts.serve.handlers import Plan
from bigthoughts.serve.schema import parse_request
from tests.serve_helpers import TINY_LIMITS, ScriptedEngine, running, tiny_config
from tests.tiny import tiny_model

Q = "Tom has 3 apples and buys 4 more. How many?"


@pytest.fixture(scope="module")
def tiny():
    model, tok = tiny_model()
    sampler = Sampler(model, tok, chunk=4)
    with running(sampler) as (client, raw, app):
        yield sampler, client, raw, app


def test_chat_completion_is_the_greedy_sampler_output(tiny):
    sampler, client, _, _ = tiny
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": Q}],
                                       temperature=0, max_tokens=8)
    [want] = sampler.generate([build_prompt(Q, "zeroshot")], temperatures=0.0, max_new_tokens=8,
                              stop=[FEWSHOT_STOP], stop_inclusive=[ANSWER_STOP])
    assert r.object == "chat.completion" and r.model == "tiny"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want.text
    assert r.choices[0].finish_reason == ("length" if want.finish_reason == "length" else "stop")
    assert r.usage.prompt_tokens == want.prompt_tokens
    assert r.usage.completion_tokens == want.num_tokens
    assert r.usage.total_tokens == want.prompt_tokens + want.num_tokens


def test_completions_n_samples_and_stream_match_non_streamed(tiny):
    sampler, client, _, _ = tiny
    r = client.completions.create(model="tiny", prompt="abc", max_tokens=6, n=2,
                                  temperature=0.9, seed=3)
    want = sampler.generate(["abc"], temperatures=0.9, num_samples=2, max_new_tokens=6, seed=3)
    assert [c.text for c in r.choices] == [g.text for g in want]
    assert [c.index for c in r.choices] == [0, 1]
    stream = client.completions.create(model="tiny", prompt="abc", max_tokens=6, n=2,
                                       temperature=0.9, seed=3, stream=True,
                                       stream_options={"include_usage": True})
    texts, reasons, usage = ["", ""], [None, None], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            texts[c.index] += c.text
            reasons[c.index] = c.finish_reason or reasons[c.index]
    assert texts == [g.text for g in want]
    assert reasons == [c.finish_reason for c in r.choices]
    assert usage.completion_tokens == sum(g.num_tokens for g in want)


def test_chat_stream_chunks_rebuild_the_message(tiny):
    _, client, _, _ = tiny
    messages = [{"role": "user", "content": Q}]
    whole = client.chat.completions.create(model="tiny", messages=messages, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages,
                                                 temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_vote_on_tiny_model_equals_solver_with_same_seed(tiny):
    sampler, client, _, _ = tiny
    r = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": Q}], max_tokens=8, seed=4,
        extra_body={"vote": {"k": 3, "strategy": "majority"}})
    solver = Solver(sampler, style="zeroshot",
                    vote=VoteConfig(votes=3, temperatures=ladder(3), max_new_tokens=8), seed=4)
    [want] = solver.solve([Q])
    extra = r.model_extra["bigthoughts"]
    assert [t["text"] for t in extra["traces"]] == [g.text for g in want.generations]
    assert [t["temperature"] for t in extra["traces"]] == list(ladder(3))
    assert extra["votes"] == want.vote.counts
    assert extra["answer"] == want.vote.answer
    assert r.choices[0].message.content == (want.vote.answer or "")


def test_models_and_health(tiny):
    _, client, raw, _ = tiny
    assert [m.id for m in client.models.list()] == ["tiny"]
    health = raw.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"


VOTE_TEXTS = ["<answer>7</answer>", "<answer>5</answer>", "<answer>7</answer>", "no idea",
              "<answer>7.0</answer>"]


def _vote(strategy, texts=VOTE_TEXTS, **extra):
    engine = ScriptedEngine(texts)
    with running(engine, tiny_config()) as (client, _, _):
        r = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": Q}],
            extra_body={"vote": {"k": 5, "strategy": strategy}, **extra})
    return r, r.model_extra["bigthoughts"], engine


def test_majority_vote_returns_the_voted_answer_and_votes():
    r, extra, engine = _vote("majority")
    assert r.choices[0].message.content == "7"
    assert extra["votes"] == {"7": 3, "5": 1}
    assert extra["agreement"] == pytest.approx(3 / 4)
    assert [t["answer"] for t in extra["traces"]] == ["7", "5", "7", None, "7"]
    assert len(engine.calls) == 1 and engine.calls[0]["num_samples"] == 5
    assert engine.calls[0]["temperatures"] == list(ladder(5))
    assert engine.calls[0]["prompts"] == [build_prompt(Q, "zeroshot")]
    assert engine.calls[0]["calculator"] is False
    assert r.usage.completion_tokens == 15


def test_weighted_vote_agreement_is_the_weight_share():
    # row n has mean log-prob -0.1 (n + 1); weights exp(mean - best): rows 0, 2, 4 vote 7
    _, extra, _ = _vote("weighted")
    w = [math.exp(-0.1 * n) for n in range(5)]
    assert extra["answer"] == "7"
    assert extra["agreement"] == pytest.approx((w[0] + w[2] + w[4]) / (w[0] + w[1] + w[2] + w[4]))


def test_adaptive_vote_stops_early_and_passes_the_calculator_flag():
    # 7, 7 (no decision: 2 > 0 + 3 fails), then 7: 3 > 0 + 2 -> stop after 3 of 5 samples
    _, extra, engine = _vote("adaptive", ["<answer>7</answer>"] * 3 + ["<answer>5</answer>"] * 2,
                             calculator=True)
    assert extra["answer"] == "7" and extra["votes_used"] == 3
    assert [c["num_samples"] * len(c["prompts"]) for c in engine.calls] == [2, 1]
    assert all(c["calculator"] is True for c in engine.calls)


def test_gemma_chat_template_matches_the_chat_prompt_of_ask():
    q = "What is 2 + 2?"
    assert chat_template([("system", SYSTEM_PROMPT), ("user", q)]) == chat_prompt(q)
    turns = chat_template([("user", "a"), ("assistant", "b"), ("user", "c")])
    assert turns == ("<start_of_turn>user\na<end_of_turn>\n<start_of_turn>model\nb<end_of_turn>\n"
                     "<start_of_turn>user\nc<end_of_turn>\n<start_of_turn>model\n")


def test_instruction_tuned_plan_uses_the_template_and_base_plan_the_last_question():
    body = {"messages": [{"role": "user", "content": "first"},
                         {"role": "assistant", "content": "x"},
                         {"role": "user", "content": [{"type": "text", "text": Q}]}],
            "stop": "END"}
    req = parse_request(body, chat=True, limits=TINY_LIMITS)
    chat = Plan(req, tiny_config(prompt_style="chat"))
    assert chat.prompts == [chat_template(req.messages)]
    assert chat.stop == ["<end_of_turn>", "END"] and chat.stop_inclusive == []
    base = Plan(req, tiny_config(prompt_style="fewshot", shots=2))
    assert base.prompts == [build_prompt(Q, "fewshot", shots=2)]
    assert base.stop == [FEWSHOT_STOP, "END"] and base.stop_inclusive == [ANSWER_STOP]
