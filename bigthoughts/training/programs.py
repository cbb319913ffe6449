"""The compiled programs of a GRPO step, made in one place.

    programs = grpo_programs(graphdef, config, tx)
    (loss, aux), grads = programs.update.grads(lora, base, batch)      # per micro-batch
    lora, opt_state, norm = programs.update.step(lora, opt_state, grads)
    ref = programs.logps(lora, base, prompt_tokens, prompt_valid, completion_tokens,
                         group=G, lora_on=False)

The trainer runs these objects, and ``scripts/aot_memory.py`` lowers the same objects
at a recipe's shapes to estimate each program's memory; the rollout's prefill and
decode are the sampler's own (``Sampler._prefill`` / ``Sampler._decode``), which the
script lowers the same way. Nothing here holds weights: each program takes the LoRA
and base states as arguments.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import bigthoughts.training.grpo_loss as grpo_loss
from bigthoughts.training.config import GRPOSection, TrainConfig
from bigthoughts.training.state import SplitUpdate

__all__ = ["GRPOPrograms", "grpo_grads", "grpo_programs", "policy_logps"]


def grpo_grads(graphdef, g: GRPOSection, lora, base, batch: grpo_loss.RolloutBatch):
    """``((loss, aux), grads)`` of the GRPO loss w.r.t. the LoRA weights (jit it; pure)."""

    def loss_fn(lora_state):
        model = nnx.merge(graphdef, lora_state, base)
        return grpo_loss.grpo_loss(model, batch, group=g.num_generations, beta=g.beta,
                                   epsilon=g.epsilon, epsilon_high=g.epsilon_high,
                                   loss_agg_mode=g.loss_agg_mode, kl_mode=g.kl_mode,
                                   temperature=g.resolved_logp_temperature,
                                   remat=g.remat_layers, correction=g.sampler_correction,
                                   correction_cap=g.sampler_correction_cap)

    return jax.value_and_grad(loss_fn, has_aux=True)(lora)


def policy_logps(graphdef, temperature: float, lora, base, prompt_tokens, prompt_valid,
                 completion_tokens, *, group: int, lora_on: bool):
    """log π_T of each completion token [B·G, C]: the policy, or with ``lora_on=False``
    the frozen base (the LoRA's matrices zeroed: the reference of a fresh adapter)."""
    if not lora_on:
        lora = jax.tree_util.tree_map(jnp.zeros_like, lora)
    model = nnx.merge(graphdef, lora, base)
    return grpo_loss.completion_logps(model, prompt_tokens, prompt_valid, completion_tokens,
                                      group, temperature=temperature)


@dataclass(frozen=True)
class GRPOPrograms:
    """``update``: the gradient program and the optimizer step (``SplitUpdate``);
    ``logps``: the reference / π_θold log-prob pass (static ``group``, ``lora_on``)."""

    update: SplitUpdate
    logps: object  # a jitted policy_logps

    def named(self) -> dict[str, object]:
        """Each jitted program by the name the memory plan prints."""
        return {"gradients": self.update.grads, "optimizer step": self.update.step,
                "log-probs": self.logps}


def grpo_programs(graphdef, config: TrainConfig, tx: optax.GradientTransformation
                  ) -> GRPOPrograms:
    """The jitted programs a GRPO step of ``config`` runs (see the module)."""
    g = config.grpo
    update = SplitUpdate(functools.partial(grpo_grads, graphdef, g), tx)
    logps = jax.jit(functools.partial(policy_logps, graphdef, g.resolved_logp_temperature),
                    static_argnames=("group", "lora_on"))
    return GRPOPrograms(update=update, logps=logps)
