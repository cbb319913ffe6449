"""Concurrent requests share engine calls; full queue -> 503; gone clients are dropped."""

import threading

import httpx
import openai
import pytest

from bigthoughts.data import ANSWER_STOP, FEWSHOT_STOP, build_prompt
from bigthoughts.inference.jax_sampler import Sampler
from bigthoughts.serve.batcher import Batcher, GenerationSettings, QueueFull, takes_keyword
from tests.serve_helpers import GatedEngine, ScriptedEngine, running, tiny_config, wait_for
from tests.tiny import tiny_model

QUESTIONS = [f"Question number {i}: what is {i} + {i}?" for i in range(5)]


@pytest.fixture(scope="module")
def sampler():
    model, tok = tiny_model()
    return Sampler(model, tok, chunk=4)


def _ask(client, question, results, index, **kwargs):
    try:
        results[index] = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": question}], temperature=0,
            max_tokens=8, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        results[index] = exc


def _start(client, question, results, index, **kwargs):
    thread = threading.Thread(target=_ask, args=(client, question, results, index),
                              kwargs=kwargs)
    thread.start()
    return thread


def test_requests_arriving_during_a_decode_share_the_next_engine_call(sampler):
    engine = GatedEngine(sampler)
    engine.gate.clear()
    with running(engine) as (client, raw, _):
        results = [None] * 5
        threads = [_start(client, QUESTIONS[0], results, 0)]
        assert engine.entered.wait(timeout=60)
        threads += [_start(client, q, results, i) for i, q in enumerate(QUESTIONS[1:], 1)]
        wait_for(lambda: raw.get("/health").json()["queued"] == 4, "4 queued requests")
        engine.gate.set()
        for t in threads:
            t.join(timeout=120)
        health = raw.get("/health").json()
    assert len(engine.calls) == 2 < len(QUESTIONS)  # 5 requests, 2 engine calls
    assert sorted(engine.calls[1]) == [build_prompt(q, "zeroshot") for q in QUESTIONS[1:]]
    assert health["engine_calls"] == 2 and health["jobs"] == 5 and health["largest_batch"] == 4
    for question, result in zip(QUESTIONS, results, strict=True):
        [alone] = sampler.generate([build_prompt(question, "zeroshot")], temperatures=0.0,
                                   max_new_tokens=8, stop=[FEWSHOT_STOP],
                                   stop_inclusive=[ANSWER_STOP])
        assert result.choices[0].message.content == alone.text  # batching changes nothing


def test_full_queue_answers_503_with_retry_after(sampler):
    engine = GatedEngine(sampler)
    engine.gate.clear()
    with running(engine, tiny_config(queue_size=1)) as (client, raw, _):
        results = [None] * 2
        threads = [_start(client, QUESTIONS[0], results, 0)]
        assert engine.entered.wait(timeout=60)
        threads.append(_start(client, QUESTIONS[1], results, 1))
        wait_for(lambda: raw.get("/health").json()["queued"] == 1, "1 queued request")
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": QUESTIONS[2]}])
        engine.gate.set()
        for t in threads:
            t.join(timeout=120)
        after = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": QUESTIONS[2]}], max_tokens=8)
    assert info.value.status_code == 503
    assert info.value.response.headers["retry-after"] == "1"
    assert info.value.body["type"] == "server_error" and info.value.body["code"] == "overloaded"
    assert all(isinstance(r, openai.types.chat.ChatCompletion) for r in results)
    assert after.choices[0].message.content is not None


def test_client_gone_before_its_batch_starts_is_never_generated(sampler):
    engine = GatedEngine(sampler)
    engine.gate.clear()
    with running(engine) as (client, raw, _):
        results = [None]
        thread = _start(client, QUESTIONS[0], results, 0)
        assert engine.entered.wait(timeout=60)
        body = {"model": "tiny", "messages": [{"role": "user", "content": "GONE " + QUESTIONS[1]}]}
        with pytest.raises(httpx.TimeoutException):
            raw.post("/v1/chat/completions", json=body, timeout=0.5)
        wait_for(lambda: raw.get("/health").json()["dropped"] == 1, "the dropped request")
        engine.gate.set()
        thread.join(timeout=120)
        later = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": QUESTIONS[2]}], max_tokens=8)
        assert raw.get("/health").json()["queued"] == 0
    assert not any("GONE" in p for call in engine.calls for p in call)
    assert len(engine.calls) == 2  # the first request and the later one
    assert later.choices[0].message.content is not None


def test_engine_failure_is_a_500_and_the_server_keeps_serving(sampler):
    engine = GatedEngine(sampler)
    with running(engine) as (client, _, _):
        with pytest.raises(openai.InternalServerError) as info:
            client.completions.create(model="tiny", prompt="FAIL please", max_tokens=4)
        ok = client.completions.create(model="tiny", prompt="abc", max_tokens=4)
    assert info.value.status_code == 500
    assert info.value.body["type"] == "server_error"
    assert "engine exploded" in info.value.body["message"]
    assert ok.choices[0].finish_reason in ("stop", "length")


SETTINGS = GenerationSettings(max_new_tokens=4)


def test_batcher_groups_by_settings_mixes_k_and_bounds_rows():
    engine = ScriptedEngine(["a", "b", "c", "d", "e", "f", "g", "h"])
    batcher = Batcher(engine, max_batch_rows=4, queue_size=3)
    other = GenerationSettings(max_new_tokens=4, stop=("X",))
    jobs = [batcher.submit(["p"], temperatures=[0.1, 0.2], num_samples=2, settings=SETTINGS),
            batcher.submit(["q"], temperatures=[0.3], num_samples=1, settings=other),
            batcher.submit(["r"], temperatures=[0.4], num_samples=1, settings=SETTINGS)]
    with pytest.raises(QueueFull):
        batcher.submit(["s"], temperatures=[0.5], num_samples=1, settings=SETTINGS)
    with pytest.raises(ValueError):
        batcher.submit(["t"] * 5, temperatures=[0.0] * 5, num_samples=1, settings=SETTINGS)
    batcher.start()
    outs = [j.future.result(timeout=30) for j in jobs]
    batcher.stop()
    # call 1: p (k=2) with r (k=1) flattened to one row per sample; call 2: q alone
    assert [c["prompts"] for c in engine.calls] == [["p", "p", "r"], ["q"]]
    assert engine.calls[0]["num_samples"] == 1
    assert engine.calls[0]["temperatures"] == [0.1, 0.2, 0.4]
    assert engine.calls[1]["stop"] == ["X"]
    assert [[g.text for g in o] for o in outs] == [["a", "b"], ["d"], ["c"]]
    assert batcher.stats.engine_calls == 2 and batcher.stats.jobs == 3


def test_batcher_keeps_shared_prefill_when_k_agrees_and_drops_cancelled_jobs():
    engine = ScriptedEngine(["x"])
    batcher = Batcher(engine, max_batch_rows=8, queue_size=8)
    a = batcher.submit(["a"], temperatures=[0.2, 0.6], num_samples=2, settings=SETTINGS)
    gone = batcher.submit(["gone"], temperatures=[0.2, 0.6], num_samples=2, settings=SETTINGS)
    b = batcher.submit(["b"], temperatures=[0.2, 0.6], num_samples=2, settings=SETTINGS)
    batcher.cancel(gone)
    batcher.start()
    a.future.result(timeout=30), b.future.result(timeout=30)
    batcher.stop()
    assert engine.calls[0]["prompts"] == ["a", "b"] and engine.calls[0]["num_samples"] == 2
    assert len(engine.calls) == 1 and batcher.stats.dropped == 1
    assert gone.future.exception() is not None


def test_batcher_gathers_a_burst_of_arrivals_into_one_call():
    engine = ScriptedEngine(["x"])
    batcher = Batcher(engine, max_batch_rows=8, queue_size=8, batch_wait_s=2.0)
    batcher.start()
    jobs = []
    for prompt in ("a", "b", "c"):  # 0.05 s apart: well inside the 2 s gather window
        jobs.append(batcher.submit([prompt], temperatures=[0.0], num_samples=1,
                                   settings=SETTINGS))
        threading.Event().wait(0.05)
    for job in jobs:
        job.future.result(timeout=60)
    batcher.stop()
    assert [c["prompts"] for c in engine.calls] == [["a", "b", "c"]]


def test_padding_rounds_prompts_up_to_a_power_of_two_within_the_row_cap():
    engine = ScriptedEngine(["a", "b", "c", "d", "e", "f", "g", "h"])
    batcher = Batcher(engine, max_batch_rows=6, queue_size=8, pad_to_pow2=True)
    three = [batcher.submit([p], temperatures=[0.5], num_samples=1, settings=SETTINGS)
             for p in ("p", "q", "r")]
    batcher.start()
    outs = [j.future.result(timeout=30) for j in three]
    k2 = [batcher.submit([p], temperatures=[0.1, 0.9], num_samples=2, settings=SETTINGS)
          for p in ("s", "t", "u")]
    [j.future.result(timeout=30) for j in k2]
    batcher.stop()
    # 3 prompts -> 4 (the last repeated, its rows dropped); 3 prompts x 2 = 6 rows: the cap
    assert engine.calls[0]["prompts"] == ["p", "q", "r", "r"]
    assert engine.calls[0]["temperatures"] == [0.5] * 4
    assert [[g.text for g in o] for o in outs] == [["a"], ["b"], ["c"]]
    assert engine.calls[1]["prompts"] == ["s", "t", "u"]
    assert batcher.stats.rows == 3 + 6


class AskingEngine:
    """Holds its call at a gate, then asks ``cancelled`` about every row it was given."""

    def __init__(self):
        self.entered, self.gate, self.answers = threading.Event(), threading.Event(), []

    def generate(self, prompts, *, temperatures, num_samples, cancelled=None, **kwargs):
        self.entered.set()
        assert self.gate.wait(timeout=60)
        rows = len(prompts) * num_samples
        self.answers = [cancelled(r) for r in range(rows)]
        return [ScriptedEngine(["x"]).generate([p], temperatures=[0.0], num_samples=1, stop=[],
                                               stop_inclusive=[], seed=0, max_new_tokens=4)[0]
                for p in prompts for _ in range(num_samples)]


def test_a_client_leaving_mid_generation_cancels_only_its_rows():
    engine = AskingEngine()
    batcher = Batcher(engine, max_batch_rows=8, queue_size=8, batch_wait_s=0.5)
    leaving = batcher.submit(["a"], temperatures=[0.2, 0.6], num_samples=2, settings=SETTINGS)
    staying = batcher.submit(["b"], temperatures=[0.2, 0.6], num_samples=2, settings=SETTINGS)
    batcher.start()
    assert engine.entered.wait(timeout=30)
    batcher.cancel(leaving)  # the batch has started: only the engine can drop its rows
    engine.gate.set()
    assert len(staying.future.result(timeout=30)) == 2
    batcher.stop()
    assert engine.answers == [True, True, False, False]
    assert takes_keyword(engine.generate, "cancelled")
    assert not takes_keyword(ScriptedEngine(["x"]).generate, "cancelled")


class SlowAdmissionEngine:
    """An engine with ``open_batch`` whose ``add`` (the prefill) waits at a gate: a job can
    be cancelled by its handler while the worker admits it."""

    def __init__(self):
        self.adding, self.gate = threading.Event(), threading.Event()
        self.dropped = []

    def open_batch(self, *, n_seq, n_ctx):
        engine = self

        class Running:
            def __init__(self):
                self.tickets = []

            def add(self, prompts, **kwargs):
                if "slow" in prompts[0]:
                    engine.adding.set()
                    assert engine.gate.wait(30)
                ticket = object()
                self.tickets.append((ticket, list(prompts)))
                return ticket

            def step(self):
                done, self.tickets = self.tickets, []
                from bigthoughts.inference.contract import Generation
                return [(t, [Generation(text=p.upper(), token_ids=(1,), logprobs=(0.0,),
                                        finish_reason="stop", prompt_tokens=1,
                                        temperature=0.0) for p in ps]) for t, ps in done]

            def drop(self, ticket):
                engine.dropped.append(ticket)
                self.tickets = [(t, p) for t, p in self.tickets if t is not ticket]

            def close(self):
                pass

        return Running()


def test_a_job_cancelled_while_admitted_leaves_the_worker_alive():
    """The handler's timeout or a hang-up can cancel a job while the worker is inside
    its prefill: the job ends once, its rows are dropped, and the worker serves on (it
    once died of a second set_exception on the same future)."""
    from bigthoughts.serve.batcher import Cancelled, ContinuousBatcher

    engine = SlowAdmissionEngine()
    batcher = ContinuousBatcher(engine, max_batch_rows=4, queue_size=4, batch_wait_s=0.0)
    batcher.start()
    try:
        slow = batcher.submit(["slow one"], temperatures=[0.0], num_samples=1,
                              settings=SETTINGS)
        assert engine.adding.wait(30)
        batcher.cancel(slow)  # still in the queue: its future ends here
        engine.gate.set()
        with pytest.raises(Cancelled):
            slow.future.result(timeout=30)
        fast = batcher.submit(["next"], temperatures=[0.0], num_samples=1, settings=SETTINGS)
        assert [g.text for g in fast.future.result(timeout=30)] == ["NEXT"]
        assert len(engine.dropped) == 1  # the cancelled job's rows left the batch
    finally:
        batcher.stop()
