"""Continuous batching on the llama.cpp engine (tiny GGUF): a request joins the running
batch between two decode steps and is answered as soon as its rows end; rows decoded
together equal the same request alone; freed sequences and KV cells are reused; the
server uses it for an engine that has ``open_batch``."""

from __future__ import annotations

import threading

import pytest

from bigthoughts.inference import llama_lib

if not llama_lib.available():
    pytest.skip("needs the llamacpp extra", allow_module_level=True)

from bigthoughts.inference.llamacpp import LlamaCppEngine  # noqa: E402
from bigthoughts.models.limits import GenerationLimitError  # noqa: E402
from bigthoughts.serve.batcher import ContinuousBatcher, make_batcher  # noqa: E402
from tests.tiny_gguf import tiny_model_and_gguf  # noqa: E402


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    _, _, _, path = tiny_model_and_gguf(tmp_path_factory.mktemp("gguf"))
    engine = LlamaCppEngine(path, threads=1)
    yield engine
    engine.close()


A = dict(temperatures=[0.0, 0.7, 1.0], num_samples=3, max_new_tokens=16, seed=5,
         stop_at_eos=False)
B = dict(temperatures=[0.0, 0.9], num_samples=1, max_new_tokens=4, seed=9, stop_at_eos=False)


def _ids(gens):
    return [g.token_ids for g in gens]


def test_a_request_joins_mid_decode_and_leaves_when_done(engine):
    alone_a = engine.generate(["abc"], **A)
    alone_b = engine.generate(["hello,world", "xyz"], **B)
    batch = engine.open_batch(n_seq=8, n_ctx=1024)
    try:
        first = batch.add(["abc"], **A)
        done = {}
        for step in range(1, 40):
            if step == 5:  # request B arrives while A decodes
                second = batch.add(["hello,world", "xyz"], **B)
                assert second is not None and batch.live == 2
            for ticket, gens in batch.step():
                done[ticket] = (step, gens)
            if len(done) == 2:
                break
        assert done[second][0] < done[first][0]  # B ended first, without waiting for A
        assert _ids(done[first][1]) == _ids(alone_a)  # sampled rows too: same seeds, same
        assert _ids(done[second][1]) == _ids(alone_b)  # draws as each request alone
        assert batch.live == 0 and batch._used_cells == 0 and sorted(batch._free) == list(
            range(8))
    finally:
        batch.close()


def test_a_request_waits_for_room_and_one_that_never_fits_is_refused(engine):
    batch = engine.open_batch(n_seq=4, n_ctx=512)
    try:
        first = batch.add(["abc"], **A)  # 3 of 4 sequences
        assert batch.add(["hello,world", "xyz"], **B) is None  # needs 2: not now
        with pytest.raises(GenerationLimitError, match="exceeds the running batch"):
            batch.add(["a", "b", "c", "d", "e"], temperatures=0.0, max_new_tokens=4)
        while not any(t is first for t, _ in batch.step()):
            pass
        later = batch.add(["hello,world", "xyz"], **B)  # the freed sequences are reused
        assert later is not None
        while not batch.step():
            pass
    finally:
        batch.close()


def test_the_server_batches_llamacpp_continuously():
    """The real 270M GGUF behind the HTTP server: 4 concurrent requests of different
    lengths, each with its own token budget, start the way they would alone (llama.cpp's
    kernels are not batch-invariant: a near-tie late in a text may break either way, so
    the exact-equality check is on the tiny model above)."""
    from bigthoughts.models.resolve import gguf_source
    from tests.serve_helpers import running, tiny_config

    real = LlamaCppEngine(gguf_source(None)[0], threads=2)
    try:
        assert isinstance(make_batcher(real), ContinuousBatcher)
        questions = ["What is 2 + 3?", "Tom has 4 apples and eats 1. How many are left?",
                     "What is 10 times 7?", "Half of 18 is?"]
        out: dict[int, tuple[str, int]] = {}
        with running(real, tiny_config(max_batch_rows=16)) as (client, raw, _):
            def ask(i: int) -> None:
                reply = client.completions.create(model="tiny", prompt=questions[i],
                                                  max_tokens=4 + 4 * i, temperature=0.0)
                out[i] = (reply.choices[0].text, reply.usage.completion_tokens)

            threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=300)
            health = raw.get("/health").json()
        assert sorted(out) == [0, 1, 2, 3] and health["jobs"] == 4
        for i, (text, used) in out.items():
            [alone] = real.generate([questions[i]], temperatures=0.0,
                                    max_new_tokens=4 + 4 * i)
            assert used <= 4 + 4 * i and text[:6] == alone.text[:6] != ""
    finally:
        real.close()


def test_a_prompt_prefix_in_the_cache_is_shared_not_recomputed(engine):
    """A request whose prompt starts like a live one's (or like the last finished one's,
    kept by the holder sequence) copies those cells and prefills only the rest; its
    rows are what the request alone gives."""
    head = "solve-the-math-word-problem;think-step-by-step:"  # 47 byte tokens
    first, second, third = head + "abc", head + "xyz", head + "q"
    C = dict(B, temperatures=[0.0, 0.9], num_samples=2)  # one prompt, two rows
    alone = {p: engine.generate([p], **C) for p in (first, second, third)}
    batch = engine.open_batch(n_seq=8, n_ctx=2048)
    try:
        t1 = batch.add([first], **C)
        assert batch.shared_tokens == 0
        t2 = batch.add([second], **C)  # while the first is live
        assert batch.shared_tokens == len(head) + 1  # BOS + head
        done = {}
        while len(done) < 2:
            done.update(batch.step())
        t3 = batch.add([third], **C)  # both finished: the holder keeps the last prompt
        assert batch.shared_tokens == 2 * (len(head) + 1)
        while t3 not in done:
            done.update(batch.step())
        for ticket, prompt in ((t1, first), (t2, second), (t3, third)):
            assert _ids(done[ticket]) == _ids(alone[prompt])
    finally:
        batch.close()


def test_a_long_prompt_is_prefilled_along_the_steps_while_others_decode(engine, monkeypatch):
    """A prompt longer than one prefill chunk is fed a chunk per step inside the running
    rows' decodes: the request already running gains a token every one of those steps,
    and both requests equal their standalone outputs (a multi-prompt request too)."""
    import bigthoughts.inference.llamacpp_batch as lb

    monkeypatch.setattr(lb, "_BATCH", 8)  # the long prompts below take 5-6 chunks
    long = dict(temperatures=[0.0, 0.8, 0.5, 1.0], num_samples=2, max_new_tokens=6, seed=3,
                stop_at_eos=False)
    prompts = ["the quick brown fox jumps over it", "a lazy dog sleeps all day long, yes"]
    # byte fallback spells each space in 3 tokens: more tokens than bytes + 8, the
    # tokenizer's first guess of the buffer it needs (it asks llama.cpp again)
    assert len(engine.tokenize(prompts[1], add_bos=True)) > len(prompts[1]) + 8
    alone_a = engine.generate(["abc"], **A)
    alone_long = engine.generate(prompts, **long)  # itself prefilled along its steps
    batch = engine.open_batch(n_seq=8, n_ctx=1024)
    try:
        first = batch.add(["abc"], **A)
        batch.step()
        second = batch.add(prompts, **long)
        assert second is not None and second.filling  # nothing of it decoded yet
        row = first.rows[0]
        done, steps_filling = {}, 0
        for _ in range(60):
            before, filling = len(row.ids), bool(second.filling)
            for ticket, gens in batch.step():
                done[ticket] = gens
            if filling:
                steps_filling += 1
                assert len(row.ids) == before + 1  # the running request was not held up
            if len(done) == 2:
                break
        assert steps_filling >= 8  # two prompts of 5-6 chunks each
        assert _ids(done[first]) == _ids(alone_a)
        assert _ids(done[second]) == _ids(alone_long)
    finally:
        batch.close()
