"""The trainable state: LoRA on the policy (qwix), the optimizer, and the device mesh.

    model = apply_lora(loaded.model, config.lora, seed=config.seed)
    tx, schedule = make_optimizer(config.optim, config.max_steps)
    mesh = make_mesh(config.mesh_fsdp, config.mesh_tp)   # None on one device
"""

from __future__ import annotations

import ctypes
import os
from functools import cache, partial

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding

from bigthoughts.training.config import OptimSection

# XLA's CPU scheduler orders a program for concurrency by default. For a training update
# that order starts every rematerialised layer's recomputation early and keeps all of it
# alive: the 270M GRPO update planned 4.7 GB of temporaries with or without layer remat.
# XLA's memory-minimising order keeps each recomputation next to its use (0.8 GB with
# remat, benchmarks/grpo_memory.py). XLA reads it from XLA_FLAGS only (a per-program
# compiler option is accepted and ignored), so it has to be set before JAX starts.
LEAN_CPU_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def lean_cpu_scheduler() -> bool:
    """Asks XLA for its memory-minimising CPU schedule (``LEAN_CPU_FLAG``) for this process;
    True if it is in effect. A choice already in ``XLA_FLAGS`` is kept; once JAX's
    backends have started it is too late and nothing changes (returns False)."""
    from jax._src import xla_bridge

    flags = os.environ.get("XLA_FLAGS", "")
    name = LEAN_CPU_FLAG.split("=")[0]
    if name in flags:
        return LEAN_CPU_FLAG in flags
    if xla_bridge.backends_are_initialized():
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {LEAN_CPU_FLAG}".strip()
    return True


def release_host_memory() -> None:
    """Gives the host heap's free pages back to the OS (glibc ``malloc_trim``; a no-op
    elsewhere). XLA's CPU buffers are freed to malloc, which keeps them: on the 270M
    GRPO recipe the resident set grew 0.5 GB between steps and the step peak was
    5.1 GB without trimming, 4.8 GB with it (benchmarks/grpo_memory.py)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@cache
def _malloc_trim():
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    return trim


def optimizer_step(tx: optax.GradientTransformation, params, opt_state, grads):
    """``tx``'s update applied to ``params``; returns (params, opt_state, gradient norm)."""
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, optax.tree.norm(grads)


class SplitUpdate:
    """One optimizer update as two compiled programs: the loss and its gradients, then
    ``tx``'s step (which donates the old weights and moments).

    On the CPU, XLA scheduled the fused program (gradients and AdamW together) so that
    the layers' activations were all alive at once: the 270M GRPO update planned 3.4 GB
    of temporaries fused and 0.8 GB split, with ``remat_layers`` and ``LEAN_CPU_FLAG``
    (benchmarks/grpo_memory.py). The gradients cross between the two as LoRA-sized arrays.

    ``loss_and_grads(params, *args)`` returns ``((loss, aux), grads)``; calling the
    update returns ``(params, opt_state, {"loss", "grad_norm", **aux})``.
    """

    def __init__(self, loss_and_grads, tx: optax.GradientTransformation):
        self.grads = jax.jit(loss_and_grads)  # public: memory plans compile both
        self.step = jax.jit(partial(optimizer_step, tx), donate_argnums=(0, 1))

    def __call__(self, params, opt_state, *args):
        return self.accumulated(params, opt_state, [args])

    def accumulated(self, params, opt_state, parts):
        """One optimizer step on the sum of the gradients (and losses and metrics) of
        ``loss_and_grads(params, *args)`` over ``parts`` (micro-batches whose losses add
        up to the step's), accumulated in float32."""
        total = None
        for args in parts:
            (loss, aux), grads = self.grads(params, *args)
            grads = jax.tree_util.tree_map(lambda g: g.astype(jnp.float32), grads)
            part = (loss, aux, grads)
            total = part if total is None else _combine(total, part)
        loss, aux, grads = total
        grads = jax.tree_util.tree_map(lambda g, p: g.astype(p.dtype), grads, params)
        params, opt_state, norm = self.step(params, opt_state, grads)
        return params, opt_state, {"loss": loss, "grad_norm": norm, **aux}


def _combine(total, part):
    """Two micro-batches' (loss, aux, grads) as one: sums, but the maximum for the aux
    metrics named ``*_max``."""
    (loss, aux, grads), (loss2, aux2, grads2) = total, part
    merged = {k: jnp.maximum(v, aux2[k]) if k.endswith("_max") else v + aux2[k]
              for k, v in aux.items()}
    return loss + loss2, merged, jax.tree_util.tree_map(jnp.add, grads, grads2)


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
