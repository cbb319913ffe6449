"""A long prompt prefilled in chunks against the KV cache (``jax_sampler``) gives the
same logits, cache and generations as one prefill of the whole prompt, on both model
families, with sliding-window layers whose window (8) is far shorter than the prompt."""

from __future__ import annotations

import numpy as np
import pytest

import bigthoughts.inference.prefill as prefill
from bigthoughts.inference.jax_sampler import Sampler, left_pad
from tests.tiny import tiny_model

PROMPTS = ["The quick brown fox jumps over the lazy dog; " * 3,  # 135 bytes
           "Seven boxes of eggs hold 12 eggs each."]


@pytest.mark.parametrize("family", ["gemma3", "gemma2"])
def test_chunked_prefill_equals_one_prefill(family, monkeypatch):
    model, tok = tiny_model(family, seed=3)
    sampler = Sampler(model, tok)
    encoded = [tok.encode(p, add_bos=True) for p in PROMPTS]
    tokens, valid = left_pad(encoded, 192, tok.pad_id())
    whole = sampler._prefill(sampler.state, tokens, valid, 192 + 32)
    monkeypatch.setattr(prefill, "PREFILL_CHUNK", 32)  # 6 chunks, 5 past slot 0
    chunked = sampler._prefill(sampler.state, tokens, valid, 192 + 32)
    np.testing.assert_allclose(np.asarray(chunked[0]), np.asarray(whole[0]), atol=2e-5)
    np.testing.assert_array_equal(np.asarray(chunked[2]), np.asarray(whole[2]))
    for name, layer in whole[1].items():
        for key in ("k", "v"):
            got, want = np.asarray(chunked[1][name][key]), np.asarray(layer[key])
            np.testing.assert_allclose(got[valid.nonzero()], want[valid.nonzero()], atol=2e-5)
        np.testing.assert_array_equal(np.asarray(chunked[1][name]["end_index"]),
                                      np.asarray(layer["end_index"]))


def test_chunked_generation_equals_one_prefill(monkeypatch):
    model, tok = tiny_model("gemma3", seed=3)
    args = dict(temperatures=[0.0, 0.0, 0.8, 0.8], num_samples=2, max_new_tokens=24, seed=5)
    whole = Sampler(model, tok).generate(PROMPTS, **args)
    monkeypatch.setattr(prefill, "PREFILL_CHUNK", 64)
    chunked = Sampler(model, tok).generate(PROMPTS, **args)
    for a, b in zip(whole, chunked, strict=True):
        assert a.token_ids == b.token_ids and a.text == b.text
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)
    assert len({g.token_ids for g in whole}) > 1  # the rows differ: a real comparison


def test_the_lowered_program_of_a_long_prompt_is_one_chunks(monkeypatch):
    """AOT memory analysis lowers what runs: for a prompt over the chunk, one chunk's
    program (2 rows x 32 queries against the whole cache), not the whole prompt's."""
    model, tok = tiny_model("gemma3", seed=3)
    sampler = Sampler(model, tok)
    tokens, valid = np.zeros((2, 192), np.int32), np.ones((2, 192), bool)
    whole = sampler._prefill.lower(sampler.state, tokens, valid, cache_size=224).as_text()
    monkeypatch.setattr(prefill, "PREFILL_CHUNK", 32)
    chunk = sampler._prefill.lower(sampler.state, tokens, valid, cache_size=224).as_text()
    assert "tensor<2x192xi32>" in whole and "tensor<2x192xi32>" not in chunk
    assert "tensor<2x32xi32>" in chunk
