"""Ahead-of-time memory check of a GRPO recipe: every program its step runs, no weights.

Builds the recipe's model with the real architecture but abstract weights
(``nnx.eval_shape``: shapes and dtypes only), applies its LoRA, places every array on
the recipe's ``fsdp × tp`` mesh following the models' partition annotations, then
lowers and compiles, at the recipe's shapes, the programs the trainer runs, taken from
the same functions the trainer takes them from:

* ``gradients``: the GRPO loss and its LoRA gradients, for one micro-batch
  (``grpo.micro_batch_prompts`` groups, else the whole step)
  (``training.programs.grpo_programs``; the trainer's ``update.grads``);
* ``optimizer step``: clipping + AdamW on the LoRA weights (``update.step``);
* ``log-probs``: the reference (and π_θold) pass, one micro-batch;
* ``rollout prefill`` / ``rollout decode``: the JAX sampler's prompt prefill and one
  chunk of decoding at the rollout's cache size (``Sampler._prefill`` / ``_decode``).

Each program's per-device peak is arguments + outputs − aliased + temporaries (XLA's
buffer assignment), printed beside the device's memory; the exit status is 1 when any
program is over ``--budget`` (0.8) × ``--hbm-gb``.

    python scripts/aot_memory.py configs/gemma2-2b-it-tpu.yaml --devices 8 --hbm-gb 16
    python scripts/aot_memory.py configs/gemma3-1b-it-gpu.yaml --devices 1 --hbm-gb 80

``--devices N`` runs on N fake CPU devices (``XLA_FLAGS``), so it needs no
accelerator; the numbers are then the CPU backend's buffer assignment for the same
programs (with the trainer's ``LEAN_CPU_FLAG``), an estimate of what the TPU/GPU
compiler assigns. The programs run one after another, so the step's peak is the largest
program's plus what stays resident between them (the weights, LoRA and optimizer
state, which every program's arguments already count).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GEMMA_PAD, GEMMA_EOS = 0, 1  # the Gemma tokenizers' ids, all the sampler needs of one


def abstract_policy(config):
    """(graphdef, lora, base, model, spec) of the recipe's LoRA policy, abstract."""
    import dataclasses

    import jax
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
    graphdef, lora, base = nnx.split(model, nnx.LoRAParam, ...)
    return graphdef, lora, base, model, spec


def place(state, mesh):
    """ShapeDtypeStructs carrying the partition annotations' shardings on ``mesh`` (as
    they are, without a mesh)."""
    if mesh is None:
        return state
    import jax
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec

    specs = nnx.get_partition_spec(state)
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(
            mesh, s if isinstance(s, PartitionSpec) else PartitionSpec())), state, specs)


class _GemmaIds:
    """The two token ids the sampler's compiled programs read from a tokenizer."""

    def pad_id(self) -> int:
        return GEMMA_PAD

    def eos_id(self) -> int:
        return GEMMA_EOS


def abstract_batch(config, prompt_len: int, groups: int):
    """One micro-batch's ``RolloutBatch`` of ``groups`` prompts, as ShapeDtypeStructs."""
    import jax
    import jax.numpy as jnp

    from bigthoughts.training.grpo_loss import RolloutBatch

    g = config.grpo
    b, c = groups * g.num_generations, g.max_new_tokens
    s = jax.ShapeDtypeStruct
    return RolloutBatch(
        prompt_tokens=s((groups, prompt_len), jnp.int32),
        prompt_valid=s((groups, prompt_len), bool),
        completion_tokens=s((b, c), jnp.int32), completion_mask=s((b, c), jnp.float32),
        advantages=s((b,), jnp.float32),
        ref_logps=s((b, c), jnp.float32) if g.beta > 0 else None,
        old_logps=s((b, c), jnp.float32) if g.num_iterations > 1 else None,
        normalisers=s((2,), jnp.float32) if g.micro_batch_prompts else None,
        sampler_logps=s((b, c), jnp.float32))  # the engines record them


def lowered_programs(config, prompt_len: int, mesh, policy=None):
    """``{name: lowered program}`` for every program of one GRPO step of ``config``, and
    a description of the model; to be called under ``mesh`` (None: one device, no mesh,
    as the trainer runs a 1 × 1 recipe). ``policy``: ``abstract_policy``'s tuple, when
    the model is not the registry's (tests pass a tiny one)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from bigthoughts.inference.jax_sampler import Sampler
    from bigthoughts.models.limits import round_up
    from bigthoughts.training.programs import grpo_programs
    from bigthoughts.training.state import make_optimizer

    graphdef, lora, base, model, spec = policy or abstract_policy(config)
    lora_s, base_s = place(lora, mesh), place(base, mesh)
    tx, _ = make_optimizer(config.optim, config.max_steps)
    programs = grpo_programs(graphdef, config, tx)
    g = config.grpo
    groups = g.micro_batch_prompts or config.prompts_per_step
    batch = abstract_batch(config, prompt_len, groups)
    opt_s = jax.eval_shape(tx.init, lora_s)
    out = {"gradients": programs.update.grads.lower(lora_s, base_s, batch),
           "optimizer step": programs.update.step.lower(lora_s, opt_s, lora_s),
           "log-probs": programs.logps.lower(
               lora_s, base_s, batch.prompt_tokens, batch.prompt_valid,
               batch.completion_tokens, group=g.num_generations, lora_on=False)}
    # the rollout: prompts_per_step prompts prefilled once, G rows each decoded
    sampler = Sampler(model, _GemmaIds())
    state = place(nnx.state(model), mesh)
    s = jax.ShapeDtypeStruct
    bp, rows = config.prompts_per_step, config.prompts_per_step * g.num_generations
    slack = max(4 * sampler.chunk, g.max_new_tokens // 2) if g.calculator else 0
    cache_size = prompt_len + round_up(g.max_new_tokens + slack, sampler.chunk)
    out["rollout prefill"] = sampler._prefill.lower(
        state, s((bp, prompt_len), jnp.int32), s((bp, prompt_len), bool),
        cache_size=cache_size)
    cache = jax.eval_shape(lambda: jax.tree_util.tree_map(
        lambda x: jnp.repeat(x, g.num_generations, axis=0),
        sampler._prefill(state, jnp.zeros((bp, prompt_len), jnp.int32),
                         jnp.ones((bp, prompt_len), bool), cache_size=cache_size)[1]))
    vocab = model.embedder.input_embedding.shape[0]
    i32 = lambda *shape: s(shape, jnp.int32)  # noqa: E731
    out["rollout decode"] = sampler._decode.lower(
        state, cache, s((rows, vocab), jnp.float32), i32(rows), s((rows, cache_size), bool),
        prompt_len, s((rows,), bool), i32(rows), s((rows,), jnp.float32),
        i32(rows, sampler.chunk), s((rows, sampler.chunk), bool), jax.random.key(0), 0,
        steps=sampler.chunk, top_k=g.top_k, top_p=None, stop_at_eos=True)
    count = lambda t: sum(x.size for x in jax.tree_util.tree_leaves(t))  # noqa: E731
    about = {"model": spec.name, "base_params": count(base), "lora_params": count(lora),
             "micro_batch_groups": groups, "rollout_rows": rows, "cache_size": cache_size}
    return out, about


def peak_bytes(compiled) -> int:
    """Arguments + outputs − aliased + temporaries of a compiled program, per device."""
    m = compiled.memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
            + m.temp_size_in_bytes)


def analyse(recipe: str, overrides: list[str], prompt_len: int, hbm_gb: float,
            budget: float = 0.8) -> dict:
    import contextlib

    import jax

    from bigthoughts.training.config import load_train_config
    from bigthoughts.training.state import make_mesh

    config = load_train_config(recipe, overrides)
    shape = (config.mesh_fsdp, config.mesh_tp)
    mesh = make_mesh(*shape)  # the trainer's: None for 1 x 1
    gb = lambda n: round(n / 1e9, 3)  # noqa: E731
    programs = {}
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        lowered, about = lowered_programs(config, prompt_len, mesh)
        for name, program in lowered.items():
            t0 = time.perf_counter()
            compiled = program.compile()
            m = compiled.memory_analysis()
            programs[name] = {
                "arguments": gb(m.argument_size_in_bytes), "outputs": gb(m.output_size_in_bytes),
                "aliased": gb(m.alias_size_in_bytes), "temporaries": gb(m.temp_size_in_bytes),
                "peak": gb(peak_bytes(compiled)),
                "compile_seconds": round(time.perf_counter() - t0, 1)}
    worst = max(p["peak"] for p in programs.values())
    g = config.grpo
    return {
        "recipe": Path(recipe).name, "overrides": overrides, "dtype": config.model.dtype,
        "mesh": f"{shape[0]}x{shape[1]}", "devices": len(jax.devices()),
        "backend": jax.default_backend(),
        "batch": f"{config.prompts_per_step} prompts x G={g.num_generations}, "
                 f"prompt {prompt_len} + {g.max_new_tokens} new tokens, "
                 f"remat_layers={g.remat_layers}",
        **about, "per_device_gb": programs, "largest_gb": worst,
        "device_memory_gb": hbm_gb, "budget": budget, "fits": worst <= budget * hbm_gb,
    }


def table(result: dict) -> str:
    """The programs as a fixed-width table, largest peak marked against the budget."""
    limit = result["budget"] * result["device_memory_gb"]
    lines = [f"{result['recipe']} ({result['model']}, {result['batch']}, mesh "
             f"{result['mesh']}, {result['backend']} backend): per-device GB",
             f"{'program':<16} {'args':>7} {'outputs':>7} {'aliased':>7} {'temps':>7} "
             f"{'peak':>7}"]
    for name, p in result["per_device_gb"].items():
        flag = "  over" if p["peak"] > limit else ""
        lines.append(f"{name:<16} {p['arguments']:7.2f} {p['outputs']:7.2f} "
                     f"{p['aliased']:7.2f} {p['temporaries']:7.2f} {p['peak']:7.2f}{flag}")
    verdict = "fits" if result["fits"] else "does NOT fit"
    lines.append(f"largest {result['largest_gb']:.2f} GB vs {result['budget']:.0%} of "
                 f"{result['device_memory_gb']:g} GB = {limit:.1f} GB: {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="config overrides like grpo.max_new_tokens=256")
    p.add_argument("--devices", type=int, default=None,
                   help="compile for N fake CPU devices (default: the machine's own devices)")
    p.add_argument("--prompt-len", type=int, default=256,
                   help="padded prompt tokens (a chat prompt with the system prompt: ~200)")
    p.add_argument("--hbm-gb", type=float, required=True, help="memory of one accelerator")
    p.add_argument("--budget", type=float, default=0.8,
                   help="the share of --hbm-gb a program may use (default 0.8)")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    if "jax" in sys.modules:
        raise SystemExit("error: run in a fresh process (XLA_FLAGS must be set before jax)")
    if args.devices is not None:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={args.devices}")
        os.environ["JAX_PLATFORMS"] = "cpu"
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from bigthoughts.training.state import lean_cpu_scheduler

    lean_cpu_scheduler()  # the trainer's own XLA flag (before JAX starts, as it does)
    result = analyse(args.config, args.overrides, args.prompt_len, args.hbm_gb, args.budget)
    print(table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["fits"] else 1


if __name__ == "__main__":
    sys.exit(main())
