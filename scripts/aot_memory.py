"""Ahead-of-time memory check of one GRPO update for a recipe, without weights.

Builds the recipe's model with the real architecture but abstract weights
(``nnx.eval_shape``: shapes and dtypes only), applies its LoRA, places every array on
the recipe's ``fsdp × tp`` mesh following the models' partition annotations, then
lowers and compiles the jitted update (``training.grpo_trainer.grpo_update``: GRPO
loss, LoRA gradients, AdamW) for the recipe's batch shapes and prints XLA's
per-device memory analysis next to the accelerator's memory.

    python scripts/aot_memory.py configs/gemma2-2b-it-tpu.yaml --devices 8 --hbm-gb 16
    python scripts/aot_memory.py configs/gemma3-1b-it-gpu.yaml --devices 1 --hbm-gb 80

``--devices N`` runs on N fake CPU devices (``XLA_FLAGS``), so it needs no
accelerator (without it, the machine's own devices compile it); the CPU numbers
are the CPU backend's buffer assignment for the same program, an estimate of what
the TPU/GPU compiler will assign. Not included: the
rollout (sampler KV cache) and the reference log-prob pass, which run as separate
programs between updates and free their buffers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def abstract_policy(config):
    """(graphdef, lora, base) of the recipe's LoRA policy as ShapeDtypeStructs."""
    import dataclasses

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from bigthoughts.models.adapter import apply_lora
    from bigthoughts.models.build import model_class
    from bigthoughts.models.registry import REGISTRY, resolve_dtype

    spec = REGISTRY[config.model.name]
    dtype = resolve_dtype(config.model.dtype)
    if spec.family == "gemma3":
        from tunix.models.gemma3.model import ModelConfig
    else:
        from tunix.models.gemma.model import ModelConfig
    model_config = getattr(ModelConfig, spec.tunix_config)()
    if hasattr(model_config, "param_dtype"):
        model_config = dataclasses.replace(model_config, param_dtype=dtype)

    def build():
        model = model_class(spec.family)(model_config, rngs=nnx.Rngs(0))
        state = nnx.state(model, nnx.Param)
        nnx.update(model, jax.tree_util.tree_map(lambda x: x.astype(dtype), state))
        return apply_lora(model, config.lora, config.seed)

    model = nnx.eval_shape(build)
    return nnx.split(model, nnx.LoRAParam, ...), spec, jnp


def place(state, mesh):
    """ShapeDtypeStructs carrying the partition annotations' shardings on ``mesh``."""
    import jax
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec

    specs = nnx.get_partition_spec(state)
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(
            mesh, s if isinstance(s, PartitionSpec) else PartitionSpec())), state, specs)


def abstract_batch(config, prompt_len: int, jnp):
    import jax

    from bigthoughts.training.grpo_loss import RolloutBatch

    g = config.grpo
    bp, b, c = config.prompts_per_step, config.prompts_per_step * g.num_generations, \
        g.max_new_tokens
    s = jax.ShapeDtypeStruct
    return RolloutBatch(
        prompt_tokens=s((bp, prompt_len), jnp.int32), prompt_valid=s((bp, prompt_len), bool),
        completion_tokens=s((b, c), jnp.int32), completion_mask=s((b, c), jnp.float32),
        advantages=s((b,), jnp.float32),
        ref_logps=s((b, c), jnp.float32) if g.beta > 0 else None,
        old_logps=s((b, c), jnp.float32) if g.num_iterations > 1 else None)


def analyse(recipe: str, overrides: list[str], prompt_len: int, hbm_gb: float) -> dict:
    import functools

    import jax
    from jax.sharding import AxisType

    from bigthoughts.training.config import load_train_config
    from bigthoughts.training.grpo_trainer import grpo_update
    from bigthoughts.training.state import make_optimizer

    config = load_train_config(recipe, overrides)
    (graphdef, lora, base), spec, jnp = abstract_policy(config)
    shape = (config.mesh_fsdp, config.mesh_tp)
    mesh = jax.make_mesh(shape, ("fsdp", "tp"), axis_types=(AxisType.Auto,) * 2)
    tx, _ = make_optimizer(config.optim, config.max_steps)
    with jax.set_mesh(mesh):
        lora_s, base_s = place(lora, mesh), place(base, mesh)
        opt_s = jax.eval_shape(tx.init, lora_s)
        batch = abstract_batch(config, prompt_len, jnp)
        fn = jax.jit(functools.partial(grpo_update, graphdef, tx, config.grpo),
                     donate_argnums=(0, 1))
        t0 = time.perf_counter()
        lowered = fn.lower(lora_s, opt_s, base_s, batch)
        compiled = lowered.compile()
        seconds = time.perf_counter() - t0
    m = compiled.memory_analysis()
    gb = lambda n: round(n / 1e9, 3)  # noqa: E731
    peak = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes \
        + m.temp_size_in_bytes
    count = lambda t: sum(x.size for x in jax.tree_util.tree_leaves(t))  # noqa: E731
    return {
        "recipe": Path(recipe).name, "model": spec.name, "dtype": config.model.dtype,
        "mesh": f"{shape[0]}x{shape[1]}", "devices": len(jax.devices()),
        "batch": f"{config.prompts_per_step} prompts x G={config.grpo.num_generations}, "
                 f"prompt {prompt_len} + {config.grpo.max_new_tokens} new tokens",
        "base_params": count(base), "lora_params": count(lora),
        "per_device_gb": {"arguments": gb(m.argument_size_in_bytes),
                          "outputs": gb(m.output_size_in_bytes),
                          "aliased": gb(m.alias_size_in_bytes),
                          "temporaries": gb(m.temp_size_in_bytes),
                          "peak_estimate": gb(peak)},
        "device_memory_gb": hbm_gb, "fits": peak / 1e9 < hbm_gb,
        "compile_seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="config overrides like grpo.max_new_tokens=256")
    p.add_argument("--devices", type=int, default=None,
                   help="compile for N fake CPU devices (default: the machine's own devices)")
    p.add_argument("--prompt-len", type=int, default=256,
                   help="padded prompt tokens (a chat prompt with the system prompt: ~200)")
    p.add_argument("--hbm-gb", type=float, required=True, help="memory of one accelerator")
    args = p.parse_args(argv)
    if "jax" in sys.modules:
        raise SystemExit("error: run in a fresh process (XLA_FLAGS must be set before jax)")
    if args.devices is not None:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={args.devices}")
        os.environ["JAX_PLATFORMS"] = "cpu"
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    print(json.dumps(analyse(args.config, args.overrides, args.prompt_len, args.hbm_gb),
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
