"""The llama.cpp engine on tiny GGUF files, checked against our JAX model of the same
weights (full-sequence forward, no cache) and the JAX sampler's semantics. Tolerance
5e-3 on log-probs: llama.cpp keeps its KV cache in float16."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigthoughts.inference import llama_lib

if not llama_lib.available():
    pytest.skip("needs the llamacpp extra", allow_module_level=True)

from bigthoughts.inference.jax_sampler import Sampler  # noqa: E402
from bigthoughts.inference.llamacpp import LlamaCppEngine, LlamaCppError  # noqa: E402
from tests.tiny_gguf import tiny_model_and_gguf  # noqa: E402

PROMPTS = ["abc", "hello,world;a-longer-prompt"]  # no spaces: the byte vocabulary has no "▁"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny")
    model, tok, base, path = tiny_model_and_gguf(tmp)
    engine = LlamaCppEngine(path, threads=1)
    yield model, tok, base, engine, tmp
    engine.close()


def log_softmax_rows(model, ids):
    """[len(ids), vocab] log-probs of the next token after each prefix."""
    n = len(ids)
    logits, _ = model(jnp.asarray([ids]), jnp.arange(n)[None], None,
                      jnp.tril(jnp.ones((1, n, n), dtype=bool)))
    return np.asarray(jax.nn.log_softmax(logits[0].astype(jnp.float32), axis=-1))


def test_tokenizer_and_prompt_logits_match_jax(tiny):
    model, tok, _, engine, _ = tiny
    for prompt in PROMPTS:
        ids = tok.encode(prompt, add_bos=True)
        assert engine.tokenize(prompt, add_bos=True) == ids
        want = log_softmax_rows(model, ids)[-1]
        got = engine.prompt_logits(prompt)
        got = got - np.log(np.exp(got - got.max()).sum()) - got.max()
        np.testing.assert_allclose(got, want, atol=5e-3)


def test_greedy_matches_jax_sampler_tokens_and_logprobs(tiny):
    model, tok, _, engine, _ = tiny
    got = engine.generate(PROMPTS, temperatures=0.0, max_new_tokens=12)
    want = Sampler(model, tok, chunk=4).generate(PROMPTS, temperatures=0.0, max_new_tokens=12)
    for g, w in zip(got, want, strict=True):
        assert g.token_ids == w.token_ids and g.finish_reason == w.finish_reason
        assert g.prompt_tokens == w.prompt_tokens and g.text == w.text
        np.testing.assert_allclose(g.logprobs, w.logprobs, atol=5e-3)


def test_sampled_rows_report_the_models_log_softmax(tiny):
    model, tok, _, engine, _ = tiny
    outs = engine.generate(["xyz"], temperatures=[1.0, 1.5], num_samples=2, max_new_tokens=8,
                           seed=3)
    for out in outs:
        ids = tok.encode("xyz", add_bos=True) + list(out.token_ids)
        lp = log_softmax_rows(model, ids)
        start = len(ids) - out.num_tokens
        want = [lp[start - 1 + i, t] for i, t in enumerate(out.token_ids)]
        np.testing.assert_allclose(out.logprobs, want, atol=5e-3)


def test_shared_prefill_rows_equal_separate_calls_and_seeds_repeat(tiny):
    _, _, _, engine, _ = tiny
    temps = [0.0, 1.5, 1.5, 0.0, 1.5, 1.5]
    both = engine.generate(PROMPTS, temperatures=temps, num_samples=3, max_new_tokens=10, seed=1)
    again = engine.generate(PROMPTS, temperatures=temps, num_samples=3, max_new_tokens=10, seed=1)
    other = engine.generate(PROMPTS, temperatures=temps, num_samples=3, max_new_tokens=10, seed=2)
    assert [g.token_ids for g in both] == [g.token_ids for g in again]
    assert [g.token_ids for g in both] != [g.token_ids for g in other]
    assert [g.temperature for g in both] == temps
    for p, prompt in enumerate(PROMPTS):
        [greedy] = engine.generate([prompt], temperatures=0.0, max_new_tokens=10)
        assert both[3 * p].token_ids == greedy.token_ids  # the T=0 row of each prompt
        assert both[3 * p].prompt_tokens == greedy.prompt_tokens
    top1 = engine.generate(["abc"], temperatures=1.5, top_k=1, max_new_tokens=10, seed=4)
    assert top1[0].token_ids == both[0].token_ids  # top_k=1 is greedy at any temperature


def test_stop_strings_cut_like_the_jax_sampler(tiny):
    model, tok, _, engine, _ = tiny
    [free] = engine.generate(["abc"], temperatures=0.0, max_new_tokens=16)
    text = free.text
    at = next(i for i, c in enumerate(text) if c != text[0])  # the first new character
    stop = text[at]
    kw = dict(temperatures=0.0, max_new_tokens=16, stop=[stop])
    [cut] = engine.generate(["abc"], **kw)
    [want] = Sampler(model, tok, chunk=4).generate(["abc"], **kw)
    assert (cut.text, cut.token_ids, cut.finish_reason) == (text[:at], want.token_ids, "stop")
    both = text[at - 1:at + 1]  # found first at at-1, kept
    [kept] = engine.generate(["abc"], temperatures=0.0, max_new_tokens=16, stop_inclusive=[both])
    assert kept.text == text[:at + 1] and kept.finish_reason == "stop"
    [short] = engine.generate(["abc"], temperatures=0.0, max_new_tokens=3)
    assert short.token_ids == free.token_ids[:3] and short.finish_reason == "length"


@pytest.fixture
def calculator(monkeypatch):
    """A stand-in for the calculator's evaluator that records its calls."""
    calls = []

    def calculate(expr: str):
        calls.append(expr)
        return {"3*4": "12"}.get(expr)

    monkeypatch.setattr("bigthoughts.arithmetic.calculate", calculate)
    return calls


def test_calculator_inserts_the_result_after_a_prompt_ending_in_an_annotation(tiny, calculator):
    model, tok, _, engine, _ = tiny
    prompt = "x<<3*4="
    [got] = engine.generate([prompt], temperatures=0.0, max_new_tokens=10, calculator=True)
    inserted = tok.encode("12>>")
    assert calculator == ["3*4"]
    assert got.text.startswith("12>>") and got.token_ids[:4] == tuple(inserted)
    assert got.logprobs[:4] == (0.0,) * 4  # the model did not choose these
    [rest] = Sampler(model, tok, chunk=4).generate([prompt + "12>>"], temperatures=0.0,
                                                   max_new_tokens=6)
    assert got.token_ids[4:] == rest.token_ids  # then the model goes on from "12>>"
    [none] = engine.generate(["x<<9/0="], temperatures=0.0, max_new_tokens=4, calculator=True)
    [plain] = engine.generate(["x<<9/0="], temperatures=0.0, max_new_tokens=4)
    assert none.token_ids == plain.token_ids  # calculate() -> None inserts nothing


def test_lora_adapter_and_merged_model_match_the_jax_lora_model(tiny):
    from bigthoughts.models.export import merge_lora
    from bigthoughts.models.gguf_export import write_lora_adapter, write_model_gguf
    from tests.test_gguf_export import with_lora

    model, tok, base, _, tmp = tiny
    lora_model = with_lora(model, rank=4, alpha=8.0, scale=0.3)
    adapter = write_lora_adapter(tmp / "adapter.gguf", lora_model, alpha=8.0, base=base)
    merged = write_model_gguf(tmp / "merged.gguf", merge_lora(lora_model, alpha=8.0, rank=4),
                              model.config, base=base, ftype="f32")
    ids = tok.encode("abc", add_bos=True)
    from bigthoughts.models import forward

    hidden, _ = forward.hidden_states(lora_model, jnp.asarray([ids]), jnp.arange(len(ids))[None],
                                      None, jnp.tril(jnp.ones((1, len(ids), len(ids)), bool)))
    want = np.asarray(forward.logits(lora_model, hidden))[0, -1]
    base_logits = log_softmax_rows(model, ids)[-1]
    assert np.abs(want - want.max() - (base_logits - base_logits.max())).max() > 0.1
    for kwargs in ({"gguf_path": tiny[4] / "tiny-f32.gguf", "lora": adapter},
                   {"gguf_path": merged}):
        engine = LlamaCppEngine(threads=1, **kwargs)
        try:
            np.testing.assert_allclose(engine.prompt_logits("abc"), want, atol=5e-3)
        finally:
            engine.close()


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(LlamaCppError, match="not found"):
        LlamaCppEngine(tmp_path / "none.gguf")
