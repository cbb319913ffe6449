"""Sampler tests on tiny random Gemma models (fast suite)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigthoughts.inference.jax_sampler import Sampler
from tests.tiny import tiny_model

PROMPTS = ["abc", "hello world, a longer prompt"]


@pytest.fixture(scope="module", params=["gemma3", "gemma2"])
def tiny(request):
    model, tok = tiny_model(request.param)
    return model, tok, Sampler(model, tok, chunk=4)


def full_forward_logprobs(model, ids):
    n = len(ids)
    logits, _ = model(jnp.asarray([ids]), jnp.arange(n)[None], None,
                      jnp.tril(jnp.ones((1, n, n), dtype=bool)))
    return np.asarray(jax.nn.log_softmax(logits[0].astype(jnp.float32), axis=-1))


def test_greedy_equals_stepwise_argmax_and_logprobs_match(tiny):
    model, tok, sampler = tiny
    outs = sampler.generate(PROMPTS, temperatures=0.0, max_new_tokens=10)
    for prompt, out in zip(PROMPTS, outs, strict=True):
        ids = tok.encode(prompt, add_bos=True)
        expected, expected_lp = [], []
        for _ in range(out.num_tokens):
            lp = full_forward_logprobs(model, ids + expected)[-1]
            expected.append(int(np.argmax(lp)))
            expected_lp.append(float(lp[expected[-1]]))
            if expected[-1] == tok.eos_id():
                break
        assert list(out.token_ids) == expected
        np.testing.assert_allclose(out.logprobs, expected_lp, atol=2e-4)
        assert out.prompt_tokens == len(ids)


def test_sampled_logprobs_are_model_log_softmax(tiny):
    model, tok, sampler = tiny
    out = sampler.generate(["xyz"], temperatures=1.0, max_new_tokens=8, seed=3)[0]
    ids = tok.encode("xyz", add_bos=True) + list(out.token_ids)
    lp = full_forward_logprobs(model, ids)
    start = len(ids) - out.num_tokens
    want = [lp[start - 1 + i, t] for i, t in enumerate(out.token_ids)]
    np.testing.assert_allclose(out.logprobs, want, atol=2e-4)


def test_per_row_temperatures_and_seeds(tiny):
    _, _, sampler = tiny
    temps = [0.0, 1.5, 1.5]
    a = sampler.generate(["q"], temperatures=temps, num_samples=3, max_new_tokens=12, seed=1)
    b = sampler.generate(["q"], temperatures=temps, num_samples=3, max_new_tokens=12, seed=2)
    c = sampler.generate(["q"], temperatures=temps, num_samples=3, max_new_tokens=12, seed=1)
    greedy = sampler.generate(["q"], temperatures=0.0, max_new_tokens=12)[0]
    assert a[0].token_ids == b[0].token_ids == greedy.token_ids  # temperature 0: greedy
    assert [x.token_ids for x in a] == [x.token_ids for x in c]  # same seed: same draws
    assert a[1].token_ids != b[1].token_ids or a[2].token_ids != b[2].token_ids
    assert a[1].token_ids != a[2].token_ids  # rows draw independently
    assert [x.temperature for x in a] == temps


def test_shared_prefill_equals_separate_prompts(tiny):
    _, _, sampler = tiny
    temps = [0.3, 0.9, 1.2]
    shared = sampler.generate(["same"], temperatures=temps, num_samples=3, max_new_tokens=9, seed=5)
    separate = sampler.generate(["same"] * 3, temperatures=temps, max_new_tokens=9, seed=5)
    assert [s.token_ids for s in shared] == [s.token_ids for s in separate]


def test_compaction_does_not_change_results(tiny):
    model, tok, _ = tiny
    prompts = ["a", "bb", "ccc", "dddd", "eeeee"]
    text = Sampler(model, tok, chunk=4).generate(prompts, temperatures=0.0, max_new_tokens=12)
    stops = [t.text[2:4] for t in text[:3]]  # make some rows stop early
    fast = Sampler(model, tok, chunk=4).generate(prompts, temperatures=0.8, seed=7,
                                                 max_new_tokens=16, stop=stops)
    slow = Sampler(model, tok, chunk=4, compact=False).generate(
        prompts, temperatures=0.8, seed=7, max_new_tokens=16, stop=stops)
    assert [f.token_ids for f in fast] == [s.token_ids for s in slow]
    assert [f.text for f in fast] == [s.text for s in slow]


def test_stop_strings_cut_exactly(tiny):
    _, tok, sampler = tiny
    full = sampler.generate(["stop me"], temperatures=0.0, max_new_tokens=16)[0]
    assert full.finish_reason in ("length", "eos") and len(full.text) >= 6
    marker = full.text[3:5]
    first = full.text.find(marker)
    cut = sampler.generate(["stop me"], temperatures=0.0, max_new_tokens=16, stop=[marker])[0]
    assert cut.text == full.text[:first] and cut.finish_reason == "stop"
    kept = sampler.generate(["stop me"], temperatures=0.0, max_new_tokens=16,
                            stop_inclusive=[marker])[0]
    assert kept.text == full.text[: first + len(marker)]
    assert tok.decode(kept.token_ids).startswith(kept.text)
    assert kept.token_ids == full.token_ids[: kept.num_tokens]


def test_max_new_tokens_and_bad_arguments(tiny):
    _, _, sampler = tiny
    out = sampler.generate(["abc"], temperatures=1.0, max_new_tokens=5, seed=0)[0]
    assert out.num_tokens <= 5
    with pytest.raises(ValueError, match="temperatures"):
        sampler.generate(["a", "b"], temperatures=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=">= 0"):
        sampler.generate(["a"], temperatures=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        sampler.generate(["a"], top_p=1.5)


def test_top_k_one_is_greedy(tiny):
    _, _, sampler = tiny
    greedy = sampler.generate(["top"], temperatures=0.0, max_new_tokens=8)[0]
    topk = sampler.generate(["top"], temperatures=1.0, top_k=1, max_new_tokens=8, seed=9)[0]
    assert greedy.token_ids == topk.token_ids


# --- the calculator inside the decode ---------------------------------------------------

def table_calculator(table):
    return lambda expr: table.get(expr.strip())


def greedy_continuation(model, ids, n, eos):
    """Greedy tokens after ``ids`` by full forward passes (no cache): the reference."""
    out = []
    for _ in range(n):
        nxt = int(np.argmax(full_forward_logprobs(model, ids + out)[-1]))
        out.append(nxt)
        if nxt == eos:
            break
    return out


def test_prompt_call_is_answered_before_sampling(tiny):
    model, tok, sampler = tiny
    calc = table_calculator({"12*7": "84"})
    out = sampler.generate(["Q: <<12*7="], temperatures=0.0, max_new_tokens=10,
                           calculator=calc)[0]
    n_ins = len(tok.encode("84>>"))
    assert out.text.startswith("84>>")
    assert out.inserted[:n_ins] == (True,) * n_ins and not any(out.inserted[n_ins:])
    assert out.logprobs[:n_ins] == (0.0,) * n_ins
    if not sampler.slot_positions:  # then the sampled rest is the model's greedy choice
        ids = tok.encode("Q: <<12*7=", add_bos=True) + list(out.token_ids[:n_ins])
        rest = greedy_continuation(model, ids, out.num_tokens - n_ins, tok.eos_id())
        assert list(out.token_ids[n_ins:]) == rest


def test_call_written_mid_decode_rewinds_the_row(tiny):
    """The first insertion writes a new call "<<7=", which the decode loop must catch:
    it drops the tail sampled after "=", masks those cache slots and inserts "42>>"."""
    model, tok, sampler = tiny
    calc = table_calculator({"a": "<<7=", "7": "42"})
    prompts = ["go <<a=", "plain prompt"]
    outs = sampler.generate(prompts, temperatures=0.0, max_new_tokens=24, calculator=calc)
    plain = sampler.generate(prompts[1:], temperatures=0.0, max_new_tokens=24)[0]
    assert outs[1].token_ids == plain.token_ids  # other rows are untouched
    assert outs[0].text.startswith("<<7=42>>")
    head = len(tok.encode("<<7=")) + len(tok.encode("42>>"))
    assert all(outs[0].inserted[:head]) and not any(outs[0].inserted[head:])
    if not sampler.slot_positions:
        ids = tok.encode(prompts[0], add_bos=True) + list(outs[0].token_ids[:head])
        rest = greedy_continuation(model, ids, outs[0].num_tokens - head, tok.eos_id())
        assert list(outs[0].token_ids[head:]) == rest


def test_unknown_expression_inserts_nothing(tiny):
    _, _, sampler = tiny
    off = sampler.generate(["x <<9**9**9="], temperatures=0.0, max_new_tokens=12)[0]
    on = sampler.generate(["x <<9**9**9="], temperatures=0.0, max_new_tokens=12,
                          calculator=table_calculator({}))[0]
    assert on.token_ids == off.token_ids and not any(on.inserted)


def test_calculator_rows_sampled_with_others(tiny):
    """k samples of one prompt all get the prompt's result; seeds stay per row."""
    _, tok, sampler = tiny
    calc = table_calculator({"2+3": "5"})
    outs = sampler.generate(["s <<2+3="], temperatures=[0.0, 1.0, 1.0], num_samples=3,
                            max_new_tokens=10, seed=4, calculator=calc)
    assert all(o.text.startswith("5>>") for o in outs)
    assert all(o.num_tokens <= 10 for o in outs)


def test_cancelled_rows_end_early_and_leave_the_others_unchanged(tiny):
    _, _, sampler = tiny
    prompts = ["one", "two", "three"]
    plain = sampler.generate(prompts, temperatures=0.7, max_new_tokens=20, seed=2,
                             stop_at_eos=False)
    asked = []

    def cancelled(row):
        asked.append(row)
        return row == 1

    outs = sampler.generate(prompts, temperatures=0.7, max_new_tokens=20, seed=2,
                            stop_at_eos=False, cancelled=cancelled)
    assert outs[1].finish_reason == "cancelled"
    assert outs[1].num_tokens == sampler.chunk  # ended after its first chunk
    assert outs[1].token_ids == plain[1].token_ids[: sampler.chunk]
    assert [outs[i].token_ids for i in (0, 2)] == [plain[i].token_ids for i in (0, 2)]
    assert 1 in asked and asked.count(1) == 1  # a cancelled row is not asked again
