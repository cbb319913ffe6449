"""A micro-batched GRPO update equals the whole-batch one: for every loss aggregation,
the micro-batches' losses, metrics and LoRA gradients (each divided by the step's
normalisers) add up to the step's (float32, <= 1e-5)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bigthoughts.config import ConfigError
from bigthoughts.models.adapter import apply_lora
from bigthoughts.models.lora import LoraSection
from bigthoughts.training import grpo_loss as grpo
from bigthoughts.training.config import GRPOSection, OptimSection, load_train_config
from bigthoughts.training.state import SplitUpdate, make_optimizer
from tests.tiny import tiny_model

GROUP = 2


def _setup(seed=0):
    model, _ = tiny_model()
    lora_model = apply_lora(model, LoraSection(rank=4, alpha=8.0), seed=1)
    graphdef, lora, base = nnx.split(lora_model, nnx.LoRAParam, ...)
    rng = np.random.default_rng(seed)
    lora = jax.tree_util.tree_map(  # B is 0 at start: move it so gradients reach A too
        lambda x: x + jnp.asarray(rng.normal(0, 0.01, x.shape), x.dtype), lora)
    groups, length = 4, 5
    mask = np.ones((groups * GROUP, length), np.float32)
    mask[1, 3:] = 0
    mask[4, :] = 0  # an empty row: the sequence modes do not count it
    mask[6, 1:] = 0
    logps = rng.normal(-2.0, 0.5, mask.shape).astype(np.float32)
    batch = grpo.RolloutBatch(
        prompt_tokens=jnp.asarray(rng.integers(4, 200, (groups, 3))),
        prompt_valid=jnp.ones((groups, 3), bool),
        completion_tokens=jnp.asarray(rng.integers(4, 200, mask.shape)),
        completion_mask=jnp.asarray(mask),
        advantages=jnp.asarray(rng.normal(size=groups * GROUP), jnp.float32),
        ref_logps=jnp.asarray(logps + rng.normal(0, 0.2, mask.shape), jnp.float32),
        old_logps=jnp.asarray(logps, jnp.float32))
    return graphdef, lora, base, batch


def _loss_and_grads(graphdef, mode):
    def fn(lora, base, batch):
        def loss(params):
            return grpo.grpo_loss(nnx.merge(graphdef, params, base), batch, group=GROUP, beta=0.04,
                                  epsilon=0.2, loss_agg_mode=mode)
        return jax.value_and_grad(loss, has_aux=True)(lora)
    return fn


@pytest.mark.parametrize("mode", GRPOSection.LOSS_AGG_MODES)
def test_micro_batches_add_up_to_the_whole_step(mode):
    graphdef, lora, base, batch = _setup()
    fn = jax.jit(_loss_and_grads(graphdef, mode))
    (loss, aux), grads = fn(lora, base, batch)
    micro = dataclasses.replace(batch, normalisers=grpo.step_normalisers(
        batch.completion_mask, mode))
    parts = [micro.groups_slice(i, i + 1, GROUP) for i in range(batch.groups)]
    assert parts[2].completion_tokens.shape == (GROUP, 5)
    outs = [fn(lora, base, part) for part in parts]
    total_loss = sum(float(o[0][0]) for o in outs)
    np.testing.assert_allclose(total_loss, float(loss), rtol=1e-5)
    for key in aux:
        np.testing.assert_allclose(sum(float(o[0][1][key]) for o in outs), float(aux[key]),
                                   rtol=1e-5, atol=1e-7)
    summed = jax.tree_util.tree_map(lambda *g: sum(g), *[o[1] for o in outs])
    for g, want in zip(jax.tree_util.tree_leaves(summed), jax.tree_util.tree_leaves(grads),
                       strict=True):
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(grads))


def test_the_accumulated_update_equals_the_whole_one():
    graphdef, lora, base, batch = _setup(seed=3)
    mode = "sequence-mean-token-mean"
    tx, _ = make_optimizer(OptimSection(learning_rate=1e-2, warmup_steps=0), 10)
    whole = SplitUpdate(_loss_and_grads(graphdef, mode), tx)
    copy = jax.tree_util.tree_map(jnp.copy, lora)
    new, _, aux = whole(copy, tx.init(copy), base, batch)
    micro = dataclasses.replace(batch, normalisers=grpo.step_normalisers(
        batch.completion_mask, mode))
    split = SplitUpdate(_loss_and_grads(graphdef, mode), tx)
    copy = jax.tree_util.tree_map(jnp.copy, lora)
    new2, _, aux2 = split.accumulated(copy, tx.init(copy), [
        (base, micro.groups_slice(0, 2, GROUP)), (base, micro.groups_slice(2, 4, GROUP))])
    np.testing.assert_allclose(float(aux2["loss"]), float(aux["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(aux2["grad_norm"]), float(aux["grad_norm"]), rtol=1e-5)
    # Adam's first step moves each weight by about ±lr whatever its gradient's size, so
    # a near-zero gradient's last-bit rounding can flip a tiny share of that step: the
    # weights must agree to 0.1% of one step (lr = 1e-2)
    for a, b in zip(jax.tree_util.tree_leaves(new2), jax.tree_util.tree_leaves(new),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    moved = [float(jnp.abs(a - b).max()) for a, b in zip(
        jax.tree_util.tree_leaves(new2), jax.tree_util.tree_leaves(lora), strict=True)]
    assert max(moved) > 1e-3  # the step did move the weights


def test_the_micro_batch_must_divide_the_step():
    with pytest.raises(ConfigError, match="must divide prompts_per_step"):
        load_train_config(None, ["prompts_per_step=4", "grpo.micro_batch_prompts=3"])
    with pytest.raises(ConfigError, match="micro_batch_prompts must be >= 1"):
        load_train_config(None, ["grpo.micro_batch_prompts=0"])
    assert load_train_config(None, ["prompts_per_step=4", "grpo.micro_batch_prompts=2"]
                             ).grpo.micro_batch_prompts == 2
