"""The GRPO stage: policy + LoRA, optimizer, one step, checkpoints, evaluation, export.

One step: take ``prompts_per_step`` questions in a seeded order -> sample G
completions each with the current policy -> rewards -> group advantages
(``rollout``; with ``grpo.dynamic_sampling``, groups of equal rewards are replaced by
further questions) -> log-probs of the completions under the reference (the frozen base
= LoRA switched off; when β > 0) and, when μ > 1, under the sampling policy itself
(π_θold, computed once before the updates, as Tunix does) -> μ AdamW updates of the
LoRA weights on ``grpo_loss.grpo_loss``. After every update the sampler is pointed at the
new LoRA arrays (the update donates the old ones).

Every piece of state an exact resume needs (LoRA weights, optimizer moments, step,
data position) goes through ``save``/``_restore``, and all randomness is derived from
``(seed, step)``, so N steps straight and N/2 + N/2 with a process exit in between
produce the same parameters.

Why not Tunix's ``GRPOLearner``/``RLCluster`` loop: on a 2-core CPU its rollout has
no per-row temperature or stop strings, its loss materialises full-vocabulary logits
for every token (~20 GB for the 270M model at 2 x 4 x 128), and its data iterator
and RNG state are not checkpointed, so an exact resume is impossible. We keep
Tunix's model, its LoRA (qwix), its GRPO objective and its ``GRPOConfig`` semantics.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

import bigthoughts.training.grpo_loss as grpo_loss
import bigthoughts.training.held_out as held_out
import bigthoughts.training.hosts as hosts
import bigthoughts.training.rollout as ro
from bigthoughts.data import Example
from bigthoughts.inference.jax_sampler import Sampler
from bigthoughts.models.adapter import save_adapter
from bigthoughts.models.export import export_checkpoint, export_hf_gemma3, merge_lora
from bigthoughts.models.registry import LoadedModel
from bigthoughts.models.resolve import prompt_format_for
from bigthoughts.training.adapter import adapted
from bigthoughts.training.config import TrainConfig
from bigthoughts.training.programs import grpo_programs
from bigthoughts.training.relay import CheckpointStore, restore_stage, save_stage
from bigthoughts.training.rundir import MetricsLog
from bigthoughts.training.state import make_mesh, make_optimizer, release_host_memory, shard

MEMORY_KNOBS = ("prompts_per_step, grpo.num_generations or grpo.max_new_tokens "
                "(or set grpo.remat_layers=true)")


class GRPOTrainer:
    """The GRPO ``Stage`` driven by ``training.loop.run_stage``."""

    memory_knobs = MEMORY_KNOBS

    def __init__(self, config: TrainConfig, out: Path, *, examples: Sequence[Example],
                 loaded: LoadedModel, reward_fns: Sequence[ro.RewardFn],
                 held_out: Sequence[Example] = (), log: MetricsLog | None = None,
                 lora_init: dict | None = None):
        self.config, self.out = config, Path(out)
        self.examples, self.held_out, self.reward_fns = list(examples), list(held_out), reward_fns
        self.tokenizer = loaded.tokenizer
        self.format = prompt_format_for(config.data.style, loaded.spec, config.data.shots)
        self.mesh = make_mesh(config.mesh_fsdp, config.mesh_tp)
        model = adapted(loaded.model, config.lora, config.seed, lora_init, config.model.adapter)
        # qwix works on a clone: drop our reference to the original weights (~1 GB f32)
        self.loaded = dataclasses.replace(loaded, model=None)
        self.graphdef, self.lora, self.base = nnx.split(model, nnx.LoRAParam, ...)
        if self.mesh is not None:
            self.base, self.lora = shard(self.base, self.mesh), shard(self.lora, self.mesh)
        # the KL reference: the starting policy. A continued adapter keeps a copy of its
        # matrices (updates donate self.lora's buffers); a fresh LoRA is the base (LoRA off)
        self.ref_lora = None if lora_init is None else jax.tree_util.tree_map(jnp.copy, self.lora)
        self.sampler = Sampler(model, self.tokenizer, memory_check=False)
        self.rollouts = self.sampler  # or llama.cpp, following the LoRA (_sync_sampler)
        if config.grpo.rollout_engine == "llama.cpp":
            from bigthoughts.training.llamacpp_rollouts import LlamaCppRollouts, rollout_gguf

            self.rollouts = LlamaCppRollouts(rollout_gguf(config), alpha=config.lora.alpha,
                                             work_dir=self.out)
        self.tx, self.schedule = make_optimizer(config.optim, config.max_steps)
        self.opt_state = self.tx.init(self.lora)
        self.step = 0
        self.order = ro.DataOrder(len(self.examples), config.seed)
        self.store = CheckpointStore(self.out / "checkpoints", keep=config.keep_checkpoints)
        self.log = log or MetricsLog.for_run(self.out, config)
        self.last_updates: list[dict] = []  # aux of each of the μ updates of the last step
        self.quiet_steps = 0  # steps in a row without a policy gradient (the guards)
        # the compiled programs, from the function scripts/aot_memory.py measures
        self.programs = grpo_programs(self.graphdef, config, self.tx)
        self.resumed_from = self._restore()
        self._sync_sampler()

    def _sync_sampler(self) -> None:
        """Points the sampler at the current LoRA arrays (an update donates the old ones)."""
        self.sampler.state = nnx.state(nnx.merge(self.graphdef, self.lora, self.base))
        if self.rollouts is not self.sampler:
            self.rollouts.sync(self.lora)

    # --- one step -------------------------------------------------------------------
    def _micro_batches(self, batch: grpo_loss.RolloutBatch) -> list[grpo_loss.RolloutBatch]:
        """The step's batch in ``grpo.micro_batch_prompts`` groups at a time (or whole)."""
        g = self.config.grpo
        if not g.micro_batch_prompts or g.micro_batch_prompts >= batch.groups:
            return [batch]
        size = g.micro_batch_prompts
        return [batch.groups_slice(i, i + size, g.num_generations)
                for i in range(0, batch.groups, size)]

    def _with_logps(self, batch: grpo_loss.RolloutBatch) -> grpo_loss.RolloutBatch:
        """Adds reference log-probs (β > 0) and, for μ > 1, π_θold's (the sampling policy),
        a micro-batch at a time; with micro-batches, the step's loss normalisers."""
        g = self.config.grpo
        continued = self.ref_lora is not None

        def logps(lora, lora_on: bool):
            parts = [self.programs.logps(lora, self.base, part.prompt_tokens, part.prompt_valid,
                                    part.completion_tokens, group=g.num_generations,
                                    lora_on=lora_on) for part in self._micro_batches(batch)]
            return parts[0] if len(parts) == 1 else jnp.concatenate(parts)

        ref = logps(self.ref_lora if continued else self.lora, continued) if g.beta > 0 \
            else None
        old = logps(self.lora, True) if g.num_iterations > 1 else None
        norms = grpo_loss.step_normalisers(batch.completion_mask, g.loss_agg_mode) \
            if g.micro_batch_prompts else None
        return dataclasses.replace(batch, ref_logps=ref, old_logps=old, normalisers=norms)

    def _updates(self, batch: grpo_loss.RolloutBatch) -> dict:
        """μ updates on one batch; the sampler follows the weights after each."""
        self.last_updates = []
        release_host_memory()  # the rollout's freed buffers, before the update's peak
        for _ in range(self.config.grpo.num_iterations):
            self.lora, self.opt_state, aux = self.programs.update.accumulated(
                self.lora, self.opt_state,
                [(self.base, part) for part in self._micro_batches(batch)])
            self._sync_sampler()
            self.last_updates.append(jax.block_until_ready(aux))
        return {k: float(v) for k, v in self.last_updates[-1].items()}

    def train_step(self) -> dict:
        cfg = self.config
        t0 = time.perf_counter()
        release_host_memory()  # what the last update freed, before the rollout

        def draw(n: int, index: int) -> ro.Rollout:
            examples = [self.examples[i] for i in self.order.take(n)]
            return ro.collect(self.rollouts, examples, cfg.grpo, fmt=self.format,
                              reward_fns=self.reward_fns,
                              seed=ro.step_seed(cfg.seed, self.step, index))

        drawn, kept = ro.gather(draw, cfg.prompts_per_step, cfg.grpo.dynamic_sampling)
        rollout = ro.concat([drawn], kept)
        batch = ro.to_batch(rollout, self.tokenizer, cfg.grpo.max_new_tokens,
                            overlong_filter=cfg.grpo.overlong_filter)
        if cfg.grpo.resolved_logp_temperature != cfg.grpo.temperature:
            # the engine's log-probs are at the rollout T, the trainer's at another: no
            # mismatch to measure or correct between two different distributions
            batch = dataclasses.replace(batch, sampler_logps=None)
        batch = self._with_logps(batch)
        t1 = time.perf_counter()
        aux = self._updates(batch)
        t_update = time.perf_counter() - t1
        self.step += 1
        dynamic = cfg.grpo.dynamic_sampling > 0
        # the rollout statistics are those of every group drawn: the policy on the data
        record = {"step": self.step, "examples": [e.id for e in rollout.examples],
                  **({"skipped": [e.id for i, e in enumerate(drawn.examples) if i not in kept],
                      "groups_drawn": len(drawn.prompts),
                      "groups_informative": int(ro.informative(drawn).sum())}
                     if dynamic else {}),
                  **ro.rollout_stats(drawn), "step_seconds": time.perf_counter() - t0,
                  "update_seconds": t_update,
                  "learning_rate": float(self.schedule(self.step - 1)), **aux}
        warnings, empty = ro.signal_warnings(rollout, truncated_limit=cfg.grpo.guard_truncated)
        self.quiet_steps = self.quiet_steps + 1 if empty else 0
        if warnings:
            record["warnings"] = warnings
        patience = cfg.grpo.guard_patience
        if patience and self.quiet_steps >= patience:
            record["stop"] = (f"{self.quiet_steps} steps in a row without a policy gradient "
                              f"(grpo.guard_patience = {patience}): check the rewards, "
                              "grpo.temperature and grpo.max_new_tokens")
        self.log.append(record)
        self.log.append_samples(self.step, ro.sample_rows(drawn, kept if dynamic else None))
        return record

    # --- persistence ----------------------------------------------------------------
    def save(self) -> None:
        save_stage(self.store, self.step, {"lora": self.lora, "opt": self.opt_state},
                   position=self.order.position, seed=self.config.seed)

    def _restore(self) -> Path | None:
        """Loads the latest checkpoint, if any (``relay.restore_stage``)."""
        found = restore_stage(self.store, self.log, {"lora": self.lora, "opt": self.opt_state})
        if found is None:
            return None
        tree, self.step, self.order.position, path = found
        self.lora, self.opt_state = tree["lora"], tree["opt"]
        return path

    def evaluate(self) -> dict:
        """Greedy accuracy and format on the held-out questions, without the calculator,
        on the rollout engine (llama.cpp when the recipe samples there, as ``eval`` does).
        Each question's answer goes to ``evals/step_N.jsonl`` and the LoRA it was scored
        with to ``evals/step_N.safetensors``, so any point of the curve can be evaluated
        again (e.g. on the test set) after later steps."""
        if not self.held_out:
            raise ValueError("evaluate() needs held-out examples")
        rows = held_out.greedy_answers(
            self.rollouts, self.format, self.held_out,
            max_new_tokens=self.config.eval_max_new_tokens or self.config.grpo.max_new_tokens)
        lora = hosts.host_tree(self.lora)
        if hosts.writer():
            held_out.write_answers(self.out / "evals", self.step, rows)
            save_adapter(self.out / "evals" / f"step_{self.step:06d}.safetensors", lora,
                         self.config.lora, provenance={"stage": "grpo", "step": self.step})
        record = {"step": self.step, **held_out.summary(rows)}
        self.log.append(record)
        return record

    def close(self) -> None:
        self.log.close()
        if self.rollouts is not self.sampler:
            self.rollouts.close()

    def export(self, dest: Path, *, hf: bool = True) -> Path:
        """Merges LoRA into the base and writes a loadable checkpoint (and HF copy), and
        the LoRA itself as ``dest/adapter.safetensors``."""
        release_host_memory()
        lora = hosts.host_tree(self.lora)
        model = nnx.merge(self.graphdef, lora, hosts.host_tree(self.base))
        params = merge_lora(model, alpha=self.config.lora.alpha, rank=self.config.lora.rank)
        if not hosts.writer():
            return Path(dest)  # where process 0 writes it
        spec = self.loaded.spec
        adapter = self.config.model.adapter
        provenance = {"stage": "grpo", "step": self.step, "model": spec.name,
                      # the file's name, not this machine's path
                      "source": Path(self.loaded.source).name,
                      "continued": Path(adapter).name if adapter and self.ref_lora is not None
                      else None}
        save_adapter(Path(dest) / "adapter.safetensors", lora, self.config.lora,
                     provenance=provenance)
        out = export_checkpoint(dest, params, family=spec.family, config=model.config, spec=spec,
                                tokenizer=self.tokenizer, provenance=provenance)
        if hf and spec.family == "gemma3":
            export_hf_gemma3(dest / "hf", params, model.config, self.tokenizer)
        return out
