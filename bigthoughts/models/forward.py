"""The Tunix Gemma forward pass split in two: hidden states, then logits.

Tunix's ``Gemma3.__call__``/``Gemma.__call__`` always project every position onto
the 262k-token vocabulary. Prefill only needs the last position's logits and the
GRPO loss only needs the log-probability of the sampled token, so we run the same
sub-modules (embedder -> layers -> final norm) and project just what is needed.
The layers and their KV-cache handling are Tunix's own; nothing is re-implemented.

``local_mask`` (a long prompt prefilled in chunks, ``inference.jax_sampler``): Tunix's
Gemma 3 draws a prefill's sliding-window band from matrix indices, as if query i sat in
cache slot i, which is wrong for a chunk that starts past slot 0. With ``local_mask``
the band is in the mask we pass to the sliding-window layers, and those layers run as
global ones for that call (their weights and cache are the same).
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
from flax import nnx

from bigthoughts.models.fused_logprobs import fused_logprobs

# fused log-prob tiles: rows (positions) × vocabulary entries, 256 × 8192 float32 = 8 MiB
ROW_TILE = 256
VOCAB_TILE = 8192


def hidden_states(model, tokens, positions, cache, attention_mask, *, remat: bool = False,
                  local_mask=None):
    """Runs embedder, decoder layers and final norm. Returns ``(hidden [B,L,D], cache)``.

    Models built by ``bigthoughts.models.build`` carry this as a method,
    ``model.hidden_states``, and we call it through the method: qwix applies LoRA by
    intercepting one method of the model class, and this is the one we register.
    ``remat=True`` recomputes each decoder layer in the backward pass instead of
    storing its activations (less activation memory for long sequences, more compute).
    """
    extra = {} if local_mask is None else {"local_mask": local_mask}
    method = getattr(model, "hidden_states", None)
    if method is not None:
        return method(tokens, positions, cache, attention_mask, remat=remat, **extra)
    return hidden_states_impl(model, tokens, positions, cache, attention_mask, remat=remat,
                              **extra)


def _run_layer(layer, x, positions, layer_cache, attention_mask):
    return layer(x, positions, layer_cache, attention_mask)


def _run_layer_remat(layer, x, positions, layer_cache, attention_mask):
    # split/merge by hand rather than nnx.remat: qwix's LoRA interception touches the
    # modules while tracing, which must happen at the checkpointed function's level
    graphdef, state = nnx.split(layer)

    def run(state, x, layer_cache):
        return nnx.merge(graphdef, state)(x, positions, layer_cache, attention_mask)

    return jax.checkpoint(run)(state, x, layer_cache)


def hidden_states_impl(model, tokens, positions, cache, attention_mask, *, remat: bool = False,
                       local_mask=None):
    """The body of :func:`hidden_states` (Tunix's own sub-modules, in order)."""
    run = _run_layer_remat if remat else _run_layer
    x = model.embedder.encode(tokens)
    new_cache = None if cache is None else {}
    for i, layer in enumerate(model.layers):
        name = f"layer_{i}"
        with _band_in_mask(layer.attn, local_mask is not None) as banded:
            mask = local_mask if banded else attention_mask
            layer_cache, x = run(layer, x, positions, cache[name] if cache else None, mask)
        if cache is not None:
            new_cache[name] = layer_cache
    return model.final_norm(x), new_cache


@contextlib.contextmanager
def _band_in_mask(attn, enabled: bool):
    """Runs a sliding-window attention layer as a global one while ``enabled`` (its
    band is then in the mask: see the module docstring); yields whether it did."""
    kind = getattr(attn, "attn_type", None)
    banded = enabled and kind is not None and kind.name == "LOCAL_SLIDING"
    if banded:
        attn.attn_type = type(kind).GLOBAL
    try:
        yield banded
    finally:
        if banded:
            attn.attn_type = kind


def logits(model, hidden):
    """Vocabulary logits for hidden states, with Gemma 2's final soft-cap when present."""
    out = model.embedder.decode(hidden)
    cap = getattr(model, "final_logits_softcap", None)
    if cap is not None:
        out = jnp.tanh(out / cap) * cap
    return out


def token_logprobs(model, hidden, targets, *, temperature: float = 1.0,
                   with_entropy: bool = False, row_tile: int = ROW_TILE,
                   vocab_tile: int = VOCAB_TILE):
    """log p_T(target) for each position (and, ``with_entropy``, the entropy of p_T),
    through :func:`~bigthoughts.models.fused_logprobs.fused_logprobs`: no tensor of
    logits larger than ``row_tile`` × ``vocab_tile`` exists in the forward or the
    backward pass, which recomputes its tiles.

    ``hidden``: [B, L, D]; ``targets``: [B, L] int. Returns [B, L] float32 (or a pair).
    ``temperature`` T divides the (soft-capped) logits before the log-softmax, as
    Tunix's ``compute_per_token_logps`` does; T = 0 (greedy) or 1 leaves them as
    they are, also as Tunix does. The embedding gets no gradient: it is frozen in
    every stage that calls this (LoRA adapts only the projections).
    """
    b, length, d = hidden.shape
    out = fused_logprobs(hidden.reshape(b * length, d), model.embedder.input_embedding[...],
                         targets.reshape(b * length),
                         softcap=getattr(model, "final_logits_softcap", None),
                         temperature=temperature, row_tile=row_tile, vocab_tile=vocab_tile,
                         with_entropy=with_entropy, embedding_grad=False)
    if with_entropy:
        return out[0].reshape(b, length), out[1].reshape(b, length)
    return out.reshape(b, length)


def init_cache(config, batch_size: int, cache_size: int, dtype) -> dict:
    """An empty left-aligned KV cache in the layout Tunix's attention layers use."""
    shape = (batch_size, cache_size, config.num_kv_heads, config.head_dim)
    return {
        f"layer_{i}": {
            "k": jnp.zeros(shape, dtype=dtype),
            "v": jnp.zeros(shape, dtype=dtype),
            "end_index": jnp.zeros((batch_size,), dtype=jnp.int32),
        }
        for i in range(config.num_layers)
    }
