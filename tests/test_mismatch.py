"""The rollout engine's log-probs of its draws against the trainer's (issue 32): both
engines record them at the sampling temperature, and each GRPO step logs how far apart
the two computations are."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from bigthoughts.training.grpo_loss import mismatch_metrics


def test_metrics_on_known_offsets():
    trainer = jnp.zeros((2, 4))
    sampler = jnp.asarray([[0.1, -0.1, 1.0, 0.0], [0.0, -2.0, 5.0, 0.0]])
    mask = jnp.asarray([[1, 1, 1, 0], [1, 1, 0, 0]], jnp.float32)  # 5 tokens count
    got = {k: float(v) for k, v in mismatch_metrics(trainer, sampler, mask, 5.0).items()}
    assert got["mismatch/abs_mean"] == pytest.approx((0.1 + 0.1 + 1.0 + 0.0 + 2.0) / 5)
    assert got["mismatch/abs_max"] == pytest.approx(2.0)  # the masked 5.0 does not count
    assert got["mismatch/ratio_outside"] == pytest.approx(2 / 5)  # |Δ| > log 2: 1.0 and 2.0
    assert got["mismatch/kl"] == pytest.approx((0.1 - 0.1 + 1.0 + 0.0 - 2.0) / 5)


def test_the_jax_sampler_and_the_trainer_agree_at_the_rollout_temperature(tmp_path):
    """The JAX sampler's recorded log-probs (at T = 0.8) are the trainer's own for the same
    tokens, to float32 rounding: the step's mismatch metrics say so."""
    from bigthoughts.training.grpo_trainer import GRPOTrainer
    from tests.train_toy import lowercase_share, toy_setup

    config, examples, loaded = toy_setup(str(tmp_path))
    config = dataclasses.replace(config, grpo=dataclasses.replace(config.grpo, temperature=0.8))
    trainer = GRPOTrainer(config, tmp_path, examples=examples, loaded=loaded,
                          reward_fns=[lowercase_share])
    gens = trainer.sampler.generate(["say a 1"], temperatures=0.8, num_samples=3,
                                    max_new_tokens=6, seed=3)
    for g in gens:
        assert len(g.sample_logprobs) == len(g.token_ids)
        assert all(lp <= 0.0 for lp in g.sample_logprobs)
        assert g.sample_logprobs != g.logprobs  # T = 0.8, not the model's T = 1
    greedy = trainer.sampler.generate(["say a 1"], temperatures=0.0, max_new_tokens=4)[0]
    assert set(greedy.sample_logprobs) == {0.0}  # a greedy draw is certain
    record = trainer.train_step()
    assert record["mismatch/abs_max"] < 1e-3, record
    assert record["mismatch/abs_mean"] < 1e-4 and record["mismatch/ratio_outside"] == 0.0
    assert np.isfinite(record["entropy"]) and record["entropy"] > 0


def test_sampler_weights_per_mode():
    from bigthoughts.training.grpo_loss import sampler_weights

    trainer = jnp.log(jnp.asarray([[1.0, 3.0, 0.5, 9.0]]))  # ratios to a sampler at 0
    sampler = jnp.zeros((1, 4))
    mask = jnp.asarray([[1.0, 1.0, 1.0, 0.0]])  # the 4th is a calculator token
    token = np.asarray(sampler_weights(trainer, sampler, mask, "token", 2.0))
    np.testing.assert_allclose(token, [[1.0, 2.0, 0.5, 0.0]], rtol=1e-6)
    dropped = np.asarray(sampler_weights(trainer, sampler, mask, "token_mask", 2.0))
    np.testing.assert_allclose(dropped, [[1.0, 0.0, 0.5, 0.0]], rtol=1e-6)
    seq = np.asarray(sampler_weights(trainer, sampler, mask, "sequence", 2.0))
    np.testing.assert_allclose(seq, [[1.5, 1.5, 1.5, 0.0]], rtol=1e-6)  # 1 * 3 * 0.5 < 2
    capped = np.asarray(sampler_weights(trainer * 2, sampler, mask, "sequence", 2.0))
    np.testing.assert_allclose(capped, [[2.0, 2.0, 2.0, 0.0]], rtol=1e-6)  # 2.25 -> 2


@pytest.mark.parametrize("override, message", [
    ("grpo.sampler_correction=tis", "sampler_correction"),
    ("grpo.sampler_correction_cap=0.5", "sampler_correction_cap"),
    ("grpo.sampler_correction=token grpo.logp_temperature=0.7", "rollout temperature")])
def test_bad_correction_settings_are_named(override, message):
    from bigthoughts.config import ConfigError, load_yaml
    from bigthoughts.training.config import TrainConfig
    from tests.conftest import REPO_ROOT

    with pytest.raises(ConfigError, match=message):
        load_yaml(TrainConfig, REPO_ROOT / "configs" / "gemma3-270m-cpu.yaml", override.split())


def _reference_loss(logps, old, sampler, ref, adv, mask, mode, cap, eps, beta):
    """The clipped surrogate weighted by truncated importance sampling, plus β·KL (k3),
    sequence-mean-token-mean, written out in float64 NumPy one token at a time."""
    rows = []
    for i in range(logps.shape[0]):
        total, kl_total, n = 0.0, 0.0, mask[i].sum()
        seq_ratio = np.exp(sum(old[i, t] - sampler[i, t] for t in range(logps.shape[1])
                               if mask[i, t]))
        for t in range(logps.shape[1]):
            if not mask[i, t]:
                continue
            rho = np.exp(logps[i, t] - old[i, t])
            surrogate = max(-adv[i] * rho, -adv[i] * min(max(rho, 1 - eps), 1 + eps))
            w = np.exp(old[i, t] - sampler[i, t])
            w = {"token": min(w, cap), "token_mask": w if w <= cap else 0.0,
                 "sequence": min(seq_ratio, cap)}[mode]
            d = ref[i, t] - logps[i, t]
            total += surrogate * w
            kl_total += np.exp(d) - d - 1
        rows.append((total + beta * kl_total) / n)
    return float(np.mean(rows))


@pytest.mark.parametrize("mode", ["token", "sequence", "token_mask"])
def test_the_corrected_loss_equals_a_numpy_reference(mode):
    """A hand-built batch: 2 prompts × G = 2, a masked (calculator) token inside a row, a
    padded tail, old log-probs that put some ratios outside the clip range, and sampler
    log-probs that put some importance weights above the cap C = 2."""
    from bigthoughts.training.grpo_loss import RolloutBatch, completion_logps, grpo_loss
    from tests.tiny import tiny_model

    model, _ = tiny_model(seed=5)
    prompts = jnp.asarray([[0, 7, 8, 9], [3, 4, 5, 6]], jnp.int32)
    valid = jnp.asarray([[0, 1, 1, 1], [1, 1, 1, 1]], bool)
    completions = jnp.asarray([[10, 11, 12, 13, 14], [15, 16, 17, 0, 0],
                               [18, 19, 20, 21, 22], [23, 24, 25, 26, 0]], jnp.int32)
    mask = np.asarray([[1, 1, 0, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 1, 1, 0]],
                      np.float32)
    logps = np.asarray(completion_logps(model, prompts, valid, completions, 2), np.float64)
    rng = np.random.default_rng(0)
    old = logps + rng.normal(0.0, 0.3, logps.shape)  # ratios e^±0.3: some clipped at 0.2
    sampler = old + np.asarray([[0.1, -1.2, 3.0, -0.9, 0.0], [0.2, -0.1, 0.0, 5.0, 0.0],
                                [-0.8, 0.4, -0.3, 0.05, 0.0], [0.0, 9.0, -1.0, 0.5, 0.0]])
    ref = logps + rng.normal(0.0, 0.2, logps.shape)
    adv = np.asarray([1.0, -1.0, 0.5, -0.5])
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    batch = RolloutBatch(prompt_tokens=prompts, prompt_valid=valid,
                         completion_tokens=completions, completion_mask=f32(mask),
                         advantages=f32(adv), ref_logps=f32(ref), old_logps=f32(old),
                         sampler_logps=f32(sampler))
    loss, _ = grpo_loss(model, batch, group=2, beta=0.04, epsilon=0.2, correction=mode,
                        correction_cap=2.0)
    expected = _reference_loss(logps, np.asarray(f32(old), np.float64),
                               np.asarray(f32(sampler), np.float64),
                               np.asarray(f32(ref), np.float64), adv, mask, mode, 2.0,
                               0.2, 0.04)
    assert float(loss) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    plain, _ = grpo_loss(model, batch, group=2, beta=0.04, epsilon=0.2)
    assert abs(float(plain) - expected) > 1e-3  # the weights changed this loss
