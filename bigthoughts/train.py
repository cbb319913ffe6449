"""GRPO fine-tuning of a Gemma policy with LoRA, as a composition of small steps.

One step: take ``prompts_per_step`` questions in a seeded order -> sample G
completions each with our batched sampler (one prefill per prompt) -> score them
with the configured reward functions -> group-relative advantages (Tunix's "grpo"
advantage estimator) -> reference log-probs (the frozen base = LoRA switched off)
-> one or more (μ) AdamW updates of the LoRA weights on ``grpo.grpo_loss``.

Why not Tunix's ``GRPOLearner``/``RLCluster`` loop: on a 2-core CPU its rollout has
no per-row temperature or stop strings, its loss materialises full-vocabulary
logits for every token (~20 GB for the 270M model at 2 x 4 x 128), and its data
iterator and RNG state are not checkpointed, so an exact resume is impossible. We
keep Tunix's model, its LoRA (qwix), its GRPO objective pieces and its
``GRPOConfig`` semantics, and own the loop. See docs/TRAINING.md.

    bigthoughts train --config configs/gemma3-270m-cpu.yaml --max-steps 2
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from bigthoughts.config import ConfigError, RewardConfig, load_yaml, to_dict
from bigthoughts.relay import EXIT_RELAY, CheckpointStore, Deadline

__all__ = ["EXIT_RELAY", "TrainConfig", "TrainResult", "load_train_config", "train"]
LORA_TARGETS = (
    ".*q_einsum|.*kv_einsum|.*qkv_einsum|.*attn_vec_einsum|.*gate_proj|.*up_proj|.*down_proj"
)


@dataclass(frozen=True, kw_only=True)
class ModelSection:
    name: str = "gemma3-270m"
    path: str | None = None
    dtype: str = "float32"


@dataclass(frozen=True, kw_only=True)
class DataSection:
    path: str | None = None  # GSM8K dir; default $BIGTHOUGHTS_DATA
    split: str = "train"
    limit: int | None = None
    style: str | None = None  # prompt style; None = the model's (fewshot for base)
    shots: int = 1


@dataclass(frozen=True, kw_only=True)
class LoraSection:
    rank: int = 16
    alpha: float = 32.0
    targets: str = LORA_TARGETS

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")


@dataclass(frozen=True, kw_only=True)
class GRPOSection:
    """GRPO hyper-parameters, named as in Tunix's ``GRPOConfig`` and the papers.

    The defaults are GRPO (DeepSeekMath, arXiv:2402.03300) as Tunix's ``GRPOConfig``
    runs it. The variants are settings of the same knobs (docs/DESIGN-NOTES.md):

    * DAPO (arXiv:2503.14476; Tunix's ``DAPOConfig``): ``beta: 0``,
      ``epsilon_high: 0.28`` (clip-higher), ``loss_agg_mode: token-mean``,
      ``overlong_filter: true``;
    * Dr. GRPO (arXiv:2503.20783; Tunix's ``DrGRPOConfig``):
      ``scale_advantages_by_std: false``,
      ``loss_agg_mode: sequence-mean-token-scale`` (each sequence's token sum over the
      constant C = max_new_tokens, no 1/|o_i|).
    """

    LOSS_AGG_MODES: ClassVar[tuple[str, ...]] = (  # those of tunix.rl.common.aggregate_loss
        "sequence-mean-token-mean", "token-mean", "sequence-mean-token-scale",
        "seq-mean-token-sum", "sequence-mean-token-sum-norm")
    KL_MODES: ClassVar[tuple[str, ...]] = ("low_var_kl", "kl", "mse_kl")

    num_generations: int = 4  # G: completions sampled per prompt
    beta: float = 0.04  # β: weight of the KL penalty to the reference model
    epsilon: float = 0.2  # ε (ε_low): PPO-style clipping of the importance ratio ρ
    epsilon_high: float | None = None  # ε_high: ρ clipped to [1-ε, 1+ε_high]; None = ε
    num_iterations: int = 1  # μ: policy updates per batch of rollouts
    kl_mode: str = "low_var_kl"  # the paper's k3 estimator
    loss_agg_mode: str = "sequence-mean-token-mean"  # per-token losses -> one number
    scale_advantages_by_std: bool = True  # Â = (r - mean)/std per group; False: r - mean
    overlong_filter: bool = False  # completions cut by max_new_tokens get loss weight 0
    temperature: float = 1.0  # rollout sampling temperature
    # T of the policy/old/reference log-probs (logits / T); None = the rollout
    # temperature, as Tunix and TRL do. 1.0 takes them from the untempered policy.
    logp_temperature: float | None = None
    top_k: int | None = None
    max_new_tokens: int = 128
    # recompute each layer's activations in the backward pass. Off: measured on the 270M
    # recipe it cost +16% step time and did not lower peak RSS (benchmarks/grpo_step.py)
    remat_layers: bool = False

    def __post_init__(self) -> None:
        if self.num_generations < 2:
            raise ValueError("grpo.num_generations (G) must be >= 2 for group advantages")
        if self.beta < 0 or self.epsilon <= 0 or self.num_iterations < 1:
            raise ValueError("need grpo.beta >= 0, grpo.epsilon > 0, grpo.num_iterations >= 1")
        if self.epsilon_high is not None and self.epsilon_high < self.epsilon:
            raise ValueError(f"grpo.epsilon_high ({self.epsilon_high}) must be >= "
                             f"grpo.epsilon ({self.epsilon})")
        for key, valid in (("loss_agg_mode", self.LOSS_AGG_MODES), ("kl_mode", self.KL_MODES)):
            if getattr(self, key) not in valid:
                raise ValueError(f"unknown grpo.{key} {getattr(self, key)!r}; "
                                 f"valid: {', '.join(valid)}")
        if not self.temperature >= 0:
            raise ValueError(f"need grpo.temperature >= 0, got {self.temperature}")
        if self.logp_temperature is not None and not self.logp_temperature > 0:
            raise ValueError(f"need grpo.logp_temperature > 0, got {self.logp_temperature}")

    @property
    def resolved_logp_temperature(self) -> float:
        """T for log-probs: ``logp_temperature``, else the rollout temperature (1 for
        greedy rollouts, whose T = 0 Tunix also leaves unscaled)."""
        if self.logp_temperature is not None:
            return self.logp_temperature
        return self.temperature or 1.0


@dataclass(frozen=True, kw_only=True)
class OptimSection:
    learning_rate: float = 1e-4
    warmup_steps: int = 5
    decay_steps: int | None = None  # cosine decay horizon; None = max_steps
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.99
    max_grad_norm: float = 1.0


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """A whole GRPO recipe (YAML-loadable; see configs/)."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    lora: LoraSection = field(default_factory=LoraSection)
    grpo: GRPOSection = field(default_factory=GRPOSection)
    optim: OptimSection = field(default_factory=OptimSection)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    prompts_per_step: int = 2
    max_steps: int = 100
    save_every: int = 10
    keep_checkpoints: int = 2
    eval_every: int = 0  # 0 = no periodic evaluation
    eval_examples: int = 32
    mesh_fsdp: int = 1
    mesh_tp: int = 1
    seed: int = 0
    out_dir: str = "runs/train"

    def __post_init__(self) -> None:
        if self.prompts_per_step < 1 or self.max_steps < 0 or self.save_every < 1:
            raise ValueError("need prompts_per_step >= 1, max_steps >= 0, save_every >= 1")


@dataclass
class TrainResult:
    step: int
    stopped_for_deadline: bool
    out_dir: Path
    history: list[dict]

    def summary(self) -> dict:
        last = self.history[-1] if self.history else {}
        return {"step": self.step, "stopped_for_deadline": self.stopped_for_deadline,
                "out_dir": str(self.out_dir), "last": last}


def load_train_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    return load_yaml(TrainConfig, path, overrides)


class DataOrder:
    """An endless seeded order over the examples: epoch e is permutation(seed + e)."""

    def __init__(self, size: int, seed: int, position: int = 0):
        if size < 1:
            raise ValueError("no training examples")
        self.size, self.seed, self.position = size, seed, position

    def take(self, n: int) -> list[int]:
        out = []
        for _ in range(n):
            epoch, offset = divmod(self.position, self.size)
            perm = np.random.default_rng(self.seed + epoch).permutation(self.size)
            out.append(int(perm[offset]))
            self.position += 1
        return out


def _pad_right(rows: list[list[int]], length: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.full((len(rows), length), pad, dtype=np.int32)
    mask = np.zeros((len(rows), length), dtype=np.float32)
    for i, r in enumerate(rows):
        r = r[:length]
        tokens[i, : len(r)] = r
        mask[i, : len(r)] = 1.0
    return tokens, mask


def _pad_left(rows: list[list[int]], multiple: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    length = max(multiple, -(-max(len(r) for r in rows) // multiple) * multiple)
    tokens = np.full((len(rows), length), pad, dtype=np.int32)
    valid = np.zeros((len(rows), length), dtype=bool)
    for i, r in enumerate(rows):
        tokens[i, length - len(r):] = r
        valid[i, length - len(r):] = True
    return tokens, valid


def train(config: TrainConfig, *, max_steps: int | None = None,
          time_budget: str | float | None = None, out_dir: str | Path | None = None,
          examples=None, loaded=None, reward_fns=None) -> TrainResult:
    """Runs (or resumes) a GRPO run. ``examples``/``loaded``/``reward_fns`` let tests
    inject a toy task and a tiny model; otherwise GSM8K, the configured model and the
    configured reward weights are used."""
    from bigthoughts.trainer import GRPOTrainer

    out = Path(out_dir or config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_same_config(out, config)
    deadline = Deadline.from_budget(time_budget)
    trainer = GRPOTrainer(config, out, examples=examples, loaded=loaded, reward_fns=reward_fns)
    limit = config.max_steps if max_steps is None else max_steps
    history: list[dict] = []
    slowest, save_cost = 0.0, 1.0
    stopped = False
    while trainer.step < limit:
        if not deadline.allows(slowest, save_cost):
            t = time.perf_counter()
            trainer.save()
            stopped = True
            break
        start = time.perf_counter()
        history.append(trainer.train_step())
        slowest = max(slowest, time.perf_counter() - start)
        if trainer.step % config.save_every == 0 or trainer.step == limit:
            t = time.perf_counter()
            trainer.save()
            save_cost = max(save_cost, time.perf_counter() - t)
        if config.eval_every and trainer.step % config.eval_every == 0:
            trainer.evaluate()
    if not stopped and trainer.step >= limit and limit > 0:
        trainer.export(out / "export")
    trainer.close()
    return TrainResult(step=trainer.step, stopped_for_deadline=stopped, out_dir=out,
                       history=history)


# Knobs that trade memory for time without changing a number: a relay run may resume
# with them changed (e.g. on a machine with less memory), and runs saved before the
# knob existed resume as if it had its default.
_RESUMABLE_CHANGES = {"grpo": ("remat_layers",)}


def _run_identity(config: dict) -> dict:
    """The config fields that make a run directory's identity (a copy)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items() if k != "out_dir"}
    for section, keys in _RESUMABLE_CHANGES.items():
        for key in keys:
            out.get(section, {}).pop(key, None)
    return out


def _check_same_config(out: Path, config: TrainConfig) -> None:
    """A run directory belongs to one recipe: refuse to resume a different one."""
    path = out / "config.json"
    if path.exists():
        try:
            saved = _run_identity(json.loads(path.read_text()))
        except (OSError, ValueError, AttributeError) as err:
            raise ConfigError(f"{path} is unreadable ({err}); use another --out") from err
        current = _run_identity(to_dict(config))
        if saved != current:
            diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
            raise ConfigError(f"{out} holds a run with a different configuration "
                              f"(differs in: {', '.join(diff)}); use another --out")
    else:
        path.write_text(json.dumps(to_dict(config), indent=1))


def store_for(out: Path, config: TrainConfig) -> CheckpointStore:
    return CheckpointStore(out / "checkpoints", keep=config.keep_checkpoints)


def replace(config: TrainConfig, **changes) -> TrainConfig:
    return dataclasses.replace(config, **changes)
