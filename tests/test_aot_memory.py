"""scripts/aot_memory.py: the per-device memory XLA assigns to each program of a GRPO
step, from abstract weights; and the script compiles the very programs the trainer runs."""

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["prompts_per_step=2", "grpo.num_generations=2", "grpo.max_new_tokens=16"]
PROGRAMS = {"gradients", "optimizer step", "log-probs", "rollout prefill", "rollout decode"}


def _script():
    spec = importlib.util.spec_from_file_location("aot_memory", ROOT / "scripts" / "aot_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def aot(tmp_path: Path, devices: int, *overrides: str, hbm_gb: float = 16) -> tuple[int, dict]:
    out = tmp_path / f"aot-{devices}.json"
    res = subprocess.run(
        [sys.executable, "scripts/aot_memory.py", "configs/gemma3-270m-cpu.yaml", *SMALL,
         *overrides, "--devices", str(devices), "--prompt-len", "32", "--hbm-gb", str(hbm_gb),
         "--json", str(out)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=1800)
    assert res.returncode in (0, 1), res.stderr[-3000:]
    assert "per-device GB" in res.stdout
    return res.returncode, json.loads(out.read_text())


def _concrete(tree):
    return jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), tree)


def test_the_script_lowers_the_trainers_own_programs(tmp_path):
    """Every program the trainer holds is in the script's plan, and the script's lowering
    at abstract shapes is the trainer's own program, text for text."""
    from flax import nnx

    from bigthoughts.training.grpo_trainer import GRPOTrainer
    from tests.train_toy import lowercase_share, toy_setup

    config, examples, loaded = toy_setup(str(tmp_path / "run"))
    config = dataclasses.replace(config, grpo=dataclasses.replace(
        config.grpo, micro_batch_prompts=1))
    trainer = GRPOTrainer(config, tmp_path / "run", examples=examples, loaded=loaded,
                          reward_fns=[lowercase_share])
    abstract = lambda t: jax.tree_util.tree_map(  # noqa: E731
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), t)
    model = nnx.merge(trainer.graphdef, trainer.lora, trainer.base)
    policy = (trainer.graphdef, abstract(trainer.lora), abstract(trainer.base), model,
              loaded.spec)
    script = _script()
    lowered, about = script.lowered_programs(config, 16, None, policy)
    assert set(lowered) == PROGRAMS
    assert set(trainer.programs.named()) <= set(lowered)
    assert about["micro_batch_groups"] == 1 and about["rollout_rows"] == 8
    batch = _concrete(script.abstract_batch(config, 16, 1))
    mine = {
        "gradients": trainer.programs.update.grads.lower(trainer.lora, trainer.base, batch),
        "log-probs": trainer.programs.logps.lower(
            trainer.lora, trainer.base, batch.prompt_tokens, batch.prompt_valid,
            batch.completion_tokens, group=config.grpo.num_generations, lora_on=False),
        "optimizer step": trainer.programs.update.step.lower(
            trainer.lora, trainer.opt_state, trainer.lora),
        "rollout prefill": trainer.sampler._prefill.lower(
            trainer.sampler.state, jnp.zeros((2, 16), jnp.int32), jnp.ones((2, 16), bool),
            cache_size=about["cache_size"]),
    }
    for name, program in mine.items():
        assert program.as_text() == lowered[name].as_text(), name


@pytest.mark.slow
def test_per_device_arguments_are_the_weights_split_over_the_mesh(tmp_path):
    (rc1, one), (rc2, two) = aot(tmp_path, 1), aot(tmp_path, 2, "mesh_fsdp=2")
    assert rc1 == rc2 == 0 and one["fits"] and two["fits"]
    assert one["base_params"] == two["base_params"] and one["devices"] == 1
    assert 260e6 < one["base_params"] < 280e6  # Gemma 3 270M, embeddings included
    assert set(one["per_device_gb"]) == PROGRAMS
    weights_gb = one["base_params"] * 4 / 1e9  # float32 recipe
    arg1 = one["per_device_gb"]["gradients"]["arguments"]
    arg2 = two["per_device_gb"]["gradients"]["arguments"]
    assert weights_gb <= arg1 < weights_gb + 0.2  # + LoRA, the batch
    assert weights_gb / 2 <= arg2 < weights_gb / 2 + 0.2  # fsdp=2 halves the weights
    for program in one["per_device_gb"].values():
        assert program["peak"] >= program["arguments"] - program["aliased"]


@pytest.mark.slow
def test_a_program_over_the_budget_fails_the_check(tmp_path):
    rc, result = aot(tmp_path, 1, hbm_gb=1.0)
    assert rc == 1 and not result["fits"]
    assert result["largest_gb"] > 0.8


@pytest.mark.parametrize("name", ["gemma2-2b-it-tpu", "gemma3-1b-it-gpu", "gemma2-2b-it-gpu",
                                  "gemma3-4b-it-gpu"])
def test_scale_recipes_train_at_the_reference_context(name):
    """The accelerator recipes: a 256-token prompt + new tokens >= 1,024, G >= 4, layer
    recompute, whole groups per micro-batch, and the AOT command in their comments."""
    from bigthoughts.training.config import load_train_config

    path = ROOT / "configs" / f"{name}.yaml"
    config = load_train_config(path, [])
    g = config.grpo
    assert 256 + g.max_new_tokens >= 1024 and g.num_generations >= 4 and g.remat_layers
    assert g.micro_batch_prompts and config.prompts_per_step % g.micro_batch_prompts == 0
    assert f"scripts/aot_memory.py configs/{name}.yaml" in path.read_text()
