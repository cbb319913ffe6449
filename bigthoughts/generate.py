"""Batched sampling on a Tunix Gemma model with a KV cache.

Why not Tunix's own sampler: a consensus vote needs one batch that holds the whole
temperature ladder (a temperature per row), a prompt prefilled once and shared by
all of its samples, stop strings that cut exactly, and the model's log-probability
of every sampled token. We build on the Tunix model's own cached forward
(``bigthoughts.models.forward``) instead.

How it works:

* prompts are tokenized, left-padded to a bucketed length (multiples of 64) so a
  new length rarely recompiles, and prefilled once; with ``num_samples=k`` the
  prefilled cache is repeated k times, so a k-vote pays for one prefill;
* decoding runs ``chunk`` steps per jitted call (the weights are passed in as
  state, never closed over); between chunks the host detokenizes, applies stop
  strings and EOS, and compacts the batch to the rows still running (batch sizes
  are powers of two), so finished rows stop costing work;
* each row draws from its own key ``fold_in(fold_in(seed, row), step)``, so results
  do not depend on batching or compaction; temperature 0 is greedy (argmax);
* sampling is exact inverse-CDF sampling over the full vocabulary, optionally
  restricted to the top-k (and then the top-p nucleus of those k);
* reported log-probs are the model's own ``log_softmax`` (temperature 1) of each
  sampled token.

Example::

    lm = load_model()
    sampler = Sampler(lm.model, lm.tokenizer)
    outs = sampler.generate(["Question: 2+3?\\nAnswer:"], temperatures=[0.0],
                            max_new_tokens=32, stop=["\\nQuestion:"])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bigthoughts.models import forward

FinishReason = Literal["stop", "eos", "length"]
PROMPT_BUCKET = 64


@dataclass(frozen=True)
class Generation:
    """One sampled continuation."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: FinishReason
    prompt_tokens: int
    temperature: float

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def logprob(self) -> float:
        return float(sum(self.logprobs))

    @property
    def mean_logprob(self) -> float:
        return self.logprob / max(1, self.num_tokens)


def _round_up(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def _pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def _sample(logits, temps, keys, top_k: int | None, top_p: float | None):
    """Samples one token per row. Returns (token [B], model log-prob [B])."""
    lse = jax.nn.logsumexp(logits, axis=-1)
    greedy = jnp.argmax(logits, axis=-1)
    if top_k is not None:
        cand_logits, cand_ids = jax.lax.top_k(logits, top_k)
    else:
        cand_logits, cand_ids = logits, None
    scaled = cand_logits / jnp.maximum(temps, 1e-6)[:, None]
    probs = jax.nn.softmax(scaled, axis=-1)
    if top_p is not None:  # candidates are sorted by top_k: keep the nucleus
        before = jnp.cumsum(probs, axis=-1) - probs
        probs = jnp.where(before < top_p, probs, 0.0)
    cdf = jnp.cumsum(probs, axis=-1)
    u = jax.vmap(lambda k: jax.random.uniform(k, ()))(keys) * cdf[:, -1]
    index = jnp.minimum(jnp.sum(cdf <= u[:, None], axis=-1), cdf.shape[-1] - 1)
    drawn = index if cand_ids is None else jnp.take_along_axis(cand_ids, index[:, None], -1)[:, 0]
    token = jnp.where(temps > 0, drawn, greedy)
    logprob = jnp.take_along_axis(logits, token[:, None], -1)[:, 0] - lse
    return token, logprob


class Sampler:
    """Batched sampler over a Tunix Gemma model (see module docstring)."""

    def __init__(self, model, tokenizer, *, chunk: int = 16, cache_dtype=None,
                 compact: bool = True):
        self.tokenizer = tokenizer
        self.compact = compact
        self.config = model.config
        self.chunk = chunk
        # Tunix's Gemma 2 builds its sliding-window mask from positions, assuming
        # position == cache slot; with left padding we therefore give Gemma 2 rows
        # slot positions (RoPE is relative, so a constant shift changes nothing).
        self.slot_positions = hasattr(model, "final_logits_softcap")
        self.graphdef, self.state = nnx.split(model)
        leaves = jax.tree_util.tree_leaves(self.state)
        self.cache_dtype = cache_dtype or (leaves[0].dtype if leaves else jnp.float32)
        self._prefill = jax.jit(self._prefill_impl, static_argnames=("cache_size",))
        self._decode = jax.jit(
            self._decode_impl, static_argnames=("steps", "top_k", "top_p", "stop_at_eos"),
            donate_argnums=(1,)
        )

    def update_state(self, model) -> None:
        """Points the sampler at new weights (same architecture) without recompiling."""
        self.state = nnx.state(model)

    # --- jitted pieces -------------------------------------------------------------
    def _prefill_impl(self, state, tokens, valid, *, cache_size: int):
        model = nnx.merge(self.graphdef, state)
        b, p = tokens.shape
        if self.slot_positions:
            positions = jnp.broadcast_to(jnp.arange(p), (b, p))
        else:
            positions = jnp.maximum(jnp.cumsum(valid, axis=-1) - 1, 0)
        causal = jnp.tril(jnp.ones((p, p), dtype=bool))[None] & valid[:, None, :]
        mask = jnp.pad(causal, ((0, 0), (0, 0), (0, cache_size - p)))
        cache = forward.init_cache(self.config, b, cache_size, self.cache_dtype)
        hidden, cache = forward.hidden_states(model, tokens, positions, cache, mask)
        last = forward.logits(model, hidden[:, -1]).astype(jnp.float32)
        return last, cache, positions[:, -1] + 1

    def _decode_impl(self, state, cache, logits, pos, slot_valid, write_slot, done, row_ids,
                     temps, base_key, step0, *, steps: int, top_k, top_p,
                     stop_at_eos: bool = True):
        eos, pad = self.tokenizer.eos_id(), self.tokenizer.pad_id()

        def step(carry, i):
            # merged inside the scan body: qwix's LoRA interception sets attributes on
            # modules while tracing, which must happen at the body's trace level
            model = nnx.merge(self.graphdef, state)
            cache, logits, pos, slot_valid, done = carry
            keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(base_key, r),
                                                         step0 + i))(row_ids)
            token, logprob = _sample(logits, temps, keys, top_k, top_p)
            token = jnp.where(done, pad, token)
            logprob = jnp.where(done, 0.0, logprob)
            slot_valid = slot_valid.at[:, write_slot + i].set(True)
            hidden, cache = forward.hidden_states(
                model, token[:, None], pos[:, None], cache, slot_valid[:, None, :]
            )
            logits = forward.logits(model, hidden[:, 0]).astype(jnp.float32)
            if stop_at_eos:
                done = done | (token == eos)
            return (cache, logits, pos + 1, slot_valid, done), (token, logprob)

        carry, (tokens, logprobs) = jax.lax.scan(
            step, (cache, logits, pos, slot_valid, done), jnp.arange(steps)
        )
        return carry, tokens.T, logprobs.T

    # --- host loop -----------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[str],
        *,
        temperatures: float | Sequence[float] = 0.0,
        num_samples: int = 1,
        max_new_tokens: int = 256,
        stop: Sequence[str] = (),
        stop_inclusive: Sequence[str] = (),
        seed: int = 0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop_at_eos: bool = True,
    ) -> list[Generation]:
        """Samples ``num_samples`` continuations per prompt (prompt-major order).

        ``temperatures``: one value for all rows, or one per output row
        (``len(prompts) * num_samples``). ``stop`` strings end a row and are cut off
        the text; ``stop_inclusive`` strings (e.g. ``"</answer>"``) end it and are kept.
        ``stop_at_eos=False`` keeps sampling past EOS (fixed-length benchmarks).
        """
        if not prompts:
            return []
        if num_samples < 1 or max_new_tokens < 1:
            raise ValueError("num_samples and max_new_tokens must be >= 1")
        if top_k is not None and top_k < 1:
            raise ValueError("top_k must be >= 1")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if top_p is not None and top_k is None:
            top_k = 256  # the nucleus is taken among the 256 most likely tokens
        rows = len(prompts) * num_samples
        requested = [float(temperatures)] * rows if np.ndim(temperatures) == 0 \
            else [float(t) for t in temperatures]  # reported as given, not as float32
        temps = np.asarray(requested, dtype=np.float32)
        if temps.shape != (rows,):
            raise ValueError(f"need 1 or {rows} temperatures, got {temps.shape[0]}")
        if (temps < 0).any():
            raise ValueError("temperatures must be >= 0")

        encoded = [self.tokenizer.encode(p, add_bos=True) for p in prompts]
        p_len = _round_up(max(len(e) for e in encoded), PROMPT_BUCKET)
        tokens = np.full((len(prompts), p_len), self.tokenizer.pad_id(), dtype=np.int32)
        valid = np.zeros((len(prompts), p_len), dtype=bool)
        for i, ids in enumerate(encoded):
            tokens[i, p_len - len(ids):] = ids
            valid[i, p_len - len(ids):] = True
        new_cap = _round_up(max_new_tokens, self.chunk)
        cache_size = p_len + new_cap
        logits, cache, pos = self._prefill(
            self.state, jnp.asarray(tokens), jnp.asarray(valid), cache_size=cache_size
        )
        slot_valid = jnp.pad(jnp.asarray(valid), ((0, 0), (0, new_cap)))
        if num_samples > 1:
            rep = lambda x: jnp.repeat(x, num_samples, axis=0)  # noqa: E731
            logits, pos, slot_valid = rep(logits), rep(pos), rep(slot_valid)
            cache = jax.tree_util.tree_map(rep, cache)

        out_tokens: list[list[int]] = [[] for _ in range(rows)]
        out_logprobs: list[list[float]] = [[] for _ in range(rows)]
        finished: dict[int, tuple[str, int, FinishReason]] = {}
        active = np.arange(rows)  # original row id of each batch slot
        batch_done = np.zeros(rows, dtype=bool)
        base_key = jax.random.key(seed)
        produced = 0
        while produced < max_new_tokens and len(finished) < rows:
            carry, toks, lps = self._decode(
                self.state, cache, logits, pos, slot_valid, p_len + produced,
                jnp.asarray(batch_done), jnp.asarray(active, dtype=jnp.int32),
                jnp.asarray(temps[active]), base_key, produced,
                steps=self.chunk, top_k=top_k, top_p=top_p, stop_at_eos=stop_at_eos,
            )
            cache, logits, pos, slot_valid, _ = carry
            toks, lps = np.asarray(toks), np.asarray(lps)
            produced += self.chunk
            for slot, row in enumerate(active):
                if row in finished or batch_done[slot]:
                    continue
                out_tokens[row].extend(int(t) for t in toks[slot])
                out_logprobs[row].extend(float(x) for x in lps[slot])
                result = self._finish(out_tokens[row], stop, stop_inclusive, max_new_tokens,
                                      stop_at_eos=stop_at_eos)
                if result is not None:
                    finished[row] = result
                    batch_done[slot] = True
            if self.compact:
                active, batch_done, cache, logits, pos, slot_valid = self._compact(
                    active, batch_done, cache, logits, pos, slot_valid
                )
        results = []
        for row in range(rows):
            text, n, reason = finished.get(row) or self._finish(
                out_tokens[row], stop, stop_inclusive, max_new_tokens, force=True,
                stop_at_eos=stop_at_eos)
            results.append(Generation(
                text=text, token_ids=tuple(out_tokens[row][:n]),
                logprobs=tuple(out_logprobs[row][:n]), finish_reason=reason,
                prompt_tokens=len(encoded[row // num_samples]), temperature=requested[row],
            ))
        return results

    def _finish(self, ids, stop, stop_inclusive, max_new, *, force=False, stop_at_eos=True):
        """(text, tokens kept, reason) if the row is finished, else None."""
        eos = self.tokenizer.eos_id()
        limit = min(len(ids), max_new)
        hit_eos = stop_at_eos and eos in ids[:limit]
        if hit_eos:
            limit = ids.index(eos) + 1
        text = self.tokenizer.decode([t for t in ids[:limit] if t != eos])
        best = None  # (start, end of kept text, end of the stop string)
        for strings, keep in ((stop, False), (stop_inclusive, True)):
            for s in strings:
                at = text.find(s)
                if at >= 0 and (best is None or at < best[0]):
                    best = (at, at + len(s) if keep else at, at + len(s))
        if best is not None:
            return text[: best[1]], self._tokens_covering(ids[:limit], best[2]), "stop"
        if hit_eos:
            return text, limit, "eos"
        if force or limit >= max_new:
            return text, limit, "length"
        return None

    def _tokens_covering(self, ids, n_chars: int) -> int:
        """The fewest leading tokens whose text reaches ``n_chars`` characters."""
        lo, hi = 1, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(self.tokenizer.decode(ids[:mid])) >= n_chars:
                hi = mid
            else:
                lo = mid + 1
        return hi

    @staticmethod
    def _compact(active, batch_done, cache, logits, pos, slot_valid):
        """Drops finished rows when the live rows fit a smaller power-of-two batch."""
        live = np.flatnonzero(~batch_done)
        size = _pow2(len(live))
        if len(live) == 0 or size >= len(active):
            return active, batch_done, cache, logits, pos, slot_valid
        filler = np.flatnonzero(batch_done)[: size - len(live)]
        keep = np.concatenate([live, filler])
        idx = jnp.asarray(keep)
        take = lambda x: jnp.take(x, idx, axis=0)  # noqa: E731
        return (active[keep], batch_done[keep], jax.tree_util.tree_map(take, cache),
                take(logits), take(pos), take(slot_valid))
