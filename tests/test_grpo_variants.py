"""The GRPO objective's knobs against independent references: temperature-scaled
log-probs (NumPy), group advantages (hand-computed values and Tunix's estimators),
DAPO's overlong filtering and the aggregations (a NumPy re-statement of the
papers' formulas), the GRPOSection presets and their errors, and the trainer's
wiring of advantages, overlong filtering and temperature."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from tunix.rl import algo_core

from bigthoughts.cli import main
from bigthoughts.config import ConfigError, load_yaml
from bigthoughts.models import forward
from bigthoughts.training import grpo_loss as grpo
from bigthoughts.training.config import GRPOSection, TrainConfig
from tests.conftest import REPO_ROOT
from tests.tiny import tiny_model


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("family", ["gemma3", "gemma2"])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6, 0.0])
def test_token_logprobs_at_a_temperature_match_numpy(family, temperature):
    model, _ = tiny_model(family)
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(2, 7, model.config.embed_dim)).astype(np.float32)
    targets = rng.integers(0, model.config.num_embed, (2, 7))
    got = np.asarray(forward.token_logprobs(model, jnp.asarray(hidden), jnp.asarray(targets),
                                            row_tile=3, vocab_tile=64,
                                            temperature=temperature))
    table = np.asarray(model.embedder.input_embedding[...], dtype=np.float64)
    logits = hidden.astype(np.float64) @ table.T  # Gemma ties the output to the input table
    cap = getattr(model, "final_logits_softcap", None)
    if family == "gemma2":
        assert cap  # the soft-cap comes first, then the temperature (as in Tunix)
        logits = np.tanh(logits / cap) * cap
    if temperature not in (0.0, 1.0):  # T = 0 (greedy rollouts) leaves logits untempered
        logits = logits / temperature
    want = np.take_along_axis(_log_softmax(logits), targets[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_group_advantages_hand_computed():
    rewards = np.array([1.0, 0.0, 3.0, 3.0, 2.0, 0.0])
    # groups of 3: means 4/3 and 5/3; both have sample std sqrt((1 + 16 + 25)/9/2) = sqrt(7/3)
    s = np.sqrt(7 / 3) + 1e-6
    np.testing.assert_allclose(grpo.group_advantages(rewards, 3),
                               np.array([-1, -4, 5, 4, 1, -5]) / 3 / s, rtol=1e-12)
    np.testing.assert_allclose(grpo.group_advantages(rewards, 2, scale_by_std=False),
                               [0.5, -0.5, 0.0, 0.0, 1.0, -1.0])
    # a group whose rewards all agree carries no signal, in either variant
    np.testing.assert_array_equal(grpo.group_advantages(np.array([2.0, 2.0]), 2), [0.0, 0.0])


def test_group_advantages_equal_tunix_estimators():
    rewards = np.random.default_rng(1).normal(size=12)
    np.testing.assert_allclose(grpo.group_advantages(rewards, 4),
                               algo_core.compute_advantages(rewards, 4), rtol=1e-12)
    np.testing.assert_allclose(grpo.group_advantages(rewards, 3, scale_by_std=False),
                               np.asarray(algo_core.compute_drgrpo_advantages(rewards, 3)),
                               rtol=1e-12)


def test_group_advantages_refuse_ragged_groups():
    with pytest.raises(ValueError, match="whole groups of 4"):
        grpo.group_advantages(np.zeros(6), 4)


def test_overlong_weights():
    np.testing.assert_array_equal(grpo.overlong_weights(["stop", "length", "eos", "length"]),
                                  [1.0, 0.0, 1.0, 0.0])
    assert grpo.overlong_weights([]).shape == (0,)


def _numpy_objective(logps, old, ref, adv, mask, *, beta, eps_low, eps_high, mode):
    """The clipped surrogate + β·k3 KL, written from the papers' formulas."""
    ratio = np.exp(logps - old)
    surrogate = np.minimum(ratio * adv[:, None],
                           np.clip(ratio, 1 - eps_low, 1 + eps_high) * adv[:, None])
    per_token = -surrogate + beta * (np.exp(ref - logps) - (ref - logps) - 1)
    kept = mask.sum(1) > 0
    if mode == "token-mean":  # DAPO: every kept token weighs the same
        return (per_token * mask).sum() / mask.sum()
    if mode == "sequence-mean-token-mean":  # GRPO: 1/G Σ_i 1/|o_i| Σ_t
        return ((per_token * mask).sum(1)[kept] / mask.sum(1)[kept]).mean()
    assert mode == "sequence-mean-token-scale"  # Dr. GRPO: 1/G Σ_i Σ_t, over constant C
    return ((per_token * mask).sum(1)[kept] / mask.shape[1]).mean()


VARIANTS = {  # as GRPOSection's docstring and docs/DESIGN-NOTES.md give them
    "grpo": {},
    "dapo": {"beta": 0.0, "epsilon_high": 0.28, "loss_agg_mode": "token-mean",
             "overlong_filter": True},
    "dr_grpo": {"scale_advantages_by_std": False, "loss_agg_mode": "sequence-mean-token-scale"},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_loss_variants_match_numpy_with_overlong_filtering(variant):
    model, _ = tiny_model()
    rng = np.random.default_rng(3)
    section = GRPOSection(temperature=0.8, **VARIANTS[variant])
    eps_high = section.epsilon_high or section.epsilon
    prompts = rng.integers(4, 200, (2, 3))
    completions = rng.integers(4, 200, (4, 4))
    mask = np.ones((4, 4), np.float32)
    mask[1, 2:] = 0  # stopped after 2 tokens
    finish = ["length", "stop", "eos", "length"]
    weights = grpo.overlong_weights(finish) if section.overlong_filter else np.ones(4)
    loss_mask = mask * weights[:, None]
    logps = np.asarray(grpo.completion_logps(
        model, jnp.asarray(prompts), jnp.ones((2, 3), bool), jnp.asarray(completions), 2,
        temperature=section.resolved_logp_temperature), dtype=np.float64)
    old = logps + rng.normal(0, 0.3, logps.shape)
    ref = logps + rng.normal(0, 0.3, logps.shape)
    adv = grpo.group_advantages(np.array([1.0, 0.0, 0.0, 2.0]), 2,
                                scale_by_std=section.scale_advantages_by_std)
    batch = grpo.RolloutBatch(
        prompt_tokens=jnp.asarray(prompts), prompt_valid=jnp.ones((2, 3), bool),
        completion_tokens=jnp.asarray(completions), completion_mask=jnp.asarray(loss_mask),
        advantages=jnp.asarray(adv, jnp.float32), ref_logps=jnp.asarray(ref, jnp.float32),
        old_logps=jnp.asarray(old, jnp.float32))
    loss, aux = grpo.grpo_loss(model, batch, group=2, beta=section.beta, epsilon=section.epsilon,
                               epsilon_high=section.epsilon_high,
                               loss_agg_mode=section.loss_agg_mode,
                               temperature=section.resolved_logp_temperature)
    want = _numpy_objective(logps, old, ref, adv, loss_mask, beta=section.beta,
                            eps_low=section.epsilon, eps_high=eps_high,
                            mode=section.loss_agg_mode)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    if section.overlong_filter:  # the truncated rows are out: filtering changed the number
        unfiltered = _numpy_objective(logps, old, ref, adv, mask, beta=section.beta,
                                      eps_low=section.epsilon, eps_high=eps_high,
                                      mode=section.loss_agg_mode)
        assert abs(unfiltered - want) > 1e-3


def test_defaults_are_grpo_and_logp_temperature_follows_the_rollout():
    g = GRPOSection()
    assert (g.beta, g.epsilon, g.epsilon_high, g.loss_agg_mode, g.kl_mode,
            g.scale_advantages_by_std, g.overlong_filter) == \
        (0.04, 0.2, None, "sequence-mean-token-mean", "low_var_kl", True, False)
    assert GRPOSection(temperature=0.7).resolved_logp_temperature == 0.7
    assert GRPOSection(temperature=0.7, logp_temperature=1.0).resolved_logp_temperature == 1.0
    assert GRPOSection(temperature=0.0).resolved_logp_temperature == 1.0  # greedy: untempered


@pytest.mark.parametrize("override, message", [
    ("grpo.loss_agg_mode=mean", "unknown grpo.loss_agg_mode 'mean'; valid: "
     "sequence-mean-token-mean, token-mean, sequence-mean-token-scale, seq-mean-token-sum, "
     "sequence-mean-token-sum-norm"),
    ("grpo.kl_mode=k2", "unknown grpo.kl_mode 'k2'; valid: low_var_kl, kl, mse_kl"),
    ("grpo.epsilon_high=0.1", "grpo.epsilon_high (0.1) must be >= grpo.epsilon (0.2)"),
    ("grpo.logp_temperature=0", "grpo.logp_temperature > 0"),
    ("grpo.temperature=-1", "grpo.temperature must be >= 0, got -1.0"),
])
def test_bad_objective_settings_are_one_line_errors(override, message, tmp_path, capsys):
    config = str(REPO_ROOT / "configs" / "gemma3-270m-cpu.yaml")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_yaml(TrainConfig, config, [override])
    out = tmp_path / "run"
    assert main(["train", "--config", config, "--out", str(out), override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_variants_are_selectable_in_yaml(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("grpo:\n  beta: 0\n  epsilon_high: 0.28\n  loss_agg_mode: token-mean\n"
                      "  overlong_filter: true\n  temperature: 0.9\n")
    g = load_yaml(TrainConfig, recipe, ["grpo.scale_advantages_by_std=false",
                                        "grpo.logp_temperature=1.0"]).grpo
    assert g == GRPOSection(beta=0.0, epsilon_high=0.28, loss_agg_mode="token-mean",
                            overlong_filter=True, temperature=0.9,
                            scale_advantages_by_std=False, logp_temperature=1.0)
    assert g.resolved_logp_temperature == 1.0


def test_shipped_recipe_documents_the_variant_keys():
    """The commented example block in the CPU recipe names real keys: uncommented, it
    loads."""
    text = (REPO_ROOT / "configs" / "gemma3-270m-cpu.yaml").read_text()
    block = [line[4:] for line in text.splitlines() if line.startswith("  # ") and ":" in line
             and line[4:].split(":")[0] in {f.name for f in dataclasses.fields(GRPOSection)}]
    assert len(block) >= 4, block
    data = {}
    for line in block:
        key, value = line.split("#")[0].split(":", 1)
        data[key.strip()] = value.strip()
    overrides = [f"grpo.{k}={v}" for k, v in data.items()]
    load_yaml(TrainConfig, REPO_ROOT / "configs" / "gemma3-270m-cpu.yaml", overrides)


def test_trainer_applies_the_variant(tmp_path, monkeypatch):
    """One toy step with DAPO + Dr. GRPO's unscaled advantages at T = 0.8: the batch the
    update sees carries r - mean(r) advantages and zero mask rows for truncated
    completions, and the loss is taken at T = 0.8."""
    from bigthoughts.training.grpo_trainer import GRPOTrainer
    from tests.train_toy import toy_setup

    config, examples, loaded = toy_setup(str(tmp_path))
    section = GRPOSection(beta=0.0, epsilon_high=0.28, loss_agg_mode="token-mean",
                          overlong_filter=True, scale_advantages_by_std=False,
                          num_generations=4, max_new_tokens=6, temperature=0.8)
    config = dataclasses.replace(config, grpo=section)
    trainer = GRPOTrainer(config, tmp_path, examples=examples, loaded=loaded,
                          reward_fns=[lambda prompts, completions, answer, **kw:
                                      [float(len(c)) for c in completions]])
    seen, temperatures = {}, []
    generate, update = trainer.sampler.generate, trainer.programs.update
    real_loss = grpo.grpo_loss

    def record_generate(*args, **kwargs):
        seen["gens"] = generate(*args, **kwargs)
        return seen["gens"]

    class RecordUpdate:
        def accumulated(self, lora, opt, parts):
            [(_, seen["batch"])] = parts  # no micro-batches: the whole step at once
            return update.accumulated(lora, opt, parts)

    def record_loss(*args, **kwargs):
        temperatures.append(kwargs["temperature"])
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(trainer.sampler, "generate", record_generate)
    monkeypatch.setattr(trainer, "programs",
                        dataclasses.replace(trainer.programs, update=RecordUpdate()))
    monkeypatch.setattr(grpo, "grpo_loss", record_loss)
    record = trainer.train_step()
    gens, batch = seen["gens"], seen["batch"]
    rewards = np.array([float(len(g.text)) for g in gens]).reshape(-1, 4)
    np.testing.assert_allclose(np.asarray(batch.advantages),
                               (rewards - rewards.mean(1, keepdims=True)).reshape(-1),
                               rtol=1e-6)
    mask = np.asarray(batch.completion_mask)
    for g, row in zip(gens, mask, strict=True):
        assert row.sum() == (0 if g.finish_reason == "length" else len(g.token_ids))
    assert temperatures == [0.8]
    assert batch.ref_logps is None  # DAPO: β = 0, no reference pass
    assert np.isfinite(record["loss"])
