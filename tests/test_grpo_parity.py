"""Our GRPO loss and its LoRA gradients equal Tunix's ``compute_per_token_logps`` +
``algo_core.grpo_loss_fn`` on the same batch (tiny random Gemma 3 with LoRA).

Tunix's side is Tunix's own code end to end: its ``Gemma3.__call__`` (LoRA applied
by qwix to that method), its left/right padding handling (``process_ids``), its
temperature scaling, clipping, KL and aggregation, and its ``GRPOConfig`` /
``DAPOConfig`` / ``DrGRPOConfig`` presets. Our side is the memory-lean path the
trainer uses: each prompt prefilled once, its KV cache repeated G times.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import qwix
from flax import nnx
from tunix.rl import algo_core
from tunix.rl import common as tunix_common
from tunix.rl.grpo.dapo_learner import DAPOConfig
from tunix.rl.grpo.drgrpo_learner import DrGRPOConfig
from tunix.rl.grpo.grpo_learner import GRPOConfig

from bigthoughts.models.build import build_model, random_params
from bigthoughts.models.lora import LORA_TARGETS
from bigthoughts.training import grpo_loss as grpo
from bigthoughts.training.config import GRPOSection
from tests.tiny import tiny_config

PAD, EOS = 0, 1
G = 3
PROMPT_LENGTHS = (4, 7)  # left-padded to P = 7
COMPLETION_LENGTHS = (6, 3, 1, 5, 6, 2)  # right-padded to C = 6


def _lora_pair(window: int, seed: int):
    """The same tiny Gemma 3 + LoRA twice: qwix intercepting our ``hidden_states``
    (what the trainer does) and Tunix's ``__call__`` (what Tunix's loss calls), with
    identical random LoRA weights (non-zero B, so every LoRA matrix gets a gradient)."""
    config = dataclasses.replace(tiny_config(), sliding_window_size=window)
    base = build_model("gemma3", config, random_params("gemma3", config, seed=seed, scale=0.3))
    provider = qwix.LoraProvider(module_path=LORA_TARGETS, rank=4, alpha=8.0)
    args = (jnp.ones((1, 4), jnp.int32), jnp.arange(4)[None], None,
            jnp.tril(jnp.ones((1, 4, 4), dtype=bool)))
    ours = qwix.apply_lora_to_model(base, provider, *args, methods=("hidden_states",),
                                    rngs=nnx.Rngs(0))
    theirs = qwix.apply_lora_to_model(base, provider, *args, methods=("__call__",),
                                      rngs=nnx.Rngs(0))
    rng = np.random.default_rng(seed + 1)
    lora = jax.tree_util.tree_map(
        lambda x: jnp.asarray(rng.normal(0.0, 0.2, x.shape), x.dtype),
        nnx.state(ours, nnx.LoRAParam))
    nnx.update(ours, lora)
    nnx.update(theirs, lora)
    paths = [p for p, _ in nnx.to_flat_state(nnx.state(ours, nnx.LoRAParam))]
    assert paths == [p for p, _ in nnx.to_flat_state(nnx.state(theirs, nnx.LoRAParam))]
    assert len(paths) > 0
    return ours, theirs


def _data(seed: int):
    rng = np.random.default_rng(seed)
    p = max(PROMPT_LENGTHS)
    prompts = np.full((len(PROMPT_LENGTHS), p), PAD, np.int32)
    for i, n in enumerate(PROMPT_LENGTHS):
        prompts[i, p - n:] = rng.integers(4, 260, n)
    c = max(COMPLETION_LENGTHS)
    completions = np.full((len(COMPLETION_LENGTHS), c), PAD, np.int32)
    for i, n in enumerate(COMPLETION_LENGTHS):
        completions[i, :n] = rng.integers(4, 260, n)
    return SimpleNamespace(prompts=prompts, valid=prompts != PAD, completions=completions,
                           mask=(completions != PAD).astype(np.float32),
                           advantages=rng.normal(size=len(COMPLETION_LENGTHS)).astype(np.float32),
                           rng=rng)


@pytest.fixture(scope="module")
def shared_prefill():
    """Prompt + completion (13) within the sliding window (64): the shared-prefill path."""
    return _lora_pair(window=64, seed=0)


@pytest.fixture(scope="module")
def windowed():
    """Prompt + completion (13) beyond the sliding window (8): the full-sequence path."""
    return _lora_pair(window=8, seed=2)


def _tunix_logps(model, data, temperature):
    graphdef, state = nnx.split(model)
    return np.asarray(tunix_common.compute_per_token_logps(
        graphdef, state, jnp.asarray(np.repeat(data.prompts, G, axis=0)),
        jnp.asarray(data.completions), PAD, EOS, temperature=temperature))


def _batch_inputs(theirs, data, *, beta, mu, temperature):
    """ref (β > 0) and old (μ > 1) log-probs: the policy's, perturbed, so that the
    ratio differs from 1 (clipping acts) and the KL is not zero."""
    logps = _tunix_logps(theirs, data, temperature)
    ref = old = None
    if beta:
        ref = (logps + data.rng.normal(0.0, 0.3, logps.shape)).astype(np.float32)
    if mu > 1:
        old = (logps + data.rng.normal(0.0, 0.3, logps.shape)).astype(np.float32)
    return ref, old


def _ours(model, data, ref, old, section: GRPOSection):
    graphdef, lora, rest = nnx.split(model, nnx.LoRAParam, ...)
    batch = grpo.RolloutBatch(
        prompt_tokens=jnp.asarray(data.prompts), prompt_valid=jnp.asarray(data.valid),
        completion_tokens=jnp.asarray(data.completions), completion_mask=jnp.asarray(data.mask),
        advantages=jnp.asarray(data.advantages), ref_logps=ref, old_logps=old)

    def loss(lora_state):
        return grpo.grpo_loss(
            nnx.merge(graphdef, lora_state, rest), batch, group=G, beta=section.beta,
            epsilon=section.epsilon, epsilon_high=section.epsilon_high,
            loss_agg_mode=section.loss_agg_mode, kl_mode=section.kl_mode,
            temperature=section.resolved_logp_temperature)

    (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(lora)
    return float(value), aux, dict(nnx.to_flat_state(grads))


def _theirs(model, data, ref, old, algo, **extra):
    """Tunix's loss and LoRA gradients; ``extra``: more ``TrainExample`` fields."""
    graphdef, lora, rest = nnx.split(model, nnx.LoRAParam, ...)
    example = tunix_common.TrainExample(
        prompt_ids=jnp.asarray(np.repeat(data.prompts, G, axis=0)),
        prompt_mask=jnp.asarray(np.repeat(data.valid, G, axis=0)),
        completion_ids=jnp.asarray(data.completions), completion_mask=jnp.asarray(data.mask),
        advantages=jnp.asarray(data.advantages), ref_per_token_logps=ref,
        old_per_token_logps=old, **extra)

    def loss(lora_state):
        return algo_core.grpo_loss_fn(nnx.merge(graphdef, lora_state, rest), example, algo,
                                      PAD, EOS)

    (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(lora)
    return float(value), aux, dict(nnx.to_flat_state(grads))


def _tunix_config(section: GRPOSection, cls=GRPOConfig):
    kwargs = {} if cls is not GRPOConfig else {
        "beta": section.beta, "epsilon": section.epsilon,
        "loss_agg_mode": section.loss_agg_mode}
    if cls is DAPOConfig:
        kwargs["overlong_buffer"] = None  # reward shaping, not part of the loss
    algo = cls(num_generations=G, kl_loss_mode=section.kl_mode, **kwargs)
    if cls is GRPOConfig:
        algo.epsilon_high = section.epsilon_high or section.epsilon
    # RLCluster sets it from the rollout config; an override of ours is Tunix at that T
    algo.temperature = section.resolved_logp_temperature
    return algo


def _assert_parity(pair, section, algo, *, mu, seed=0, window_path=False, monkeypatch=None):
    ours_model, theirs_model = pair
    data = _data(seed)
    ref, old = _batch_inputs(theirs_model, data, beta=section.beta, mu=mu,
                             temperature=section.resolved_logp_temperature)
    if monkeypatch is not None and not window_path:  # prove the shared prefill is used
        monkeypatch.setattr(grpo, "_full_sequence_logps", _must_not_run)
    ours_loss, ours_aux, ours_grads = _ours(ours_model, data, ref, old, section)
    ref_loss, ref_aux, ref_grads = _theirs(theirs_model, data, ref, old, algo)
    np.testing.assert_allclose(ours_loss, ref_loss, rtol=1e-4)
    assert ours_grads.keys() == ref_grads.keys()
    biggest = max(float(np.abs(np.asarray(g[...])).max()) for g in ref_grads.values())
    assert biggest > 1e-3  # gradients that are all ~0 would prove nothing
    for path, g in ref_grads.items():  # rtol 1e-4; atol for float32 re-association
        want = np.asarray(g[...])
        np.testing.assert_allclose(np.asarray(ours_grads[path][...]), want, rtol=1e-4,
                                   atol=1e-5 * np.abs(want).max(), err_msg=str(path))
    np.testing.assert_allclose(float(ours_aux["clip_fraction"]), float(ref_aux["pg_clipfrac"]),
                               rtol=1e-5)
    if ref is not None:
        np.testing.assert_allclose(float(ours_aux["kl"]), float(ref_aux["kl"]), rtol=1e-4)
    # the policy's entropy: ours from the fused tiles, Tunix's from its full logits
    assert float(ref_aux["entropy"]) > 0.1
    np.testing.assert_allclose(float(ours_aux["entropy"]), float(ref_aux["entropy"]), rtol=1e-4)
    return ours_aux


def _must_not_run(*args, **kwargs):
    raise AssertionError("took the full-sequence fallback, not the shared prefill")


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("mu", [1, 2])
def test_grpo_matches_tunix_for_beta_and_mu(shared_prefill, monkeypatch, beta, mu):
    section = GRPOSection(beta=beta, temperature=0.7)
    aux = _assert_parity(shared_prefill, section, _tunix_config(section), mu=mu,
                         monkeypatch=monkeypatch)
    if mu > 1:  # old log-probs ≠ the policy's: the ratio moved and clipping acted
        assert float(aux["clip_fraction"]) > 0


@pytest.mark.parametrize("mode", GRPOSection.LOSS_AGG_MODES)
def test_each_loss_aggregation_matches_tunix(shared_prefill, monkeypatch, mode):
    section = GRPOSection(loss_agg_mode=mode, temperature=0.7)
    _assert_parity(shared_prefill, section, _tunix_config(section), mu=2, seed=1,
                   monkeypatch=monkeypatch)


@pytest.mark.parametrize("kl_mode", ["kl", "mse_kl"])
def test_other_kl_estimators_match_tunix(shared_prefill, monkeypatch, kl_mode):
    section = GRPOSection(kl_mode=kl_mode, temperature=0.7)
    _assert_parity(shared_prefill, section, _tunix_config(section), mu=2, seed=2,
                   monkeypatch=monkeypatch)


@pytest.mark.parametrize("temperature, logp_temperature, want", [
    (1.0, None, 1.0), (1.3, None, 1.3), (0.7, 1.0, 1.0)])
def test_temperature_is_applied_as_tunix_does(shared_prefill, monkeypatch, temperature,
                                              logp_temperature, want):
    section = GRPOSection(temperature=temperature, logp_temperature=logp_temperature)
    assert section.resolved_logp_temperature == want  # default: the rollout temperature
    _assert_parity(shared_prefill, section, _tunix_config(section), mu=2, seed=3,
                   monkeypatch=monkeypatch)


def test_logps_differ_with_temperature(shared_prefill):
    """The temperature is not a no-op: T = 0.7 and T = 1 log-probs differ, and
    overriding ``logp_temperature`` is what changes them."""
    data = _data(0)
    warm, plain = (_tunix_logps(shared_prefill[1], data, t) for t in (0.7, 1.0))
    assert np.abs((warm - plain) * data.mask).max() > 1e-2
    assert GRPOSection(temperature=0.7, logp_temperature=1.0).resolved_logp_temperature == 1.0


# the knob settings docs/DESIGN-NOTES.md and GRPOSection's docstring give for each variant
VARIANTS = {
    "dapo": ({"beta": 0.0, "epsilon_high": 0.28, "loss_agg_mode": "token-mean",
              "overlong_filter": True}, DAPOConfig),
    "dr_grpo": ({"scale_advantages_by_std": False,
                 "loss_agg_mode": "sequence-mean-token-scale"}, DrGRPOConfig),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_settings_match_tunix_configs(shared_prefill, monkeypatch, variant):
    knobs, tunix_cls = VARIANTS[variant]
    section = GRPOSection(temperature=0.7, **knobs)
    algo = _tunix_config(section, tunix_cls)
    assert section.loss_agg_mode == algo.loss_agg_mode
    assert section.epsilon == algo.epsilon
    assert (section.epsilon_high or section.epsilon) == getattr(algo, "epsilon_high",
                                                                algo.epsilon)
    assert section.beta == (algo.beta or 0.0)
    assert section.scale_advantages_by_std == (algo.advantage_estimator == "grpo")
    _assert_parity(shared_prefill, section, algo, mu=2, seed=4, monkeypatch=monkeypatch)


@pytest.mark.parametrize("beta, mu", [(0.04, 1), (0.04, 2)])
def test_full_sequence_fallback_matches_tunix(windowed, beta, mu):
    section = GRPOSection(beta=beta, temperature=0.7)
    _assert_parity(windowed, section, _tunix_config(section), mu=mu, seed=5, window_path=True)


def test_truncated_importance_sampling_matches_tunix_sampler_is(shared_prefill):
    """``grpo.sampler_correction: token``: our loss and LoRA gradients with the sampler's
    log-probs equal Tunix's ``grpo_loss_fn`` given ``sampler_is_weights`` computed here
    (numpy) as min(π_trainer / π_sampler, C) on the completion mask, as its agentic
    learner computes them."""
    ours_model, theirs_model = shared_prefill
    data = _data(5)
    section = GRPOSection(beta=0.04, temperature=0.7, sampler_correction="token")
    t = section.resolved_logp_temperature
    ref, _ = _batch_inputs(theirs_model, data, beta=section.beta, mu=1, temperature=t)
    trainer = _tunix_logps(theirs_model, data, t)
    sampler = (trainer + data.rng.normal(0.0, 0.6, trainer.shape)).astype(np.float32)
    weights = np.minimum(np.exp(np.clip(trainer - sampler, -20, 20)), 2.0) * data.mask
    assert 0 < (weights[data.mask > 0] >= 2.0).sum() < (data.mask > 0).sum()  # the cap acts

    graphdef, lora, rest = nnx.split(ours_model, nnx.LoRAParam, ...)
    batch = grpo.RolloutBatch(
        prompt_tokens=jnp.asarray(data.prompts), prompt_valid=jnp.asarray(data.valid),
        completion_tokens=jnp.asarray(data.completions), completion_mask=jnp.asarray(data.mask),
        advantages=jnp.asarray(data.advantages), ref_logps=ref,
        sampler_logps=jnp.asarray(sampler))

    def ours(lora_state):
        return grpo.grpo_loss(nnx.merge(graphdef, lora_state, rest), batch, group=G,
                              beta=section.beta, epsilon=section.epsilon, temperature=t,
                              correction="token", correction_cap=2.0)

    (ours_loss, aux), ours_grads = jax.value_and_grad(ours, has_aux=True)(lora)
    their_loss, _, want = _theirs(theirs_model, data, ref, None, _tunix_config(section),
                                  sampler_is_weights=jnp.asarray(weights, jnp.float32))
    np.testing.assert_allclose(float(ours_loss), their_loss, rtol=1e-4)
    mine = dict(nnx.to_flat_state(ours_grads))
    for path, g in want.items():
        w = np.asarray(g[...])
        np.testing.assert_allclose(np.asarray(mine[path][...]), w, rtol=1e-4,
                                   atol=1e-5 * np.abs(w).max(), err_msg=str(path))
    plain = grpo.grpo_loss(ours_model, batch, group=G, beta=section.beta,
                           epsilon=section.epsilon, temperature=t)[0]
    assert abs(float(plain) - float(ours_loss)) > 1e-4  # the weights changed the loss
    assert float(aux["mismatch/ratio_outside"]) > 0
