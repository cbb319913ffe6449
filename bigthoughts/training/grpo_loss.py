"""GRPO loss (DeepSeekMath, arXiv:2402.03300) on a Tunix Gemma policy, memory-lean.

The objective is Tunix's (``tunix.rl.algo_core.grpo_loss_fn``): the clipped
importance-ratio surrogate with group-relative advantages plus β·KL to a frozen
reference, aggregated as ``tunix.rl.common.aggregate_loss`` does (re-stated as a row
sum over a step-wide normaliser, so micro-batches add up: ``step_normalisers``) and the
KL estimator of ``tunix.rl.common.compute_kl_divergence``. What differs is how the per-token
log-probabilities are computed:

* Tunix runs every one of the B·G sequences through the whole prompt and
  materialises full-vocabulary logits for every position (262k floats per token:
  ~20 GB at 8 × 512 tokens for Gemma 3 270M). We prefill each *prompt* once, repeat
  its KV cache G times (the gradient still flows into the prompt's keys/values),
  run only the completions through the layers, and take each token's log-probability
  from tiles of rows × vocabulary with an online logsumexp, recomputed in the
  backward pass (``models.fused_logprobs``: no tensor of logits larger than a tile);
* Tunix computes the entropy from the full logits for logging; we take it from the same
  tiles as the log-probs (``aux["entropy"]``: nats per token at T, aggregated as the loss is).

When prompt + completion exceed Gemma 3's sliding window the cache trick would see
Tunix's prefill-style window mask misplaced, so we fall back to running full
sequences (exact, just more compute).

Log-probabilities are taken at the rollout temperature T (logits / T), as Tunix's
``compute_per_token_logps`` and TRL do: the ratio π_θ/π_old and the KL then
compare the distributions the completions were actually sampled from. The loss
variants (GRPO, DAPO's clip-higher ε_low/ε_high, Dr. GRPO) are knobs of
:func:`grpo_loss` and :func:`group_advantages`; ``tests/test_grpo_parity.py``
checks loss and LoRA gradients against Tunix's ``grpo_loss_fn``. See
docs/DESIGN-NOTES.md, "The GRPO objective".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from tunix.rl import common as tunix_common

from bigthoughts.models import forward


@dataclass(frozen=True)
class RolloutBatch:
    """Token arrays of one GRPO step (numpy or jax).

    prompt_tokens [Bp, P] left-padded, prompt_valid [Bp, P]; completions are
    prompt-major: rows i*G .. i*G+G-1 belong to prompt i. completion_tokens [B, C]
    right-padded, completion_mask [B, C]; advantages [B]; ref_logps [B, C].
    """

    prompt_tokens: jax.Array
    prompt_valid: jax.Array
    completion_tokens: jax.Array
    completion_mask: jax.Array
    advantages: jax.Array
    ref_logps: jax.Array | None = None
    old_logps: jax.Array | None = None
    # the whole step's normalisers (``step_normalisers``) when this is one micro-batch of
    # it: the loss and metrics then add up over the micro-batches to the step's
    normalisers: jax.Array | None = None
    # log π_sampler,T of each completion token as the rollout engine drew it [B, C]:
    # compared with the trainer's own (the mismatch metrics), never trained on
    sampler_logps: jax.Array | None = None

    @property
    def groups(self) -> int:
        return self.prompt_tokens.shape[0]

    def groups_slice(self, start: int, stop: int, group: int) -> RolloutBatch:
        """Groups ``start .. stop - 1``: their prompts and their G completions each."""
        rows = slice(start * group, stop * group)

        def cut(x, sl):
            return None if x is None else x[sl]

        return RolloutBatch(
            prompt_tokens=self.prompt_tokens[start:stop],
            prompt_valid=self.prompt_valid[start:stop],
            completion_tokens=self.completion_tokens[rows],
            completion_mask=self.completion_mask[rows], advantages=self.advantages[rows],
            ref_logps=cut(self.ref_logps, rows), old_logps=cut(self.old_logps, rows),
            normalisers=self.normalisers, sampler_logps=cut(self.sampler_logps, rows))


jax.tree_util.register_dataclass(
    RolloutBatch,
    data_fields=["prompt_tokens", "prompt_valid", "completion_tokens", "completion_mask",
                 "advantages", "ref_logps", "old_logps", "normalisers", "sampler_logps"],
    meta_fields=[],
)


def step_normalisers(mask, loss_agg_mode: str) -> jax.Array:
    """[the loss's denominator, the count of completion tokens] of a whole step's
    completion ``mask``. Every ``loss_agg_mode`` of Tunix's ``aggregate_loss`` is a sum
    over rows (``_numerators``) divided by one step-wide number: the completion tokens
    (token-mean) or the rows that have any (the sequence modes). Micro-batches that
    divide by the step's numbers add up to the step's loss and metrics exactly."""
    mask = jnp.asarray(mask, jnp.float32)
    tokens = mask.sum()
    rows = (mask.sum(axis=-1) > 0).sum().astype(jnp.float32)
    floor = 1e-6 if loss_agg_mode == "seq-mean-token-sum" else 1.0
    denominator = jnp.maximum(tokens, 1.0) if loss_agg_mode == "token-mean" \
        else jnp.maximum(rows, floor)
    return jnp.stack([denominator, jnp.maximum(tokens, 1.0)])


def _numerator(per_token, mask, loss_agg_mode: str):
    """The sum over rows that ``aggregate_loss`` divides by the step's denominator."""
    summed = (per_token.astype(jnp.float32) * mask).sum(axis=-1)
    if loss_agg_mode == "sequence-mean-token-mean":
        return (summed / jnp.maximum(mask.sum(axis=-1), 1.0)).sum()
    if loss_agg_mode == "sequence-mean-token-scale":
        return (summed / per_token.shape[-1]).sum()
    if loss_agg_mode in ("token-mean", "seq-mean-token-sum", "sequence-mean-token-sum-norm"):
        return summed.sum()
    raise ValueError(f"unsupported loss_agg_mode {loss_agg_mode!r}")


def _uses_slot_positions(model) -> bool:
    return hasattr(model, "final_logits_softcap")  # Tunix Gemma 2: see generate.py


def _window(model) -> int | None:
    return getattr(model.config, "sliding_window_size", None)


def completion_logps(model, prompt_tokens, prompt_valid, completion_tokens, group: int,
                     *, remat: bool = False, temperature: float = 1.0,
                     with_entropy: bool = False):
    """log π_T(completion token | prefix) for each completion position: [Bp*G, C]; with
    ``with_entropy``, also the entropy of π_T at each position (same pass, same shape).

    π_T is the policy at temperature T (softmax of logits / T; T = 0 or 1: plain).
    """
    bp, p = prompt_tokens.shape
    b, c = completion_tokens.shape
    window = _window(model)
    if not _uses_slot_positions(model) and window is not None and p + c > window:
        return _full_sequence_logps(model, prompt_tokens, prompt_valid, completion_tokens,
                                    group, remat=remat, temperature=temperature,
                                    with_entropy=with_entropy)
    cache_size = p + c
    if _uses_slot_positions(model):
        positions = jnp.broadcast_to(jnp.arange(p), (bp, p))
    else:
        positions = jnp.maximum(jnp.cumsum(prompt_valid, axis=-1) - 1, 0)
    causal = jnp.tril(jnp.ones((p, p), dtype=bool))[None] & prompt_valid[:, None, :].astype(bool)
    mask = jnp.pad(causal, ((0, 0), (0, 0), (0, cache_size - p)))
    cache = forward.init_cache(model.config, bp, cache_size, model.embedder.input_embedding.dtype)
    hidden, cache = forward.hidden_states(model, prompt_tokens, positions, cache, mask,
                                          remat=remat)
    rep = lambda x: jnp.repeat(x, group, axis=0)  # noqa: E731
    cache = jax.tree_util.tree_map(rep, cache)
    last_hidden = rep(hidden[:, -1])
    inputs = completion_tokens[:, :-1]
    next_pos = rep(positions[:, -1] + 1)
    comp_pos = next_pos[:, None] + jnp.arange(c - 1)[None]
    prompt_part = jnp.broadcast_to(rep(prompt_valid.astype(bool))[:, None, :], (b, c - 1, p))
    comp_part = jnp.tril(jnp.ones((c - 1, c), dtype=bool))[None].repeat(b, axis=0)
    comp_mask = jnp.concatenate([prompt_part, comp_part], axis=-1)  # [B, C-1, P+C]
    comp_hidden, _ = forward.hidden_states(model, inputs, comp_pos, cache, comp_mask,
                                           remat=remat)
    all_hidden = jnp.concatenate([last_hidden[:, None], comp_hidden], axis=1)
    return forward.token_logprobs(model, all_hidden, completion_tokens, temperature=temperature,
                                  with_entropy=with_entropy)


def _full_sequence_logps(model, prompt_tokens, prompt_valid, completion_tokens, group, *,
                         remat=False, temperature=1.0, with_entropy=False):
    rep = lambda x: jnp.repeat(x, group, axis=0)  # noqa: E731
    p = prompt_tokens.shape[1]
    c = completion_tokens.shape[1]
    tokens = jnp.concatenate([rep(prompt_tokens), completion_tokens], axis=1)
    valid = jnp.concatenate([rep(prompt_valid.astype(bool)),
                             jnp.ones_like(completion_tokens, dtype=bool)], axis=1)
    positions = jnp.maximum(jnp.cumsum(valid, axis=-1) - 1, 0)
    length = p + c
    mask = jnp.tril(jnp.ones((length, length), dtype=bool))[None] & valid[:, None, :]
    hidden, _ = forward.hidden_states(model, tokens, positions, None, mask, remat=remat)
    return forward.token_logprobs(model, hidden[:, p - 1: p + c - 1], completion_tokens,
                                  temperature=temperature, with_entropy=with_entropy)


def sampler_weights(trainer, sampler, mask, mode: str, cap: float):
    """Importance weights of the sampled tokens, π_trainer / π_sampler, per ``mode``:
    ``token`` min(w_t, C); ``sequence`` min(Π_t w_t, C) for every token of the row;
    ``token_mask`` w_t where w_t <= C, else 0. Stop-gradient; 0 where ``mask`` is 0."""
    log_ratio = jnp.clip(jax.lax.stop_gradient(trainer) - sampler, -20.0, 20.0) * mask
    if mode == "sequence":
        row = jnp.exp(jnp.clip(log_ratio.sum(axis=-1, keepdims=True), -20.0, 20.0))
        weights = jnp.minimum(row, cap) * jnp.ones_like(log_ratio)
    elif mode == "token_mask":
        ratio = jnp.exp(log_ratio)
        weights = jnp.where(ratio <= cap, ratio, 0.0)
    else:
        weights = jnp.minimum(jnp.exp(log_ratio), cap)
    return jax.lax.stop_gradient(weights * mask)


def mismatch_metrics(trainer, sampler, mask, tokens) -> dict:
    """How far the rollout engine's log-probs of its draws are from the trainer's own for
    the same tokens at the same T: mean and largest |Δ log-prob|, the share of tokens
    whose ratio trainer/sampler is outside [0.5, 2], and the per-token estimate of
    KL(sampler ‖ trainer) (the mean of log q_sampler - log p_trainer over its draws).
    Sums over ``mask`` divided by the step's ``tokens``, so micro-batches add up (the
    largest is a maximum: ``SplitUpdate.accumulated`` combines ``*_max`` keys so)."""
    delta = (trainer - sampler) * mask
    outside = (jnp.abs(delta) > jnp.log(2.0)) * mask
    return {"mismatch/abs_mean": jnp.abs(delta).sum() / tokens,
            "mismatch/abs_max": jnp.abs(delta).max(),
            "mismatch/ratio_outside": outside.sum() / tokens,
            "mismatch/kl": -delta.sum() / tokens}


def group_advantages(rewards: np.ndarray, group: int, *,
                     scale_by_std: bool = True) -> np.ndarray:
    """Group-relative advantages Â_i of the rewards r of G = ``group`` completions per
    prompt (rows prompt-major, as in :class:`RolloutBatch`).

    GRPO: Â_i = (r_i - mean(r)) / (std(r) + 1e-6), std with Bessel's correction
    (ddof=1), exactly Tunix's ``algo_core.compute_advantages``. Dr. GRPO
    (``scale_by_std=False``): Â_i = r_i - mean(r), Tunix's
    ``compute_drgrpo_advantages``. Returns float64 [B].

    >>> group_advantages(np.array([1.0, 0.0, 3.0, 3.0]), 2, scale_by_std=False)
    array([ 0.5, -0.5,  0. ,  0. ])
    """
    r = np.asarray(rewards, dtype=np.float64)
    if group < 1 or r.ndim != 1 or r.size % group:
        raise ValueError(f"need 1-D rewards in whole groups of {group}, got shape {r.shape}")
    grouped = r.reshape(-1, group)
    out = grouped - grouped.mean(axis=1, keepdims=True)
    if scale_by_std:
        out = out / (grouped.std(axis=1, ddof=1, keepdims=True) + 1e-6)
    return out.reshape(-1)


def overlong_weights(finish_reasons: Sequence[str]) -> np.ndarray:
    """DAPO's overlong filtering (arXiv:2503.14476, §3.4): weight 0 for a completion
    cut off by the token limit (finish reason ``"length"``), 1 otherwise. Multiplied
    into the completion mask, it takes truncated samples out of the loss entirely
    (policy term and KL, numerator and token/sequence counts). Returns float32 [B].

    >>> overlong_weights(["stop", "length", "eos"])
    array([1., 0., 1.], dtype=float32)
    """
    return np.asarray([reason != "length" for reason in finish_reasons], dtype=np.float32)


def grpo_loss(model, batch: RolloutBatch, *, group: int, beta: float, epsilon: float,
              epsilon_high: float | None = None,
              loss_agg_mode: str = "sequence-mean-token-mean", kl_mode: str = "low_var_kl",
              temperature: float = 1.0, remat: bool = False, correction: str | None = None,
              correction_cap: float = 2.0):
    """Returns ``(loss, aux)``: the clipped surrogate + β·KL of Tunix's ``grpo_loss_fn``.

    Per token t of completion i, with ρ = π_θ,T / π_old,T (π_old = π_θ detached when
    ``batch.old_logps`` is None, i.e. μ = 1) and Â_i the advantage::

        ℓ_it = max(-Â_i·ρ, -Â_i·clip(ρ, 1 - ε_low, 1 + ε_high)) + β·KL_it

    aggregated over the completion mask by ``loss_agg_mode`` (as Tunix's
    ``aggregate_loss``; its normalisers are the step's when ``batch`` is a micro-batch).
    β = ``beta``, ε_low = ``epsilon``, ε_high = ``epsilon_high`` (None: = ε_low; DAPO's
    clip-higher sets it larger), KL by ``kl_mode``, T = ``temperature`` (the rollout
    temperature; old/ref log-probs must use the same). ``correction``: the sampler's
    truncated importance sampling (:func:`sampler_weights`), on the surrogate only.
    """
    logps, entropy = completion_logps(model, batch.prompt_tokens, batch.prompt_valid,
                                      batch.completion_tokens, group, remat=remat,
                                      temperature=temperature, with_entropy=True)
    high = epsilon if epsilon_high is None else epsilon_high
    mask = batch.completion_mask.astype(jnp.float32)
    old = jax.lax.stop_gradient(logps) if batch.old_logps is None else batch.old_logps
    log_ratio = jnp.clip(logps - old, -20.0, 20.0)
    ratio = jnp.exp(log_ratio)
    adv = batch.advantages.astype(jnp.float32)[:, None]
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - epsilon, 1.0 + high)
    per_token = jnp.maximum(unclipped, clipped)
    if correction is not None and batch.sampler_logps is not None:
        weights = sampler_weights(old, batch.sampler_logps, mask, correction, correction_cap)
        per_token = per_token * weights
    norms = step_normalisers(mask, loss_agg_mode) if batch.normalisers is None \
        else batch.normalisers
    denom = norms[1]  # the step's completion tokens, for the token-weighted metrics
    pg_loss = _numerator(per_token, mask, loss_agg_mode) / norms[0]
    aux = {"pg_loss": pg_loss,
           "clip_fraction": ((clipped > unclipped) * mask).sum() / denom,
           "policy_logp": (logps * mask).sum() / denom,
           # logged, not trained on (as Tunix's aux["entropy"]: aggregated like the loss);
           # the same fused pass computes it with the log-probs
           "entropy": _numerator(jax.lax.stop_gradient(entropy), mask, loss_agg_mode)
           / norms[0]}
    if batch.sampler_logps is not None:
        aux.update(mismatch_metrics(jax.lax.stop_gradient(logps), batch.sampler_logps, mask,
                                    denom))
    loss = pg_loss
    if batch.ref_logps is not None:
        kl = tunix_common.compute_kl_divergence(logps, batch.ref_logps, kl_mode)
        kl_loss = _numerator(kl, mask, loss_agg_mode) / norms[0]
        aux["kl"] = (kl * mask).sum() / denom
        if beta:
            loss = loss + beta * kl_loss
    return loss, aux
