"""The trainable state: LoRA on the policy (qwix), the optimizer, and the device mesh.

    model = apply_lora(loaded.model, config.lora, seed=config.seed)
    tx, schedule = make_optimizer(config.optim, config.max_steps)
    mesh = make_mesh(config.mesh_fsdp, config.mesh_tp)   # None on one device
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import qwix
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding

from bigthoughts.training.config import LoraSection, OptimSection


def apply_lora(model, lora: LoraSection, seed: int):
    """A copy of ``model`` with LoRA adapters (``nnx.LoRAParam``) on ``lora.targets``;
    B starts at zero, so the adapted model computes what the base does."""
    if not hasattr(model, "hidden_states"):
        raise TypeError("LoRA needs a model built by bigthoughts.models (hidden_states)")
    provider = qwix.LoraProvider(module_path=lora.targets, rank=lora.rank, alpha=lora.alpha)
    x = jnp.ones((1, 4), jnp.int32)
    return qwix.apply_lora_to_model(
        model, provider, x, jnp.arange(4)[None], None,
        jnp.tril(jnp.ones((1, 4, 4), dtype=bool)),
        methods=("hidden_states",), rngs=nnx.Rngs(seed),
    )


def make_optimizer(optim: OptimSection, max_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Global-norm clipping then AdamW under linear warm-up + cosine decay to 10% of η."""
    horizon = max(optim.decay_steps or max_steps, optim.warmup_steps + 1)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, optim.learning_rate, optim.warmup_steps, horizon,
        end_value=0.1 * optim.learning_rate)
    tx = optax.chain(optax.clip_by_global_norm(optim.max_grad_norm),
                     optax.adamw(schedule, b1=optim.b1, b2=optim.b2,
                                 weight_decay=optim.weight_decay))
    return tx, schedule


def make_mesh(fsdp: int, tp: int) -> Mesh | None:
    """An ``fsdp × tp`` device mesh, or None for (1, 1) (plain single-device arrays)."""
    if (fsdp, tp) == (1, 1):
        return None
    if fsdp * tp > len(jax.devices()):
        raise ValueError(f"mesh ({fsdp}, {tp}) needs {fsdp * tp} devices, "
                         f"{len(jax.devices())} available")
    return jax.make_mesh((fsdp, tp), ("fsdp", "tp"), axis_types=(AxisType.Auto,) * 2)


def shard(state, mesh: Mesh):
    """``state`` placed on ``mesh`` following the models' partition annotations."""
    specs = nnx.get_partition_spec(state)
    with jax.set_mesh(mesh):
        return jax.tree_util.tree_map(
            lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), state, specs)
