"""Supervised warm start (SFT): the cold-start stage before GRPO, as in R1-style pipelines.

    bigthoughts sft --config configs/gemma3-270m-sft.yaml --time-budget 1h --out runs/sft

The policy learns GSM8K's worked solutions in the tag format behind a zero-shot
prompt (:mod:`bigthoughts.training.sft_data`): the loss is the mean negative
log-likelihood of the completion tokens; prompt tokens are context only, and only
the completion positions are projected onto the 262k-token vocabulary. LoRA by
default (``full_finetune: true`` trains every weight). It is a ``Stage`` of the
shared relay loop (:mod:`bigthoughts.training.loop`): ``--time-budget`` checkpoints
and exits 75 before the budget ends, a rerun resumes exactly (weights, Adam moments
and the position in the seeded, length-bucketed batch order). The export holds the
merged checkpoint and, for LoRA, ``adapter.safetensors``, which a GRPO recipe
starts from with ``model.adapter``.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import bigthoughts.training.held_out as held_out
import bigthoughts.training.hosts as hosts
from bigthoughts.data import Example, load_gsm8k, prompt_format
from bigthoughts.inference.jax_sampler import Sampler
from bigthoughts.models import forward
from bigthoughts.models.adapter import save_adapter
from bigthoughts.models.export import export_checkpoint, merge_lora
from bigthoughts.models.spec import LoadedModel
from bigthoughts.training.adapter import adapted
from bigthoughts.training.relay import CheckpointStore, restore_stage, save_stage
from bigthoughts.training.rundir import MetricsLog
from bigthoughts.training.sft_config import SFTConfig
from bigthoughts.training.sft_data import (
    BucketedOrder,
    SFTExample,
    pad_batch,
    split_validation,
    tokenize,
)
from bigthoughts.training.state import SplitUpdate, make_optimizer

MEMORY_KNOBS = "batch_size or data.max_length (or set remat_layers=true)"


def sft_loss(model, tokens, valid, loss_mask, *, remat: bool = False):
    """Mean NLL of the completion tokens: ``(loss, aux)`` (batch from ``pad_batch``)."""
    length, window = tokens.shape[1], loss_mask.shape[1]
    positions = jnp.maximum(jnp.cumsum(valid, axis=-1) - 1, 0)
    mask = jnp.tril(jnp.ones((length, length), dtype=bool))[None] & valid[:, None, :]
    hidden, _ = forward.hidden_states(model, tokens, positions, None, mask, remat=remat)
    logps = forward.token_logprobs(model, hidden[:, length - 1 - window: length - 1],
                                   tokens[:, length - window:])
    count = loss_mask.sum()
    loss = -(logps * loss_mask).sum() / jnp.maximum(count, 1.0)
    return loss, {"nll_sum": -(logps * loss_mask).sum(), "count": count}


def sft_grads(graphdef, remat: bool, params, frozen, tokens, valid, loss_mask):
    """``((loss, aux), grads)`` of the SFT loss w.r.t. the trainable weights (jit it; pure)."""

    def loss_fn(p):
        return sft_loss(nnx.merge(graphdef, p, frozen), tokens, valid, loss_mask, remat=remat)

    return jax.value_and_grad(loss_fn, has_aux=True)(params)


class SFTStage:
    """The supervised ``Stage`` driven by ``training.loop.run_stage``."""

    memory_knobs = MEMORY_KNOBS

    def __init__(self, config: SFTConfig, out: Path, *, train: Sequence[SFTExample],
                 validation: Sequence[SFTExample], held_out: Sequence[Example],
                 loaded: LoadedModel, log: MetricsLog | None = None,
                 lora_init: dict | None = None):
        self.config, self.out = config, Path(out)
        self.train, self.validation, self.held_out = list(train), list(validation), held_out
        self.tokenizer = loaded.tokenizer
        self.format = prompt_format(config.data.style, 0)
        model = loaded.model if config.full_finetune else adapted(
            loaded.model, config.lora, config.seed, lora_init, config.model.adapter)
        self.loaded = dataclasses.replace(loaded, model=None)
        kind = nnx.Param if config.full_finetune else nnx.LoRAParam
        self.graphdef, self.params, self.frozen = nnx.split(model, kind, ...)
        self.sampler = Sampler(model, self.tokenizer, memory_check=False)
        self.tx, self.schedule = make_optimizer(config.optim, config.max_steps)
        self.opt_state = self.tx.init(self.params)
        self.order = BucketedOrder([x.length for x in self.train], config.batch_size,
                                   config.seed)
        self.store = CheckpointStore(self.out / "checkpoints", keep=config.keep_checkpoints)
        self.log = log or MetricsLog.for_run(self.out, config)
        self._update = SplitUpdate(functools.partial(sft_grads, self.graphdef,
                                                     config.remat_layers), self.tx)
        self._loss = jax.jit(lambda p, f, t, v, m: sft_loss(nnx.merge(self.graphdef, p, f),
                                                              t, v, m)[1])
        self.step = 0
        self.resumed_from = self._restore()

    def train_step(self) -> dict:
        t0 = time.perf_counter()
        items = [self.train[i] for i in self.order.next()]
        tokens, valid, mask = pad_batch(items, self.tokenizer.pad_id(),
                                        self.config.data.pad_multiple)
        self.params, self.opt_state, aux = self._update(
            self.params, self.opt_state, self.frozen, jnp.asarray(tokens), jnp.asarray(valid),
            jnp.asarray(mask))
        aux = jax.block_until_ready(aux)
        self.step += 1
        seconds = time.perf_counter() - t0
        real = int(valid.sum())
        record = {"step": self.step, "loss": float(aux["loss"]),
                  "grad_norm": float(aux["grad_norm"]), "tokens": real,
                  "completion_tokens": int(mask.sum()), "padding": 1.0 - real / tokens.size,
                  "tokens_per_second": real / seconds, "step_seconds": seconds,
                  "learning_rate": float(self.schedule(self.step - 1)),
                  "examples": [x.id for x in items]}
        self.log.append(record)
        return record

    # --- evaluation -------------------------------------------------------------------
    def validation_loss(self) -> float:
        """Mean NLL per completion token over the held-out pairs."""
        total = count = 0.0
        size = self.config.batch_size
        for start in range(0, len(self.validation), size):
            t, v, m = pad_batch(self.validation[start:start + size], self.tokenizer.pad_id(),
                               self.config.data.pad_multiple)
            aux = self._loss(self.params, self.frozen, jnp.asarray(t), jnp.asarray(v),
                             jnp.asarray(m))
            total, count = total + float(aux["nll_sum"]), count + float(aux["count"])
        return total / max(count, 1.0)

    def evaluate(self) -> dict:
        """Validation loss, and greedy accuracy/format on held-out *train* questions
        (their answers in ``evals/step_N.jsonl``)."""
        record: dict = {"step": self.step}
        if self.validation:
            record["eval/loss"] = self.validation_loss()
        questions = list(self.held_out[: self.config.eval_examples])
        if questions:
            self.sampler.state = nnx.state(nnx.merge(self.graphdef, self.params, self.frozen))
            rows = held_out.greedy_answers(self.sampler, self.format, questions,
                                           max_new_tokens=self.config.eval_max_new_tokens,
                                           calculator=self.config.calculator)
            if hosts.writer():
                held_out.write_answers(self.out / "evals", self.step, rows)
            record.update(held_out.summary(rows))
        self.log.append(record)
        return record

    # --- persistence ----------------------------------------------------------------------
    def save(self) -> None:
        save_stage(self.store, self.step, {"params": self.params, "opt": self.opt_state},
                   position=self.order.position, seed=self.config.seed)

    def _restore(self) -> Path | None:
        found = restore_stage(self.store, self.log, {"params": self.params, "opt": self.opt_state})
        if found is None:
            return None
        tree, self.step, self.order.position, path = found
        self.params, self.opt_state = tree["params"], tree["opt"]
        return path

    def close(self) -> None:
        self.log.close()

    def export(self, dest: Path) -> Path:
        """The merged checkpoint in ``dest`` and, for LoRA, ``dest/adapter.safetensors``."""
        trained = hosts.host_tree(self.params)  # gathered when sharded over processes
        model = nnx.merge(self.graphdef, trained, hosts.host_tree(self.frozen))
        provenance = {"stage": "sft", "step": self.step, "base": Path(self.loaded.source).name,
                      "continued": _continued(self.config.model, self.config.full_finetune)}
        if self.config.full_finetune:
            params = {p: np.asarray(v.get_value()) for p, v in
                      nnx.to_flat_state(nnx.state(model, nnx.Param))}
        else:
            params = merge_lora(model, alpha=self.config.lora.alpha, rank=self.config.lora.rank)
        if not hosts.writer():
            return Path(dest)  # where process 0 writes it
        if not self.config.full_finetune:
            save_adapter(Path(dest) / "adapter.safetensors", trained, self.config.lora,
                         provenance=provenance)
        spec = self.loaded.spec
        return export_checkpoint(dest, params, family=spec.family, config=model.config,
                                 spec=spec, tokenizer=self.tokenizer, provenance=provenance)


def _continued(model, full_finetune: bool) -> str | None:
    """The adapter file whose LoRA the stage continued (its export then includes it)."""
    if model.adapter is None or full_finetune or model.adapter_mode != "continue":
        return None
    return Path(model.adapter).name


def prepare_data(config: SFTConfig, tokenizer, examples: Sequence[Example] | None = None
                 ) -> tuple[list[SFTExample], list[SFTExample], list[Example], int]:
    """(train pairs, validation pairs, validation questions, pairs skipped as too long)."""
    pool = list(examples) if examples is not None else load_gsm8k(
        "train", config.data.path, limit=config.data.limit)
    if len(pool) < 2:
        raise ValueError("SFT needs at least 2 training examples")
    size = min(config.data.validation_size, len(pool) - 1)
    train_set, held = split_validation(pool, size, config.seed)
    fmt = prompt_format(config.data.style, 0)
    kw = {"annotations": config.data.annotations, "max_length": config.data.max_length,
          "loss_on": config.data.loss_on}
    pairs, dropped = tokenize(train_set, tokenizer, fmt.prompt, **kw)
    val_pairs, _ = tokenize(held, tokenizer, fmt.prompt, **kw)
    if not pairs:
        raise ValueError(f"no training pair fits data.max_length={config.data.max_length}")
    return pairs, val_pairs, held, dropped
