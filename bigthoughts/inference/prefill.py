"""A prompt's KV cache and last logits on a Tunix Gemma model (the JAX sampler's prefill).

A prompt of up to ``PREFILL_CHUNK`` (512) tokens is prefilled in one call. A longer one
is prefilled 512 tokens at a time against the cache: each chunk's queries attend to the
cache slots before them, so attention holds 512 x cache scores, never prompt x prompt
(a 30,000-token prompt needed 31.5 GB in one piece). In sliding-window layers the band
is part of the mask (``models.forward``: Tunix draws a prefill's band as if the first
query sat in slot 0).

Example::

    prefill = Prefill(graphdef, model.config, jnp.float32, slot_positions=False)
    logits, cache, next_pos = prefill(state, tokens, valid, cache_size=p + capacity)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bigthoughts.models import forward
from bigthoughts.models.limits import PREFILL_CHUNK, PROMPT_BUCKET, round_up

__all__ = ["Prefill", "positions", "prompt_slots"]


def prompt_slots(longest: int) -> int:
    """Cache slots for prompts of up to ``longest`` tokens: a multiple of 64 (few
    shapes to compile), of ``PREFILL_CHUNK`` when it is prefilled in chunks."""
    slots = round_up(longest, PROMPT_BUCKET)
    return round_up(slots, PREFILL_CHUNK) if slots > PREFILL_CHUNK else slots


def positions(valid, *, slot_positions: bool, xp=np):
    """Each prompt slot's position (numpy or jax.numpy ``xp``): counted over the valid
    tokens (0 on left padding), or the slot itself (Gemma 2: see ``jax_sampler``)."""
    b, p = valid.shape
    if slot_positions:
        return xp.broadcast_to(xp.arange(p, dtype=xp.int32), (b, p))
    return xp.maximum(xp.cumsum(valid, axis=-1, dtype=xp.int32) - 1, 0)


class Prefill:
    """Prefills left-padded prompts into a fresh KV cache (see the module docstring)."""

    def __init__(self, graphdef, config, cache_dtype, *, slot_positions: bool):
        self.graphdef, self.config, self.cache_dtype = graphdef, config, cache_dtype
        self.slot_positions = slot_positions
        self.window = getattr(config, "sliding_window_size", None) or 0
        self._whole = jax.jit(self._whole_impl, static_argnames=("cache_size",))
        self._chunk = jax.jit(self._chunk_impl, donate_argnums=(1,))

    def __call__(self, state, tokens: np.ndarray, valid: np.ndarray, cache_size: int):
        """(last logits [B, V] float32, KV cache, next position of each row)."""
        b, p = tokens.shape
        if p <= PREFILL_CHUNK:
            return self._whole(state, jnp.asarray(tokens), jnp.asarray(valid),
                               cache_size=cache_size)
        pos = positions(valid, slot_positions=self.slot_positions)
        slot_valid = jnp.asarray(np.pad(valid, ((0, 0), (0, cache_size - p))))
        cache = forward.init_cache(self.config, b, cache_size, self.cache_dtype)
        for start in range(0, p, PREFILL_CHUNK):
            part = slice(start, start + PREFILL_CHUNK)
            logits, cache = self._chunk(state, cache, jnp.asarray(tokens[:, part]),
                                        jnp.asarray(pos[:, part]), slot_valid, jnp.int32(start))
        return logits, cache, jnp.asarray(pos[:, -1] + 1)

    def lower(self, state, tokens, valid, *, cache_size: int):
        """The XLA program a prefill of these shapes runs (``jax.stages.Lowered``): the
        whole-prompt one, or one chunk's for a prompt over ``PREFILL_CHUNK`` (for AOT
        memory analysis, ``scripts/aot_memory.py``)."""
        b, p = tokens.shape
        if p <= PREFILL_CHUNK:
            return self._whole.lower(state, tokens, valid, cache_size=cache_size)
        s = jax.ShapeDtypeStruct
        cache = jax.eval_shape(lambda: forward.init_cache(self.config, b, cache_size,
                                                          self.cache_dtype))
        return self._chunk.lower(state, cache, s((b, PREFILL_CHUNK), jnp.int32),
                                 s((b, PREFILL_CHUNK), jnp.int32), s((b, cache_size), bool),
                                 s((), jnp.int32))

    def _whole_impl(self, state, tokens, valid, *, cache_size: int):
        model = nnx.merge(self.graphdef, state)
        b, p = tokens.shape
        pos = positions(valid, slot_positions=self.slot_positions, xp=jnp)
        causal = jnp.tril(jnp.ones((p, p), dtype=bool))[None] & valid[:, None, :]
        mask = jnp.pad(causal, ((0, 0), (0, 0), (0, cache_size - p)))
        cache = forward.init_cache(self.config, b, cache_size, self.cache_dtype)
        hidden, cache = forward.hidden_states(model, tokens, pos, cache, mask)
        last = forward.logits(model, hidden[:, -1]).astype(jnp.float32)
        return last, cache, pos[:, -1] + 1

    def _chunk_impl(self, state, cache, tokens, pos, slot_valid, start):
        """Prefills slots ``start .. start + C`` against the cache: each query sees the
        valid slots up to its own (in sliding-window layers, the last ``window`` of
        them). Returns the chunk's last logits and the cache."""
        model = nnx.merge(self.graphdef, state)
        slots = jnp.arange(slot_valid.shape[1])[None, :]
        query = (start + jnp.arange(tokens.shape[1]))[:, None]
        causal = (slots <= query)[None] & slot_valid[:, None, :]
        local = causal & (slots > query - self.window)[None] if self.window else None
        hidden, cache = forward.hidden_states(model, tokens, pos, cache, causal,
                                              local_mask=local)
        return forward.logits(model, hidden[:, -1]).astype(jnp.float32), cache
