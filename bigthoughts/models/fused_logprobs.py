"""Token log-probabilities (and entropy) without a vocabulary-sized tensor.

    logp, entropy = fused_logprobs(hidden, embedding, targets, softcap=None,
                                   temperature=1.0, with_entropy=True)

``hidden`` [N, D] (rows: positions of any batch, flattened), ``embedding`` [V, D] (the
tied output layer, ``logits = hidden @ embedding.T``), ``targets`` [N] int. Returns
log softmax(z)[target] and, with ``with_entropy``, the entropy -Σ p log p of the same
distribution, both [N] float32, where z = cap·tanh(logits / cap) / T (Gemma 2's final
soft-cap when ``softcap`` is given; T = ``temperature``, 0 and 1 leave z unscaled).

The rows × vocabulary plane is cut into tiles (``row_tile`` × ``vocab_tile``). The
forward pass visits the vocabulary tiles of a row tile in turn with an online
logsumexp (a running maximum and a rescaled running sum, as Liger-Kernel's and
Unsloth's fused cross-entropy do), picking the target's logit where it falls and, for
the entropy, a running Σ exp(z - m)·(z - m). It keeps only the log-normaliser and the
entropy per row. The backward pass (a custom VJP) recomputes each tile's logits
and applies, per tile,

    d logp / dz = onehot(target) - p        d H / dz = -p · (z - lse + H)

then the soft-cap and temperature's chain rule, so neither pass holds more than one
[row_tile, vocab_tile] block of logits. Gradients flow to ``hidden`` (hence the LoRA
weights below it) and, unless ``embedding_grad=False``, to ``embedding`` (one
[V, D] float32 sum carried over the row tiles).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["fused_logprobs"]


def _scaled(x, softcap: float | None, temperature: float):
    """(z, dz/dx) of raw logits ``x``: the soft-cap, then 1/T."""
    inv_t = 1.0 / temperature if temperature not in (0.0, 1.0) else 1.0
    if softcap is None:
        return x * inv_t, jnp.full_like(x, inv_t)
    t = jnp.tanh(x / softcap)
    return t * softcap * inv_t, (1.0 - t * t) * inv_t


def _tiles(hidden, embedding, targets, row_tile: int, vocab_tile: int):
    """The inputs padded to whole tiles: hidden [R, r, D], targets [R, r], embedding
    [Vt, v, D], and the number of real vocabulary entries."""
    n, d = hidden.shape
    v = embedding.shape[0]
    rows = (-n) % row_tile
    cols = (-v) % vocab_tile
    h = jnp.pad(hidden, ((0, rows), (0, 0))).reshape(-1, row_tile, d)
    t = jnp.pad(targets, (0, rows)).reshape(-1, row_tile)
    e = jnp.pad(_as_bits(embedding), ((0, cols), (0, 0))).reshape(-1, vocab_tile, d)
    return h, e, t, v


def _as_bits(embedding):
    """A 16-bit float embedding as its raw bits (uint16), anything else as it is. Where
    the backend has no bfloat16 dot (XLA's CPU) it casts the operands to float32, and
    XLA hoisted that cast out of the tile loop as one float32 copy of the whole
    embedding (1.2 GB for Gemma 3 1B); a tile sliced from the bits and turned back into
    floats in the loop body (:func:`_own_tile`) is cast one tile at a time."""
    if jnp.dtype(embedding.dtype).itemsize == 2:
        return jax.lax.bitcast_convert_type(embedding, jnp.uint16)
    return embedding


def _own_tile(e_tile, dtype):
    """One tile of :func:`_as_bits`'s array back in ``dtype``."""
    if e_tile.dtype == dtype:
        return e_tile
    return jax.lax.bitcast_convert_type(jax.lax.optimization_barrier(e_tile), dtype)


def _tile_logits(h, e_tile, start, vocab: int, softcap, temperature):
    """(z, dz/dx, real) of one tile: [r, v] float32, with padded columns marked."""
    x = jnp.dot(h, e_tile.T, preferred_element_type=jnp.float32)
    z, dz = _scaled(x, softcap, temperature)
    real = (start + jnp.arange(e_tile.shape[0]))[None, :] < vocab
    return jnp.where(real, z, -jnp.inf), dz, real


def _forward_rows(h, t, e, dtype, vocab: int, softcap, temperature):
    """One row tile: (log-normaliser, target's z, entropy) by an online pass over the
    vocabulary tiles. Against the running maximum m it keeps r = Σ exp(z - m) over all
    but one maximal entry and sz = Σ exp(z - m)·(z - m), so that lse = m + log1p(r) and
    H = log1p(r) - sz / (1 + r) stay exact when p is peaked (lse - E[z] cancels)."""
    r_rows = h.shape[0]
    width = e.shape[1]

    def step(carry, xs):
        m, r, sz, picked = carry
        e_tile, index = xs
        e_tile = _own_tile(e_tile, dtype)
        start = index * width
        z, _, real = _tile_logits(h, e_tile, start, vocab, softcap, temperature)
        tile_max = z.max(axis=1)
        new_m = jnp.maximum(m, tile_max)
        scale = jnp.exp(m - new_m)  # 0 on the first tile (m = -inf)
        w = jnp.where(real, jnp.exp(z - new_m[:, None]), 0.0)
        is_new = tile_max > m  # this tile holds the new maximum: leave one out of r
        top = jnp.argmax(z, axis=1)
        w_rest = jnp.where(is_new[:, None] & (jnp.arange(width)[None, :] == top[:, None]),
                           0.0, w)
        # Σ exp(z - m) so far (its maximal entry counts 1), re-centred on the new maximum
        moved = jnp.where(jnp.isfinite(m), sz + (1.0 + r) * (m - new_m), 0.0)
        sz = moved * scale + (w * jnp.where(real, z - new_m[:, None], 0.0)).sum(axis=1)
        # the old maximal entry (weight 1 at m) becomes an ordinary term when m moves
        r = jnp.where(is_new, (r + 1.0) * scale, r) + w_rest.sum(axis=1)
        local = t - start
        inside = (local >= 0) & (local < width)
        got = jnp.take_along_axis(z, jnp.clip(local, 0, width - 1)[:, None], axis=1)[:, 0]
        return (new_m, r, sz, jnp.where(inside, got, picked)), None

    init = (jnp.full((r_rows,), -jnp.inf, jnp.float32), jnp.zeros((r_rows,), jnp.float32),
            jnp.zeros((r_rows,), jnp.float32), jnp.zeros((r_rows,), jnp.float32))
    (m, r, sz, picked), _ = jax.lax.scan(step, init, (e, jnp.arange(e.shape[0])))
    log_s = jnp.log1p(r)
    return m + log_s, picked, log_s - sz / (1.0 + r)


def _dot(a, b):
    """a @ b in float32 from float32 ``a`` and ``b`` of any float type, without an
    explicit cast of ``b`` (one mixed-type dot)."""
    return jax.lax.dot_general(a, b, (((a.ndim - 1,), (0,)), ((), ())),
                               preferred_element_type=jnp.float32)


def _backward_rows(h, t, e, dtype, lse, entropy, g_logp, g_ent, vocab: int, softcap,
                   temperature, de=None):
    """One row tile's cotangents: (d hidden [r, D], d embedding [Vt, v, D] added to
    ``de``, or None when ``de`` is None: the embedding's gradient is not wanted)."""
    width = e.shape[1]

    def step(dh, xs):
        e_tile, index, de_tile = xs
        e_tile = _own_tile(e_tile, dtype)
        start = index * width
        z, dz_dx, real = _tile_logits(h, e_tile, start, vocab, softcap, temperature)
        p = jnp.where(real, jnp.exp(z - lse[:, None]), 0.0)
        onehot = (t - start)[:, None] == jnp.arange(width)[None, :]
        dz = g_logp[:, None] * (onehot.astype(jnp.float32) - p)
        if g_ent is not None:
            # z - E_p[z] = (z - lse) + H
            centred = jnp.where(real, z - lse[:, None], 0.0) + entropy[:, None]
            dz = dz - g_ent[:, None] * p * centred
        dx = dz * dz_dx
        if de_tile is not None:
            de_tile = de_tile + _dot(dx.T, h)
        return dh + _dot(dx, e_tile), de_tile

    dh, de = jax.lax.scan(step, jnp.zeros(h.shape, jnp.float32),
                          (e, jnp.arange(e.shape[0]), de))
    return dh, de


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7, 8))
def _fused(hidden, embedding, targets, softcap, temperature, row_tile, vocab_tile,
           with_entropy, embedding_grad):
    out, _ = _fused_fwd(hidden, embedding, targets, softcap, temperature, row_tile,
                        vocab_tile, with_entropy, embedding_grad)
    return out


def _fused_fwd(hidden, embedding, targets, softcap, temperature, row_tile, vocab_tile,
               with_entropy, embedding_grad):
    n = hidden.shape[0]
    h, e, t, vocab = _tiles(hidden, embedding, targets, row_tile, vocab_tile)
    lse, picked, entropy = jax.lax.map(
        lambda xs: _forward_rows(xs[0], xs[1], e, embedding.dtype, vocab, softcap, temperature),
        (h, t))
    lse, picked, entropy = (x.reshape(-1)[:n] for x in (lse, picked, entropy))
    out = (picked - lse, entropy if with_entropy else None)
    return out, (hidden, embedding, targets, lse, entropy)


def _fused_bwd(softcap, temperature, row_tile, vocab_tile, with_entropy, embedding_grad,
               res, g):
    hidden, embedding, targets, lse, entropy = res
    g_logp, g_ent = g
    n = hidden.shape[0]
    h, e, t, vocab = _tiles(hidden, embedding, targets, row_tile, vocab_tile)
    pad = h.shape[0] * row_tile - n

    def rows(x):
        return jnp.pad(x, (0, pad)).reshape(-1, row_tile)

    ent = rows(g_ent) if with_entropy and g_ent is not None else None
    xs = (h, t, rows(lse), rows(entropy), rows(g_logp), ent)

    def one(de, xs):
        h_, t_, lse_, entropy_, g_, ent_ = xs
        dh, de = _backward_rows(h_, t_, e, embedding.dtype, lse_, entropy_, g_, ent_, vocab,
                                softcap, temperature, de)
        return de, dh

    # the embedding's gradient, when wanted, is one [V, D] float32 sum carried across
    # the row tiles (never one per row tile)
    de0 = jnp.zeros(e.shape, jnp.float32) if embedding_grad else None
    de, dh = jax.lax.scan(one, de0, xs)
    dh = dh.reshape(-1, hidden.shape[1])[:n].astype(hidden.dtype)
    if de is None:
        de = jnp.zeros_like(embedding)  # unused: the caller does not train the embedding
    else:
        de = de.reshape(-1, embedding.shape[1])[:embedding.shape[0]].astype(embedding.dtype)
    return dh, de, None


_fused.defvjp(_fused_fwd, _fused_bwd)


def fused_logprobs(hidden, embedding, targets, *, softcap: float | None = None,
                   temperature: float = 1.0, row_tile: int = 256, vocab_tile: int = 8192,
                   with_entropy: bool = False, embedding_grad: bool = True):
    """log p(target) [N] (and, ``with_entropy``, the entropy [N]); see the module.

    ``embedding_grad=False`` skips the embedding's gradient (returned as zeros, which
    XLA drops when nothing reads them): for a frozen embedding, as under LoRA."""
    if hidden.ndim != 2 or embedding.ndim != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"need hidden [N, D], embedding [V, D], targets [N]; got "
                         f"{hidden.shape}, {embedding.shape}, {targets.shape}")
    if row_tile < 1 or vocab_tile < 1:
        raise ValueError("row_tile and vocab_tile must be >= 1")
    logp, entropy = _fused(hidden, embedding, targets.astype(jnp.int32),
                           None if softcap is None else float(softcap), float(temperature),
                           int(row_tile), min(int(vocab_tile), embedding.shape[0]),
                           bool(with_entropy), bool(embedding_grad))
    return (logp, entropy) if with_entropy else logp
