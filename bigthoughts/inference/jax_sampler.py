"""Batched sampling on a Tunix Gemma model with a KV cache.

Why not Tunix's own sampler: a consensus vote needs one batch that holds the whole
temperature ladder (a temperature per row), a prompt prefilled once and shared by
all of its samples, stop strings that cut exactly, and the model's log-probability
of every sampled token. We build on the Tunix model's own cached forward
(``bigthoughts.models.forward``) instead.

How it works:

* prompts are tokenized, left-padded to a bucketed length (multiples of 64) so a
  new length rarely recompiles, and prefilled once; with ``num_samples=k`` the
  prefilled cache is repeated k times, so a k-vote pays for one prefill; a prompt
  longer than ``PREFILL_CHUNK`` (512) tokens is prefilled 512 at a time against the
  cache, so attention holds 512 x cache scores, never prompt x prompt (a 30k-token
  prompt needed 31.5 GB in one piece);
* decoding runs ``chunk`` steps per jitted call (the weights are passed in as
  state, never closed over); between chunks the host detokenizes, applies stop
  strings and EOS, and compacts the batch to the rows still running (batch sizes
  are powers of two), so finished rows stop costing work;
* each row draws from its own key ``fold_in(fold_in(seed, row), step)``, so results
  do not depend on batching or compaction; temperature 0 is greedy (argmax);
* sampling is exact inverse-CDF sampling over the full vocabulary, optionally
  restricted to the top-k (and then the top-p nucleus of those k);
* reported log-probs are the model's own ``log_softmax`` (temperature 1) of each
  sampled token;
* ``calculator=True`` runs GSM8K's calculator convention inside the decode: when a
  row writes ``<<EXPR=``, the host evaluates EXPR with the safe evaluator of
  :mod:`bigthoughts.steps`, drops whatever the row sampled after the ``=`` (those
  cache slots are masked out and its position rewinds), and feeds ``RESULT>>`` to
  that row as forced tokens in the next chunk while the other rows keep sampling.
  Forced tokens are flagged in :attr:`Generation.inserted` (the model did not
  choose them; GRPO masks them out of the loss). An invalid expression inserts
  nothing. A prompt that itself ends in ``<<EXPR=`` is answered before decoding.

Example::

    lm = load_model()
    sampler = Sampler(lm.model, lm.tokenizer)
    outs = sampler.generate(["Question: 2+3?\\nAnswer:"], temperatures=[0.0],
                            max_new_tokens=32, stop=["\\nQuestion:"])
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bigthoughts.arithmetic import CALL_OPEN
from bigthoughts.inference.contract import (
    Calculator,
    Generation,
    calculator_text,
    check_request,
    find_stop,
    resolve_calculator,
)
from bigthoughts.inference.prefill import Prefill, prompt_slots
from bigthoughts.models import forward
from bigthoughts.models.limits import (
    CHUNK,
    check_memory,
    round_up,
)


def _pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def _sample(logits, temps, keys, top_k: int | None, top_p: float | None):
    """Samples one token per row: [B] (argmax where the temperature is 0)."""
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
    return jnp.where(temps > 0, drawn, greedy)


def _token_logprob(logits, token):
    """The model's log-softmax (temperature 1) of ``token`` in each row."""
    lse = jax.nn.logsumexp(logits, axis=-1)
    return jnp.take_along_axis(logits, token[:, None], -1)[:, 0] - lse


def _sample_logprob(logits, token, temps):
    """log softmax(logits / T)[token] per row: the distribution the token was drawn
    from (0 where T <= 0: greedy is deterministic)."""
    scaled = logits / jnp.where(temps > 0, temps, 1.0)[:, None]
    return jnp.where(temps > 0, _token_logprob(scaled, token), 0.0)


_CALL = re.compile(CALL_OPEN)  # an open calculator call anywhere in a text


@dataclass
class _Row:
    """Host-side state of one output row while it decodes."""

    prompt_len: int  # prompt tokens incl. BOS: the position of the first new token
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    sample_logprobs: list[float] = field(default_factory=list)  # at the row's T
    inserted: list[bool] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)  # cache slot of each token
    pending: list[int] = field(default_factory=list)  # calculator tokens still to feed
    scan_from: int = 0  # text already searched for calculator calls
    result: tuple[str, int, str] | None = None  # (text, tokens kept, finish reason)

    def truncate(self, n: int) -> list[int]:
        """Keeps the first n tokens; returns the cache slots of the dropped ones."""
        dropped = self.slots[n:]
        for items in (self.tokens, self.logprobs, self.sample_logprobs, self.inserted,
                      self.slots):
            del items[n:]
        return dropped


@dataclass(frozen=True)
class _Options:
    """Per-call settings of :meth:`Sampler.generate` the host loop needs."""

    max_new_tokens: int
    stop: tuple[str, ...]
    stop_inclusive: tuple[str, ...]
    stop_at_eos: bool
    top_k: int | None
    top_p: float | None
    calculator: Calculator | None
    cancelled: Callable[[int], bool] | None = None


@dataclass
class _Batch:
    """Device arrays of the rows still decoding, and which original row each slot is."""

    active: np.ndarray  # original row id of each batch slot
    done: np.ndarray  # host-side: the row in this slot has finished
    cache: dict
    logits: jax.Array
    pos: jax.Array
    slot_valid: jax.Array


class Sampler:
    """Batched sampler over a Tunix Gemma model (see module docstring)."""

    def __init__(self, model, tokenizer, *, chunk: int = CHUNK, cache_dtype=None,
                 compact: bool = True, memory_check: bool = True):
        self.tokenizer = tokenizer
        self.compact = compact
        # refuse a call whose estimate exceeds the free memory (ask, eval, serve); the
        # trainers' rollouts skip it: sized by their recipe, checked when training starts,
        # and free memory read mid-run (training state live) would stop a run that fits
        self.memory_check = memory_check
        self.config = model.config
        self.chunk = chunk
        # Tunix's Gemma 2 builds its sliding-window mask from positions, assuming
        # position == cache slot; with left padding we therefore give Gemma 2 rows
        # slot positions (RoPE is relative, so a constant shift changes nothing).
        self.slot_positions = hasattr(model, "final_logits_softcap")
        self.graphdef, self.state = nnx.split(model)
        leaves = jax.tree_util.tree_leaves(self.state)
        self.cache_dtype = cache_dtype or (leaves[0].dtype if leaves else jnp.float32)
        self._prefill = Prefill(self.graphdef, self.config, self.cache_dtype,
                                slot_positions=self.slot_positions)
        self._decode = jax.jit(
            self._decode_impl, static_argnames=("steps", "top_k", "top_p", "stop_at_eos"),
            donate_argnums=(1,)
        )

    # --- jitted pieces -------------------------------------------------------------
    def _decode_impl(self, state, cache, logits, pos, slot_valid, write_slot, done, row_ids,
                     temps, forced, forced_on, base_key, step0, *, steps: int, top_k, top_p,
                     stop_at_eos: bool = True):
        eos, pad = self.tokenizer.eos_id(), self.tokenizer.pad_id()

        def step(carry, i):
            # merged inside the scan body: qwix's LoRA interception sets attributes on
            # modules while tracing, which must happen at the body's trace level
            model = nnx.merge(self.graphdef, state)
            cache, logits, pos, slot_valid, done = carry
            keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(base_key, r),
                                                         step0 + i))(row_ids)
            token = _sample(logits, temps, keys, top_k, top_p)
            token = jnp.where(forced_on[:, i], forced[:, i], token)  # calculator tokens
            logprob = jnp.where(done, 0.0, _token_logprob(logits, token))
            sampled = jnp.where(done | forced_on[:, i], 0.0, _sample_logprob(logits, token, temps))
            token = jnp.where(done, pad, token)
            slot_valid = slot_valid.at[:, write_slot + i].set(True)
            hidden, cache = forward.hidden_states(
                model, token[:, None], pos[:, None], cache, slot_valid[:, None, :]
            )
            logits = forward.logits(model, hidden[:, 0]).astype(jnp.float32)
            if stop_at_eos:
                done = done | (token == eos)
            return (cache, logits, pos + 1, slot_valid, done), (token, logprob, sampled)

        carry, (tokens, logprobs, sampled) = jax.lax.scan(
            step, (cache, logits, pos, slot_valid, done), jnp.arange(steps)
        )
        return carry, tokens.T, (logprobs.T, sampled.T)

    # --- host side -----------------------------------------------------------------
    def generate(self, prompts: Sequence[str], *, temperatures: float | Sequence[float] = 0.0,
                 num_samples: int = 1, max_new_tokens: int = 256, stop: Sequence[str] = (),
                 stop_inclusive: Sequence[str] = (), seed: int = 0, top_k: int | None = None,
                 top_p: float | None = None, stop_at_eos: bool = True,
                 calculator: bool | Calculator = False,
                 cancelled: Callable[[int], bool] | None = None) -> list[Generation]:
        """Samples ``num_samples`` continuations per prompt (prompt-major order).

        ``temperatures``: one value for all rows, or one per output row
        (``len(prompts) * num_samples``). ``stop`` strings end a row and are cut off
        the text; ``stop_inclusive`` strings (e.g. ``"</answer>"``) end it and are kept.
        ``stop_at_eos=False`` keeps sampling past EOS (fixed-length benchmarks).
        ``calculator``: see the module docstring (``True`` or a function).
        ``cancelled(row)`` is asked between chunks for each running row (e.g. a server
        whose client hung up): a row it answers True for ends there, finish reason
        ``"cancelled"``, and stops costing work.
        """
        if not prompts:
            return []
        requested = check_request(len(prompts) * num_samples, temperatures, num_samples,
                                  max_new_tokens, top_k, top_p)
        if top_p is not None and top_k is None:
            top_k = 256  # the nucleus is taken among the 256 most likely tokens
        opts = _Options(max_new_tokens=max_new_tokens, stop=tuple(stop),
                        stop_inclusive=tuple(stop_inclusive), stop_at_eos=stop_at_eos,
                        top_k=top_k, top_p=top_p, calculator=resolve_calculator(calculator),
                        cancelled=cancelled)
        encoded = [self.tokenizer.encode(p, add_bos=True) for p in prompts]
        rows = [_Row(prompt_len=len(encoded[r // num_samples])) for r in range(len(requested))]
        if opts.calculator is not None:
            self._answer_prompt_calls(prompts, rows, num_samples, opts.calculator)
        self._decode_rows(encoded, rows, np.asarray(requested, np.float32), num_samples,
                          seed, opts)
        return [self._generation(row, t, opts) for row, t in zip(rows, requested, strict=True)]

    def _decode_rows(self, encoded, rows, temps, num_samples, seed, opts: _Options) -> None:
        """Prefills each prompt once, then decodes chunk by chunk until every row ends."""
        p_len = prompt_slots(max(len(e) for e in encoded))
        tokens, valid = left_pad(encoded, p_len, self.tokenizer.pad_id())
        slack = max(4 * self.chunk, opts.max_new_tokens // 2) if opts.calculator else 0
        capacity = round_up(opts.max_new_tokens + slack, self.chunk)
        if self.memory_check:  # before anything is allocated: one line, or HTTP 400
            check_memory(self.config, rows=len(rows), prompt_tokens=p_len,
                         max_new_tokens=capacity, cache_bytes=np.dtype(self.cache_dtype).itemsize,
                         prompts=len(encoded))
        logits, cache, pos = self._prefill(self.state, tokens, valid, p_len + capacity)
        slot_valid = jnp.pad(jnp.asarray(valid), ((0, 0), (0, capacity)))
        if num_samples > 1:
            rep = lambda x: jnp.repeat(x, num_samples, axis=0)  # noqa: E731
            logits, pos, slot_valid = rep(logits), rep(pos), rep(slot_valid)
            cache = jax.tree_util.tree_map(rep, cache)
        batch = _Batch(active=np.arange(len(rows)), done=np.zeros(len(rows), dtype=bool),
                       cache=cache, logits=logits, pos=pos, slot_valid=slot_valid)
        base_key = jax.random.key(seed)
        produced = 0
        while produced < capacity and any(r.result is None for r in rows):
            forced, forced_on, sent = self._forced_tokens(rows, batch.active)
            carry, toks, lps = self._decode(
                self.state, batch.cache, batch.logits, batch.pos, batch.slot_valid,
                p_len + produced, jnp.asarray(batch.done),
                jnp.asarray(batch.active, dtype=jnp.int32), jnp.asarray(temps[batch.active]),
                jnp.asarray(forced), jnp.asarray(forced_on), base_key, produced,
                steps=self.chunk, top_k=opts.top_k, top_p=opts.top_p,
                stop_at_eos=opts.stop_at_eos,
            )
            batch.cache, batch.logits, batch.pos, batch.slot_valid, _ = carry
            rewinds = self._absorb(rows, batch, np.asarray(toks), np.asarray(lps), sent,
                                   p_len + produced, opts)
            produced += self.chunk
            if rewinds:
                self._rewind(batch, rewinds)
            if opts.cancelled is not None:
                self._cancel(rows, batch, opts)
            if self.compact:
                batch = _compact(batch)

    def _forced_tokens(self, rows, active):
        """The calculator tokens each batch slot must take in the next chunk."""
        forced = np.zeros((len(active), self.chunk), dtype=np.int32)
        forced_on = np.zeros((len(active), self.chunk), dtype=bool)
        sent: dict[int, int] = {}
        for b, r in enumerate(active):
            todo = rows[r].pending[: self.chunk]
            if todo and rows[r].result is None:
                forced[b, : len(todo)] = todo
                forced_on[b, : len(todo)] = True
                sent[int(r)] = len(todo)
        return forced, forced_on, sent

    def _absorb(self, rows, batch: _Batch, toks, lps, sent, first_slot: int, opts: _Options):
        """Appends a chunk to each live row, finishes rows and runs the calculator.

        Returns ``(batch slot, dropped cache slots, next position)`` for each row whose
        tail was replaced by a calculator result."""
        rewinds = []
        for b, r in enumerate(batch.active):
            row = rows[r]
            if row.result is not None or batch.done[b]:
                continue
            n_forced = sent.get(int(r), 0)
            row.tokens.extend(int(t) for t in toks[b])
            row.logprobs.extend(float(x) for x in lps[0][b])
            row.sample_logprobs.extend(float(x) for x in lps[1][b])
            row.inserted.extend(j < n_forced for j in range(len(toks[b])))
            row.slots.extend(range(first_slot, first_slot + len(toks[b])))
            del row.pending[:n_forced]
            if row.pending:
                continue
            finish, text = self._check(row.tokens, opts)
            dropped = self._calculate(row, finish[0] if finish else text, opts) \
                if opts.calculator else None
            if dropped is not None:
                rewinds.append((b, dropped, row.prompt_len + len(row.tokens)))
            elif finish is not None:
                row.result = finish
                batch.done[b] = True
        return rewinds

    def _calculate(self, row: _Row, text: str, opts: _Options) -> list[int] | None:
        """Looks for a new ``<<EXPR=`` in the row's ``text`` (up to any stop); if its
        value is known, cuts the row right after the ``=``, queues ``RESULT>>`` and
        returns the dropped cache slots. None if there is nothing to insert."""
        while True:
            match = _CALL.search(text, row.scan_from)
            if match is None:
                return None
            row.scan_from = match.end()
            result = opts.calculator(match.group(1))
            if result is not None:
                break
        n = self._tokens_covering(row.tokens, match.end())
        head = ""
        if len(self.tokenizer.decode(row.tokens[:n])) > match.end():  # '=' inside a token
            n -= 1
            head = text[len(self.tokenizer.decode(row.tokens[:n])): match.end()]
        dropped = row.truncate(n)
        row.pending = self.tokenizer.encode(head + result + ">>")
        return dropped

    def _cancel(self, rows, batch: _Batch, opts: _Options) -> None:
        """Ends the running rows that ``opts.cancelled`` names (kept as they stand)."""
        for b, r in enumerate(batch.active):
            row = rows[r]
            if row.result is None and opts.cancelled(int(r)):
                text, n, _ = self._finish(row.tokens, opts, force=True)
                row.result = (text, n, "cancelled")
                batch.done[b] = True

    def _rewind(self, batch: _Batch, rewinds) -> None:
        """Masks out dropped cache slots and rewinds positions (rows given calculator
        results). Gemma 2 keeps slot positions: its RoPE sees a gap, nothing else."""
        valid = np.array(batch.slot_valid)
        pos = np.array(batch.pos)
        for b, dropped, next_pos in rewinds:
            valid[b, dropped] = False
            if not self.slot_positions:
                pos[b] = next_pos
        batch.slot_valid, batch.pos = jnp.asarray(valid), jnp.asarray(pos)

    def _answer_prompt_calls(self, prompts, rows, num_samples: int, calculator) -> None:
        """A prompt ending in ``<<EXPR=`` gets its result before any sampling."""
        for i, prompt in enumerate(prompts):
            found = calculator_text(prompt, calculator)
            if found is not None:
                forced = self.tokenizer.encode(found)
                for row in rows[i * num_samples:(i + 1) * num_samples]:
                    row.pending = list(forced)

    def _generation(self, row: _Row, temperature: float, opts: _Options) -> Generation:
        text, n, reason = row.result or self._finish(row.tokens, opts, force=True)
        inserted = tuple(row.inserted[:n])
        # an inserted token was not the model's choice: it adds nothing to the log-prob
        logprobs = tuple(0.0 if ins else lp for lp, ins in zip(row.logprobs[:n], inserted,
                                                                 strict=True))
        sampled = tuple(0.0 if ins else lp for lp, ins in zip(row.sample_logprobs[:n],
                                                               inserted, strict=True))
        return Generation(text=text, token_ids=tuple(row.tokens[:n]), logprobs=logprobs,
                          finish_reason=reason, prompt_tokens=row.prompt_len,
                          temperature=temperature, inserted=inserted,
                          sample_logprobs=sampled)

    def _text(self, ids) -> str:
        eos = self.tokenizer.eos_id()
        return self.tokenizer.decode([t for t in ids if t != eos])

    def _finish(self, ids, opts: _Options, *, force: bool = False):
        """(text, tokens kept, reason) if the row is finished, else None."""
        return self._check(ids, opts, force=force)[0]

    def _check(self, ids, opts: _Options, *, force: bool = False):
        """(``_finish``'s answer, the decoded text it looked at): one decode serves both
        the stop check and the calculator's scan."""
        eos = self.tokenizer.eos_id()
        limit = min(len(ids), opts.max_new_tokens)
        hit_eos = opts.stop_at_eos and eos in ids[:limit]
        if hit_eos:
            limit = ids.index(eos) + 1
        text = self._text(ids[:limit])
        best = find_stop(text, opts.stop, opts.stop_inclusive)
        if best is not None:
            return (text[: best[1]], self._tokens_covering(ids[:limit], best[2]), "stop"), text
        if hit_eos:
            return (text, limit, "eos"), text
        if force or limit >= opts.max_new_tokens:
            return (text, limit, "length"), text
        return None, text

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


def left_pad(rows: Sequence[Sequence[int]], length: int, pad: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """Rows right-aligned in ``length`` slots: (tokens int32, valid bool)."""
    tokens = np.full((len(rows), length), pad, dtype=np.int32)
    valid = np.zeros((len(rows), length), dtype=bool)
    for i, ids in enumerate(rows):
        tokens[i, length - len(ids):] = ids
        valid[i, length - len(ids):] = True
    return tokens, valid


def _compact(batch: _Batch) -> _Batch:
    """Drops finished rows when the live rows fit a smaller power-of-two batch."""
    live = np.flatnonzero(~batch.done)
    size = _pow2(len(live))
    if len(live) == 0 or size >= len(batch.active):
        return batch
    filler = np.flatnonzero(batch.done)[: size - len(live)]
    keep = np.concatenate([live, filler])
    idx = jnp.asarray(keep)
    take = lambda x: jnp.take(x, idx, axis=0)  # noqa: E731
    return _Batch(active=batch.active[keep], done=batch.done[keep],
                  cache=jax.tree_util.tree_map(take, batch.cache), logits=take(batch.logits),
                  pos=take(batch.pos), slot_valid=take(batch.slot_valid))
