"""GRPO on the real Gemma 3 270M: the training-side log-probs agree with what the
sampler drew, and one real step runs (CI, `real`); the CLI recipe for 2 steps (`slow`)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from bigthoughts.data import build_prompt, load_gsm8k
from bigthoughts.inference.jax_sampler import Sampler
from bigthoughts.training import load_train_config, train
from bigthoughts.training.grpo_loss import completion_logps
from bigthoughts.training.rollout import pad_left, pad_right

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "gemma3-270m-cpu.yaml"


@pytest.mark.real
@pytest.mark.parametrize("width", [24, 200])  # 24: shared-prefill path; 200: past the window
def test_training_logps_match_the_sampler(real_model, gsm8k_dir, width):
    tok = real_model.tokenizer
    [example] = load_gsm8k("train", gsm8k_dir, limit=1)
    prompt = build_prompt(example.question, "fewshot", shots=2)
    gens = Sampler(real_model.model, tok).generate(
        [prompt], temperatures=[0.7, 1.0], num_samples=2, max_new_tokens=24, seed=3)
    p_tok, p_valid = pad_left([tok.encode(prompt, add_bos=True)], 64, tok.pad_id())
    c_tok, c_mask = pad_right([list(g.token_ids) for g in gens], width, tok.pad_id())
    window = real_model.model.config.sliding_window_size
    assert (p_tok.shape[1] + width > window) == (width == 200)  # both paths are exercised
    ours = np.asarray(completion_logps(real_model.model, jnp.asarray(p_tok),
                                       jnp.asarray(p_valid), jnp.asarray(c_tok), 2))
    drawn = np.zeros_like(ours)
    for i, g in enumerate(gens):
        drawn[i, :g.num_tokens] = g.logprobs
    mask = np.asarray(c_mask, dtype=bool)
    assert mask.sum() > 10
    np.testing.assert_allclose(ours[mask], drawn[mask], atol=2e-3)


@pytest.mark.real
def test_one_real_grpo_step(real_model, gsm8k_dir, tmp_path):
    config = load_train_config(RECIPE, [
        f"data.path={gsm8k_dir}", "data.limit=8", "grpo.max_new_tokens=24",
        "grpo.num_generations=2", "prompts_per_step=1"])
    result = train(config, max_steps=1, out_dir=tmp_path, loaded=real_model)
    [record] = result.history
    assert result.step == 1 and np.isfinite(record["loss"])
    assert 0 < record["completion_length"] <= 24
    assert {f"reward/{n}" for n in config.rewards.weights} <= set(record)
    # before any update the policy is the reference: KL is zero to rounding
    assert abs(record["kl"]) < 1e-4
    assert (tmp_path / "export" / "hf" / "model.safetensors").is_file()


@pytest.mark.slow
def test_cli_recipe_two_steps(tmp_path, gsm8k_dir):
    env = {**os.environ, "BIGTHOUGHTS_DATA": str(gsm8k_dir), "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-c",
         "import resource, sys; from bigthoughts.cli import main; rc = main(sys.argv[1:]); "
         "print('PEAK_GB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2); "
         "sys.exit(rc)",
         "train", "--config", str(RECIPE), "--max-steps", "2", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in records)
    assert (tmp_path / "export" / "params.safetensors").is_file()
    assert (tmp_path / "export" / "hf" / "model.safetensors").is_file()
    peak = float(res.stdout.split("PEAK_GB")[1].split()[0])
    print(f"\nstep seconds {[round(r['step_seconds'], 1) for r in records]}, "
          f"peak RSS {peak:.1f} GB, wall {time.perf_counter() - start:.0f} s")
    assert peak < 16  # a naive full-parameter f32 step peaks near 20 GB here


@pytest.mark.slow
def test_cli_periodic_evaluation_and_resume(tmp_path, gsm8k_dir):
    """The issue's acceptance command: evaluation after each update, a progress line per
    step, and a rerun that says where it resumes from."""
    env = {**os.environ, "BIGTHOUGHTS_DATA": str(gsm8k_dir), "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "bigthoughts.cli", "train", "--config", str(RECIPE),
           "eval_every=1", "eval_examples=4", "grpo.max_new_tokens=24", "--out", str(tmp_path)]
    first = subprocess.run(cmd + ["--max-steps", "2"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=1800)
    assert first.returncode == 0, first.stderr[-3000:]
    steps = [x.split(" | ")[0] for x in first.stderr.splitlines() if x.startswith("step ")]
    assert steps == ["step 1/2", "step 2/2"], first.stderr[-3000:]
    again = subprocess.run(cmd + ["--max-steps", "3"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=1800)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from step 2 (" in again.stderr, again.stderr[-3000:]
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval/accuracy" in r] == [0, 1, 2, 3]
    assert [r["step"] for r in records if "reward_mean" in r] == [1, 2, 3]
