"""One GRPO step on Gemma 3 270M on this CPU: our recipe vs the naive Tunix way,
side by side in one run (each side in its own process, so peak memory is its own).

    .venv/bin/python benchmarks/grpo_step.py [--steps 3]

* ours: `bigthoughts.training.train` with configs/gemma3-270m-cpu.yaml (LoRA r16 via qwix,
  prompt prefilled once per group, log-probs a chunk of positions at a time under
  rematerialisation, reference log-probs from the same weights with LoRA off);
* ours-remat: the same with ``grpo.remat_layers=true`` (what that knob costs and buys);
* naive: full-parameter f32 policy plus a frozen f32 reference copy, log-probs and
  loss by Tunix's own ``common.compute_per_token_logps`` and
  ``algo_core.grpo_loss_fn`` (full-vocabulary logits for every position of every
  sequence), AdamW on all parameters.

Both sides: 2 prompts x 4 completions, up to 128 new tokens, the recipe's prompt,
rollouts by our sampler. The first step compiles and is not counted; the rest are
averaged. Peak memory is the process's maximum resident set size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import peak_rss_gb  # noqa: E402

RECIPE = ROOT / "configs" / "gemma3-270m-cpu.yaml"


def ours(steps: int, overrides: tuple[str, ...] = ()) -> dict:
    from bigthoughts.training import load_train_config, train

    config = load_train_config(RECIPE, list(overrides))
    with tempfile.TemporaryDirectory() as out:
        train(config, max_steps=steps, out_dir=out)
        records = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    timed = records[1:]
    return {"step_s": sum(r["step_seconds"] for r in timed) / len(timed),
            "rollout_s": sum(r["rollout_seconds"] for r in timed) / len(timed),
            "update_s": sum(r["update_seconds"] for r in timed) / len(timed),
            "first_step_s": records[0]["step_seconds"], "peak_rss_gb": peak_rss_gb()}


def naive(steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx
    from tunix.rl import algo_core
    from tunix.rl import common as tunix_common
    from tunix.rl.grpo.grpo_learner import GRPOConfig

    from bigthoughts.data import ANSWER_STOP, FEWSHOT_STOP, build_prompt, load_gsm8k
    from bigthoughts.inference.jax_sampler import Sampler
    from bigthoughts.models.registry import load_model
    from bigthoughts.rewards import make_reward_fns
    from bigthoughts.training import load_train_config
    from bigthoughts.training.rollout import pad_left, pad_right

    config = load_train_config(RECIPE, [])
    g = config.grpo
    lm = load_model(config.model.name, dtype=jnp.float32)
    tok = lm.tokenizer
    pad, eos = tok.pad_id(), tok.eos_id()
    graphdef, params, rest = nnx.split(lm.model, nnx.Param, ...)
    ref_params = jax.tree_util.tree_map(jnp.copy, params)  # the frozen reference copy
    tx = optax.chain(optax.clip_by_global_norm(config.optim.max_grad_norm),
                     optax.adamw(config.optim.learning_rate))
    opt_state = tx.init(params)
    algo = GRPOConfig(num_generations=g.num_generations, beta=g.beta, epsilon=g.epsilon)
    algo.temperature = g.temperature  # RLCluster sets this from the rollout config
    reward_fns = make_reward_fns(config.rewards.weights,
                                 min_words=config.rewards.min_reasoning_words)
    examples = load_gsm8k("train", os.environ.get("BIGTHOUGHTS_DATA"), limit=2 * steps)
    sampler = Sampler(lm.model, tok)

    @jax.jit
    def ref_logps(ref, prompt_ids, completion_ids):
        return tunix_common.compute_per_token_logps(
            graphdef, nnx.State.merge(ref, rest), prompt_ids, completion_ids, pad, eos)

    @jax.jit
    def update(params, opt_state, example):
        def loss_fn(p):
            model = nnx.merge(graphdef, p, rest)
            return algo_core.grpo_loss_fn(model, example, algo, pad, eos)

        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    times = []
    for step in range(steps):
        batch = examples[2 * step:2 * step + 2]
        prompts = [build_prompt(e.question, "fewshot", shots=config.data.shots) for e in batch]
        t0 = time.perf_counter()
        sampler.state = nnx.State.merge(params, rest)
        gens = sampler.generate(prompts, temperatures=g.temperature,
                                num_samples=g.num_generations, max_new_tokens=g.max_new_tokens,
                                stop=[FEWSHOT_STOP], stop_inclusive=[ANSWER_STOP], seed=step)
        texts = [x.text for x in gens]
        golds = [e.gold for e in batch for _ in range(g.num_generations)]
        reps = [p for p in prompts for _ in range(g.num_generations)]
        rewards = np.sum([fn(reps, texts, golds) for fn in reward_fns], axis=0).reshape(2, -1)
        adv = ((rewards - rewards.mean(1, keepdims=True))
               / (rewards.std(1, ddof=1, keepdims=True) + 1e-6)).reshape(-1)
        # the same padding as the trainer (prompts left to a multiple of 64), but every
        # one of the B*G rows carries its whole prompt, as Tunix's learner does
        p_ids, _ = pad_left([tok.encode(p, add_bos=True) for p in reps], 64, pad)
        c_ids, _ = pad_right([list(x.token_ids) for x in gens], g.max_new_tokens, pad)
        p_ids, c_ids = jnp.asarray(p_ids), jnp.asarray(c_ids)
        ref = ref_logps(ref_params, p_ids, c_ids)
        example = tunix_common.TrainExample(
            prompt_ids=p_ids, prompt_mask=p_ids != pad, completion_ids=c_ids,
            completion_mask=tunix_common.make_completion_mask(c_ids, eos_tok=eos) * (c_ids != pad),
            advantages=jnp.asarray(adv, jnp.float32), ref_per_token_logps=ref,
            old_per_token_logps=None)
        params, opt_state, loss = update(params, opt_state, example)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - t0)
        print(f"naive step {step + 1}: {times[-1]:.1f} s, loss {float(loss):.4f}", flush=True)
    return {"step_s": sum(times[1:]) / len(times[1:]), "first_step_s": times[0],
            "peak_rss_gb": peak_rss_gb()}


SIDES = {
    "ours": ours,  # the recipe as shipped
    "ours-remat": lambda steps: ours(steps, ("grpo.remat_layers=true",)),
    "naive-tunix-full": naive,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3, help="steps per side (first not timed)")
    parser.add_argument("--side", choices=list(SIDES), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sides", default=",".join(SIDES),
                        help="comma-separated subset of: " + ", ".join(SIDES))
    args = parser.parse_args()
    sides = [x.strip() for x in args.sides.split(",")]
    if unknown := [x for x in sides if x not in SIDES]:
        parser.error(f"unknown side(s) {unknown}; choose from {list(SIDES)}")
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the first step compiles and is not timed)")
    if args.side:
        result = SIDES[args.side](args.steps)
        print("RESULT " + json.dumps(result), flush=True)
        return
    results = {}
    for side in sides:
        proc = subprocess.run([sys.executable, __file__, "--side", side, "--steps",
                               str(args.steps)], capture_output=True, text=True)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode in (-9, 137):  # SIGKILL: on Linux, the out-of-memory killer
            results[side] = {"error": "killed by SIGKILL (out of memory?) after:\n"
                             + proc.stdout[-1500:]}
        elif proc.returncode != 0 or not lines:
            results[side] = {"error": (proc.stderr or proc.stdout)[-1500:]}
        else:
            results[side] = json.loads(lines[-1][len("RESULT "):])
    print("GRPO step, Gemma 3 270M f32, 2 prompts x 4 completions, <=128 new tokens, CPU\n")
    print(f"{'':24}" + "".join(f"{name:>22}" for name in sides))
    for key, label in (("step_s", "seconds per step"), ("rollout_s", "  of which rollout"),
                       ("update_s", "  of which update"), ("first_step_s", "first step (compile)"),
                       ("peak_rss_gb", "peak memory (GB)")):
        cells = [results[side].get(key) for side in sides]
        print(f"{label:24}" + "".join(
            f"{'n/a' if v is None else f'{v:.1f}':>22}" for v in cells))
    base = results.get("ours", {})
    for side in sides:
        r = results[side]
        if "error" in r:
            print(f"\n{side} failed:\n{r['error']}")
        elif side != "ours" and base.get("step_s"):
            print(f"{side}: {r['step_s'] / base['step_s']:.2f}x the time per step, "
                  f"{r['peak_rss_gb'] / base['peak_rss_gb']:.2f}x the peak memory of ours")
    print("\n" + json.dumps(results))


if __name__ == "__main__":
    main()
