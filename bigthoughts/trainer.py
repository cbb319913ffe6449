"""The stateful half of GRPO training: model + LoRA, optimizer, rollouts, checkpoints.

``train.train`` drives it; every piece of state an exact resume needs (LoRA weights,
optimizer moments, step, data position) goes through ``save``/``_restore``, and all
randomness is derived from ``(seed, step)``, so N steps straight and N/2 + N/2 with
a process exit in between produce the same parameters.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import qwix
from flax import nnx

from bigthoughts import grpo
from bigthoughts.answers import answers_equal, extract_answer
from bigthoughts.data import ANSWER_STOP, FEWSHOT_STOP, build_prompt, load_gsm8k
from bigthoughts.generate import Sampler
from bigthoughts.rewards import is_exact_format, make_reward_fns
from bigthoughts.train import DataOrder, TrainConfig, _pad_left, _pad_right, store_for

PROMPT_BUCKET = 32


def _mesh(config: TrainConfig):
    from jax.sharding import AxisType

    shape = (config.mesh_fsdp, config.mesh_tp)
    if shape == (1, 1):
        return None
    if config.mesh_fsdp * config.mesh_tp > len(jax.devices()):
        raise ValueError(f"mesh {shape} needs {shape[0] * shape[1]} devices, "
                         f"{len(jax.devices())} available")
    return jax.make_mesh(shape, ("fsdp", "tp"), axis_types=(AxisType.Auto,) * 2)


class GRPOTrainer:
    def __init__(self, config: TrainConfig, out: Path, *, examples=None, loaded=None,
                 reward_fns=None):
        from bigthoughts.models.registry import load_model

        self.config, self.out = config, out
        self.loaded = loaded or load_model(config.model.name, path=config.model.path,
                                           dtype=config.model.dtype)
        self.tokenizer = self.loaded.tokenizer
        self.examples = examples if examples is not None else load_gsm8k(
            config.data.split, config.data.path, limit=config.data.limit)
        self.style = config.data.style or self.loaded.spec.prompt_style
        self.reward_fns = reward_fns or make_reward_fns(
            config.rewards.weights, min_words=config.rewards.min_reasoning_words)
        self.mesh = _mesh(config)
        self.model = self._with_lora(self.loaded.model)
        # qwix works on a clone: drop our reference to the original weights (~1 GB f32)
        self.loaded = dataclasses.replace(self.loaded, model=None)
        self.graphdef, self.lora, self.base = nnx.split(self.model, nnx.LoRAParam, ...)
        if self.mesh is not None:
            self.base = self._shard(self.base)
            self.lora = self._shard(self.lora)
        self.sampler = Sampler(self.model, self.tokenizer)
        self.tx = self._optimizer()
        self.opt_state = self.tx.init(self.lora)
        self.step = 0
        self.order = DataOrder(len(self.examples), config.seed)
        self.store = store_for(out, config)
        self._train_fn = jax.jit(self._update, donate_argnums=(0, 1))
        self._ref_fn = jax.jit(self._ref_logps, static_argnames=("group",))
        self.metrics_path = out / "metrics.jsonl"
        self.samples_path = out / "samples.jsonl"  # every completion with its reward
        self.writer = None
        self._restore()

    # --- set-up -----------------------------------------------------------------
    def _with_lora(self, model):
        lc = self.config.lora
        provider = qwix.LoraProvider(module_path=lc.targets, rank=lc.rank, alpha=lc.alpha)
        x = jnp.ones((1, 4), jnp.int32)
        if not hasattr(model, "hidden_states"):
            raise TypeError("LoRA needs a model built by bigthoughts.models (hidden_states)")
        return qwix.apply_lora_to_model(
            model, provider, x, jnp.arange(4)[None], None,
            jnp.tril(jnp.ones((1, 4, 4), dtype=bool)),
            methods=("hidden_states",), rngs=nnx.Rngs(self.config.seed),
        )

    def _shard(self, state):
        from jax.sharding import NamedSharding

        specs = nnx.get_partition_spec(state)
        with jax.set_mesh(self.mesh):
            return jax.tree_util.tree_map(
                lambda x, s: jax.device_put(x, NamedSharding(self.mesh, s)), state, specs)

    def _optimizer(self):
        oc = self.config.optim
        horizon = max(oc.decay_steps or self.config.max_steps, oc.warmup_steps + 1)
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, oc.learning_rate, oc.warmup_steps, horizon, end_value=0.1 * oc.learning_rate)
        self.schedule = schedule
        return optax.chain(optax.clip_by_global_norm(oc.max_grad_norm),
                           optax.adamw(schedule, b1=oc.b1, b2=oc.b2,
                                       weight_decay=oc.weight_decay))

    # --- jitted pieces ------------------------------------------------------------
    def _update(self, lora, opt_state, base, batch):
        g = self.config.grpo

        def loss_fn(lora_state):
            model = nnx.merge(self.graphdef, lora_state, base)
            return grpo.grpo_loss(model, batch, group=g.num_generations, beta=g.beta,
                                  epsilon=g.epsilon, epsilon_high=g.epsilon_high,
                                  loss_agg_mode=g.loss_agg_mode, kl_mode=g.kl_mode,
                                  temperature=g.resolved_logp_temperature, remat=g.remat_layers)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(lora)
        updates, opt_state = self.tx.update(grads, opt_state, lora)
        lora = optax.apply_updates(lora, updates)
        return lora, opt_state, {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}

    def _ref_logps(self, lora, base, prompt_tokens, prompt_valid, completion_tokens, *, group):
        off = jax.tree_util.tree_map(jnp.zeros_like, lora)  # LoRA off = the frozen base
        model = nnx.merge(self.graphdef, off, base)
        return grpo.completion_logps(model, prompt_tokens, prompt_valid, completion_tokens, group,
                                     temperature=self.config.grpo.resolved_logp_temperature)

    # --- one step -------------------------------------------------------------------
    def train_step(self) -> dict:
        cfg, g = self.config, self.config.grpo
        t0 = time.perf_counter()
        ids = self.order.take(cfg.prompts_per_step)
        batch_examples = [self.examples[i] for i in ids]
        prompts = [build_prompt(e.question, self.style, shots=cfg.data.shots)
                   for e in batch_examples]
        self.sampler.state = nnx.state(nnx.merge(self.graphdef, self.lora, self.base))
        stop = ["<end_of_turn>"] if self.style == "chat" else [FEWSHOT_STOP]
        gens = self.sampler.generate(
            prompts, temperatures=g.temperature, num_samples=g.num_generations,
            max_new_tokens=g.max_new_tokens, stop=stop, stop_inclusive=[ANSWER_STOP],
            seed=cfg.seed * 1_000_003 + self.step, top_k=g.top_k)
        t_rollout = time.perf_counter() - t0
        texts = [x.text for x in gens]
        golds = [e.gold for e in batch_examples for _ in range(g.num_generations)]
        rep_prompts = [p for p in prompts for _ in range(g.num_generations)]
        per_fn = {fn.__name__: np.asarray(fn(rep_prompts, texts, golds), dtype=np.float64)
                  for fn in self.reward_fns}
        rewards = np.sum(list(per_fn.values()), axis=0) if per_fn else np.zeros(len(texts))
        advantages = grpo.group_advantages(rewards, g.num_generations,
                                           scale_by_std=g.scale_advantages_by_std)

        prompt_ids = [self.tokenizer.encode(p, add_bos=True) for p in prompts]
        p_tok, p_valid = _pad_left(prompt_ids, PROMPT_BUCKET, self.tokenizer.pad_id())
        c_tok, c_mask = _pad_right([list(x.token_ids) for x in gens], g.max_new_tokens,
                                   self.tokenizer.pad_id())
        loss_mask = c_mask * grpo.overlong_weights([x.finish_reason for x in gens])[:, None] \
            if g.overlong_filter else c_mask
        args = (jnp.asarray(p_tok), jnp.asarray(p_valid), jnp.asarray(c_tok))
        ref = self._ref_fn(self.lora, self.base, *args, group=g.num_generations) \
            if g.beta > 0 else None
        batch = grpo.RolloutBatch(prompt_tokens=args[0], prompt_valid=args[1],
                                  completion_tokens=args[2], completion_mask=jnp.asarray(loss_mask),
                                  advantages=jnp.asarray(advantages, dtype=jnp.float32),
                                  ref_logps=ref)
        aux = {}
        t1 = time.perf_counter()
        for _ in range(g.num_iterations):
            self.lora, self.opt_state, aux = self._train_fn(self.lora, self.opt_state,
                                                            self.base, batch)
        aux = jax.block_until_ready(aux)  # time the update here, not in the next rollout
        t_update = time.perf_counter() - t1
        self.step += 1
        seconds = time.perf_counter() - t0
        n_tokens = int(c_mask.sum())
        record = {
            "step": self.step, "examples": [e.id for e in batch_examples],
            "reward_mean": float(rewards.mean()),
            **{f"reward/{k}": float(v.mean()) for k, v in per_fn.items()},
            "format_compliance": float(np.mean([is_exact_format(t) for t in texts])),
            "accuracy": float(np.mean([answers_equal(extract_answer(t, strict=True), gold)
                                       for t, gold in zip(texts, golds, strict=True)])),
            "completion_length": n_tokens / len(texts),
            "step_seconds": seconds, "rollout_seconds": t_rollout,
            "update_seconds": t_update,
            "tokens_per_second": n_tokens / max(t_rollout, 1e-9),
            "learning_rate": float(self.schedule(self.step - 1)),
            **{k: float(v) for k, v in aux.items()},
        }
        self._log(record)
        with open(self.samples_path, "a") as fh:
            fh.write(json.dumps({"step": self.step, "completions": [
                {"example": e.id, "text": t, "reward": float(r)}
                for e, t, r in zip([x for x in batch_examples for _ in range(g.num_generations)],
                                   texts, rewards, strict=True)]}) + "\n")
        return record

    # --- persistence ----------------------------------------------------------------
    def save(self) -> None:
        self.store.save(self.step, {"lora": self.lora, "opt": self.opt_state},
                        {"data_position": self.order.position, "seed": self.config.seed,
                         "saved_at": time.time()})

    def _restore(self) -> None:
        step = self.store.latest()
        if step is None:
            return
        tree, meta = self.store.restore(step, {"lora": self.lora, "opt": self.opt_state})
        self.lora = jax.tree_util.tree_map(jnp.asarray, tree["lora"])
        self.opt_state = jax.tree_util.tree_map(jnp.asarray, tree["opt"])
        self.step = int(meta["step"])
        self.order.position = int(meta["data_position"])
        self._truncate_log(self.step)

    def _truncate_log(self, step: int) -> None:
        """Drops log lines (metrics, samples) of steps after the checkpoint: they will
        be redone."""
        for path in (self.metrics_path, self.samples_path):
            if not path.exists():
                continue
            keep = []
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= step:
                        keep.append(line)
                except (ValueError, KeyError):
                    continue
            path.write_text("".join(x + "\n" for x in keep))

    def _log(self, record: dict) -> None:
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.writer is None:
            try:
                from tensorboardX import SummaryWriter

                self.writer = SummaryWriter(str(self.out / "tensorboard"))
            except ImportError:  # pragma: no cover - optional
                self.writer = False
        if self.writer:
            for k, v in record.items():
                if isinstance(v, float | int) and k != "step":
                    self.writer.add_scalar(k, v, record["step"])

    def evaluate(self) -> dict:
        """Greedy accuracy and format on a held-out slice of GSM8K test."""
        from bigthoughts.config import VoteConfig
        from bigthoughts.solve import Solver

        held = load_gsm8k("test", self.config.data.path, limit=self.config.eval_examples)
        solver = Solver(self.sampler, style=self.style, shots=self.config.data.shots,
                        vote=VoteConfig(votes=1, temperatures=(0.0,),
                                        max_new_tokens=self.config.grpo.max_new_tokens))
        sols = solver.solve([e.question for e in held])
        record = {"step": self.step, "eval/accuracy": float(np.mean(
            [s.vote.answer == e.gold for s, e in zip(sols, held, strict=True)])),
            "eval/format_compliance": float(np.mean(
                [is_exact_format(s.generations[0].text) for s in sols]))}
        self._log(record)
        return record

    def close(self) -> None:
        if self.writer:
            self.writer.close()

    def export(self, dest: Path, *, hf: bool = True) -> Path:
        """Merges LoRA into the base and writes a loadable checkpoint (and HF copy)."""
        from bigthoughts.export import export_checkpoint, export_hf_gemma3, merge_lora

        model = nnx.merge(self.graphdef, self.lora, self.base)
        params = merge_lora(model, alpha=self.config.lora.alpha, rank=self.config.lora.rank)
        spec = self.loaded.spec
        out = export_checkpoint(dest, params, family=spec.family, config=model.config, spec=spec,
                                tokenizer=self.tokenizer,
                                provenance={"step": self.step, "source": self.loaded.source})
        if hf and spec.family == "gemma3":
            export_hf_gemma3(dest / "hf", params, model.config, self.tokenizer)
        return out
