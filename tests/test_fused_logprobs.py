"""Fused log-probs equal the plain full-vocabulary computation: values, entropy and
gradients (float32, <= 1e-5 relative), with and without Gemma 2's soft-cap, at T != 1,
across row and vocabulary tiles that do not divide the sizes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigthoughts.models.fused_logprobs import fused_logprobs

jax.config.update("jax_enable_x64", False)


def plain(hidden, embedding, targets, softcap, temperature):
    x = hidden @ embedding.T
    if softcap is not None:
        x = jnp.tanh(x / softcap) * softcap
    z = x / temperature if temperature not in (0.0, 1.0) else x
    logp_all = jax.nn.log_softmax(z, axis=-1)
    logp = jnp.take_along_axis(logp_all, targets[:, None], axis=1)[:, 0]
    entropy = -(jnp.exp(logp_all) * logp_all).sum(axis=1)
    return logp, entropy


def float64_truth(hidden, embedding, targets, softcap, temperature):
    """log p(target) and entropy in float64 NumPy: the independent reference."""
    x = np.asarray(hidden, np.float64) @ np.asarray(embedding, np.float64).T
    if softcap is not None:
        x = np.tanh(x / softcap) * softcap
    z = x / temperature if temperature not in (0.0, 1.0) else x
    z = z - z.max(axis=1, keepdims=True)
    logp_all = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    logp = np.take_along_axis(logp_all, np.asarray(targets)[:, None], axis=1)[:, 0]
    return logp, -(np.exp(logp_all) * logp_all).sum(axis=1)


def data(n=37, v=100, d=8, seed=0):
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.standard_normal((n, d)) * 2.0, jnp.float32)
    embedding = jnp.asarray(rng.standard_normal((v, d)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, v, n), jnp.int32)
    return hidden, embedding, targets


@pytest.mark.parametrize("softcap, temperature", [(None, 1.0), (None, 0.7), (5.0, 1.0),
                                                  (5.0, 0.5)])
def test_values_and_entropy_equal_the_plain_softmax(softcap, temperature):
    """Against float64, as close as the plain float32 path is: a peaked row's entropy
    (~1e-8 here) carries ~1e-6 of float32 rounding in either path (plain: 8.4e-7)."""
    hidden, embedding, targets = data()
    want_logp, want_ent = float64_truth(hidden, embedding, targets, softcap, temperature)
    logp, ent = fused_logprobs(hidden, embedding, targets, softcap=softcap,
                               temperature=temperature, row_tile=16, vocab_tile=32,
                               with_entropy=True)
    plain_logp, plain_ent = plain(hidden, embedding, targets, softcap, temperature)
    for got, ref, want in ((logp, plain_logp, want_logp), (ent, plain_ent, want_ent)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=2e-6)
        assert np.linalg.norm(np.asarray(got) - want) <= 1e-5 * np.linalg.norm(want)
    only = fused_logprobs(hidden, embedding, targets, softcap=softcap, temperature=temperature,
                          row_tile=16, vocab_tile=32)
    np.testing.assert_allclose(only, want_logp, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("softcap, temperature", [(None, 1.0), (5.0, 0.5)])
def test_gradients_equal_the_plain_softmax(softcap, temperature):
    hidden, embedding, targets = data(seed=1)
    a = jnp.asarray(np.random.default_rng(2).standard_normal(hidden.shape[0]), jnp.float32)
    b = jnp.asarray(np.random.default_rng(3).standard_normal(hidden.shape[0]), jnp.float32)

    def loss(fn):
        def f(h, e):
            logp, ent = fn(h, e)
            return (a * logp).sum() + (b * ent).sum()
        return jax.grad(f, argnums=(0, 1))(hidden, embedding)

    want = loss(lambda h, e: plain(h, e, targets, softcap, temperature))
    got = loss(lambda h, e: fused_logprobs(h, e, targets, softcap=softcap,
                                           temperature=temperature, row_tile=16,
                                           vocab_tile=32, with_entropy=True))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * float(jnp.abs(w).max()))
    grad_h = jax.grad(lambda h: fused_logprobs(h, embedding, targets, row_tile=16,
                                               vocab_tile=32).sum())(hidden)
    want_h = jax.grad(lambda h: plain(h, embedding, targets, None, 1.0)[0].sum())(hidden)
    np.testing.assert_allclose(grad_h, want_h, rtol=1e-5, atol=1e-6)


def test_no_tile_larger_than_asked_in_the_compiled_program():
    """The jitted gradient holds no [rows, vocabulary] array: its largest f32 temporary
    is a tile, not the 512 x 4096 logits the plain path builds."""
    hidden, embedding, targets = data(n=512, v=4096, d=16)

    def grad(fn):
        return jax.jit(jax.grad(lambda h: fn(h).sum())).lower(hidden).compile()

    fused = grad(lambda h: fused_logprobs(h, embedding, targets, row_tile=64, vocab_tile=256))
    full = grad(lambda h: plain(h, embedding, targets, None, 1.0)[0])
    fused_bytes = fused.memory_analysis().temp_size_in_bytes
    full_bytes = full.memory_analysis().temp_size_in_bytes
    assert full_bytes >= 512 * 4096 * 4  # the plain path materialises the logits
    assert fused_bytes < full_bytes / 8


def test_shapes_are_checked():
    hidden, embedding, targets = data()
    with pytest.raises(ValueError, match="need hidden"):
        fused_logprobs(hidden[None], embedding, targets)


def test_bfloat16_weights_take_the_bit_path_and_agree_with_float32():
    """A bfloat16 embedding is tiled as its raw bits (no float32 copy of it); values and
    the hidden states' gradient equal float32 arithmetic on the same bfloat16 numbers."""
    hidden, embedding, targets = data(seed=4)
    h16, e16 = hidden.astype(jnp.bfloat16), embedding.astype(jnp.bfloat16)
    h32, e32 = h16.astype(jnp.float32), e16.astype(jnp.float32)
    got = fused_logprobs(h16, e16, targets, softcap=5.0, temperature=0.7, row_tile=16,
                         vocab_tile=32)
    want = fused_logprobs(h32, e32, targets, softcap=5.0, temperature=0.7, row_tile=16,
                          vocab_tile=32)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    grad = jax.grad(lambda h: fused_logprobs(h, e16, targets, row_tile=16, vocab_tile=32,
                                             embedding_grad=False).sum())(h16)
    want_h = jax.grad(lambda h: plain(h, e32, targets, None, 1.0)[0].sum())(h32)
    assert grad.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(grad, np.float32), want_h, rtol=2e-2, atol=2e-3)


def test_a_frozen_embedding_gets_no_gradient_work():
    """``embedding_grad=False``: the hidden states' gradient is unchanged, the embedding's
    is zero."""
    hidden, embedding, targets = data(n=64, v=4096, d=16)
    both = jax.grad(lambda h, e: fused_logprobs(h, e, targets, row_tile=16, vocab_tile=256)
                    .sum(), argnums=(0, 1))(hidden, embedding)
    frozen = jax.grad(lambda h, e: fused_logprobs(h, e, targets, row_tile=16, vocab_tile=256,
                                                  embedding_grad=False).sum(),
                      argnums=(0, 1))(hidden, embedding)
    np.testing.assert_allclose(frozen[0], both[0], rtol=1e-6, atol=1e-7)
    assert float(jnp.abs(frozen[1]).max()) == 0.0 and float(jnp.abs(both[1]).max()) > 0
