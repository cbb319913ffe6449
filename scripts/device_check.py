"""A few GRPO steps of a recipe at its real shapes on whatever device JAX has, from
randomly initialised weights (nothing downloaded), measured against the AOT estimate.

    python scripts/device_check.py configs/gemma3-1b-it-gpu.yaml --tokenizer tok.model \
        [--steps 3] [--peak-tflops 989] [--json out.json] [overrides ...]

It builds the recipe's model (``model.name``: e.g. gemma3-1b-it) with random weights in
the recipe's dtype, applies its LoRA, and runs ``--steps`` GRPO steps through the
trainer (rollout on the JAX sampler + reward + reference log-probs + micro-batched
update), on GSM8K train questions (``$BIGTHOUGHTS_DATA``, else a few built-in ones).
A random model rarely emits EOS, so every completion runs to ``max_new_tokens``: the
recipe's largest shapes. Then it prints, per step, the rollout's and the update's
seconds and tokens/s; the update's model FLOPs utilisation (MFU: 2·N FLOPs per token
for each forward, the layers' backward counted as 2 forwards and the recompute of
``remat_layers`` as one more; N = the base parameters, LoRA's are negligible) against
``--peak-tflops``; the device's peak memory in use (``memory_stats``, where the backend
reports it) beside the AOT estimate of the same programs compiled for the same device
(``scripts/aot_memory.py``'s ``lowered_programs``).

``--tokenizer``: a Gemma SentencePiece model file (the one ``bigthoughts`` rebuilds from
the embedded GGUF, ``~/.cache/bigthoughts/tokenizer-*.model``; 5 MB); without it, the
embedded model's tokenizer is used (which needs the embedded GGUF installed).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

FALLBACK_QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
    "clips in May. How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of "
    "babysitting. How much did she earn?",
    "Betty is saving money for a new wallet which costs $100. Betty has only half of the "
    "money she needs. Her parents decided to give her $15 for that purpose, and her "
    "grandparents twice as much as her parents. How much more money does Betty need?",
]


def examples(n: int):
    import os

    from bigthoughts.data import Example, load_gsm8k

    path = os.environ.get("BIGTHOUGHTS_DATA") or ROOT.parent / "shared" / "data" / "gsm8k"
    try:
        return load_gsm8k("train", path, limit=n)
    except (OSError, ValueError):
        return [Example(id=f"q{i}", question=FALLBACK_QUESTIONS[i % 3], answer="#### 1",
                        gold="1") for i in range(n)]


def tokenizer(path: str | None):
    from bigthoughts.models.tokenizer import Tokenizer

    if path:
        return Tokenizer.from_file(path)
    from bigthoughts.models.registry import load_model

    return load_model().tokenizer


def random_model(name: str, dtype_name: str, seed: int = 0):
    """Model ``name`` (the registry's) with normal(0, 0.02) weights (norm scales 0), in
    ``dtype_name``: (model, spec)."""
    import dataclasses

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from bigthoughts.models.build import model_class
    from bigthoughts.models.registry import REGISTRY, resolve_dtype

    spec = REGISTRY[name]
    dtype = resolve_dtype(dtype_name)
    if spec.family == "gemma3":
        from tunix.models.gemma3.model import ModelConfig
    else:
        from tunix.models.gemma.model import ModelConfig
    model_config = getattr(ModelConfig, spec.tunix_config)()
    if hasattr(model_config, "param_dtype"):
        model_config = dataclasses.replace(model_config, param_dtype=dtype)
    graphdef, state = nnx.split(nnx.eval_shape(
        lambda: model_class(spec.family)(model_config, rngs=nnx.Rngs(0))))
    leaves, treedef = jax.tree_util.tree_flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))

    @jax.jit
    def fill(keys):
        return [0.02 * jax.random.normal(k, x.shape, jnp.float32).astype(dtype)
                if x.ndim >= 2 else jnp.zeros(x.shape, dtype)
                for k, x in zip(keys, leaves, strict=True)]

    model = nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, fill(list(keys))))
    return model, spec


def mfu(params: int, tokens: int, seconds: float, remat: bool, peak_tflops: float) -> float:
    forwards = 3 + (1 if remat else 0)  # forward, backward (2), recompute
    return 2 * params * tokens * forwards / seconds / (peak_tflops * 1e12)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="the device's dense bf16 peak (H100/H200 SXM: 989)")
    p.add_argument("--no-aot", action="store_true", help="skip the AOT estimate")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    import jax

    from bigthoughts.models.registry import LoadedModel
    from bigthoughts.rewards import make_reward_fns  # noqa: I001
    from bigthoughts.training.config import load_train_config
    from bigthoughts.training.grpo_trainer import GRPOTrainer

    config = load_train_config(args.config, args.overrides)
    device = jax.devices()[0]
    t0 = time.perf_counter()
    model, spec = random_model(config.model.name, config.model.dtype)
    tok = tokenizer(args.tokenizer)
    params = sum(x.size for x in jax.tree_util.tree_leaves(model))
    loaded = LoadedModel(model=model, tokenizer=tok, spec=spec, source="random")
    fns = make_reward_fns(config.rewards.weights, min_words=config.rewards.min_reasoning_words)
    g = config.grpo
    result = {"device": device.device_kind, "platform": device.platform,
              "recipe": Path(args.config).name, "overrides": args.overrides,
              "model": spec.name, "params": params, "steps": []}
    with tempfile.TemporaryDirectory() as out:
        trainer = GRPOTrainer(config, Path(out), examples=examples(8 * config.prompts_per_step),
                              loaded=loaded, reward_fns=fns)
        del model, loaded
        result["build_seconds"] = round(time.perf_counter() - t0, 1)
        for _ in range(args.steps):
            record = trainer.train_step()
            rows = config.prompts_per_step * g.num_generations
            trained = rows * (args.prompt_len + g.max_new_tokens)
            other = record["step_seconds"] - record["update_seconds"] - record["rollout_seconds"]
            step = {"step": record["step"], "step_seconds": round(record["step_seconds"], 2),
                    "rollout_seconds": round(record["rollout_seconds"], 2),
                    "reference_and_rewards_seconds": round(other, 2),
                    "update_seconds": round(record["update_seconds"], 2),
                    "completion_length": round(record["completion_length"], 1),
                    "rollout_tokens_per_s": round(record["tokens_per_second"], 1),
                    "update_tokens_per_s": round(trained / record["update_seconds"], 1),
                    "update_mfu": round(mfu(params, trained, record["update_seconds"],
                                            g.remat_layers, args.peak_tflops), 4)}
            result["steps"].append(step)
            print(json.dumps(step), flush=True)
        stats = device.memory_stats() or {}
        result["measured_peak_gb"] = round(stats["peak_bytes_in_use"] / 1e9, 3) \
            if "peak_bytes_in_use" in stats else None
        result["device_memory_gb"] = round(stats["bytes_limit"] / 1e9, 1) \
            if "bytes_limit" in stats else None
        trainer.close()
    if not args.no_aot:
        from aot_memory import lowered_programs, peak_bytes

        lowered, _ = lowered_programs(config, args.prompt_len, None)
        result["aot_peak_gb"] = {name: round(peak_bytes(program.compile()) / 1e9, 3)
                                 for name, program in lowered.items()}
    print(json.dumps(result, indent=1))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
