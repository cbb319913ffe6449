"""A GRPO recipe as frozen, validated dataclasses (YAML-loadable; see configs/).

Each section mirrors a stage: ``model`` (which weights), ``data`` (which questions,
which prompt style), ``lora`` (the adapter), ``grpo`` (the objective, named as in
Tunix's ``GRPOConfig`` and the DeepSeekMath paper: G, β, ε, μ), ``optim`` (AdamW and
its schedule). Every ``__post_init__`` refuses a bad value with a one-line message,
so a typo stops a run before the model loads and before anything is written.

    config = load_train_config("configs/gemma3-270m-cpu.yaml", ["grpo.beta=0.02"])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from bigthoughts.config import RewardConfig, load_yaml
from bigthoughts.models.lora import LoraSection
from bigthoughts.training.trackers import ReportSection

__all__ = ["DataSection", "GRPOSection", "ModelSection", "OptimSection", "TrainConfig",
           "load_train_config"]

DTYPES = ("float32", "bfloat16")
ADAPTER_MODES = ("continue", "merge")
STYLES = ("chat", "fewshot", "zeroshot")


def _finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")


@dataclass(frozen=True, kw_only=True)
class ModelSection:
    """The policy's starting weights: a registry ``name`` and/or a checkpoint ``path``,
    optionally with a LoRA ``adapter`` folded in (e.g. the ``adapter.safetensors`` of an
    SFT export). For GRPO the adapted model is also the reference of the KL term."""

    name: str = "gemma3-270m"
    path: str | None = None
    adapter: str | None = None
    # continue: the stage's LoRA starts from the adapter's matrices (same rank, alpha and
    # targets), so its export is one adapter from the base to the result; merge: the
    # adapter is folded into the weights and a fresh LoRA trains on top (its export is a
    # second adapter, to apply after the first). Full fine-tuning always merges.
    adapter_mode: str = "continue"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.adapter_mode not in ADAPTER_MODES:
            raise ValueError(f"model.adapter_mode must be one of {', '.join(ADAPTER_MODES)}, "
                             f"got {self.adapter_mode!r}")


@dataclass(frozen=True, kw_only=True)
class DataSection:
    """The training questions and how they are put to the model."""

    path: str | None = None  # GSM8K dir; default $BIGTHOUGHTS_DATA
    split: str = "train"
    limit: int | None = None  # use only the first ``limit`` questions (after ids_file)
    ids_file: str | None = None  # train only on the ids listed there (scripts/solvable_ids.py)
    # a fixed dev split of the same split (an id list): the periodic evaluation's questions
    # (the first ``eval_examples`` of them), never trained on: they leave the training set.
    # None: the periodic evaluation takes the first ``eval_examples`` of GSM8K test
    dev_ids_file: str | None = None
    style: str | None = None  # prompt style; None = the model's (fewshot for base)
    shots: int = 1  # worked examples in a fewshot prompt

    def __post_init__(self) -> None:
        if self.split not in ("train", "test"):
            raise ValueError(f"data.split must be train or test, got {self.split!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"data.limit must be >= 1 (or null for all), got {self.limit}")
        if self.style is not None and self.style not in STYLES:
            raise ValueError(f"data.style must be one of {', '.join(STYLES)}, got {self.style!r}")
        if self.shots < 0:
            raise ValueError(f"data.shots must be >= 0, got {self.shots}")


@dataclass(frozen=True, kw_only=True)
class GRPOSection:
    """GRPO hyper-parameters, named as in Tunix's ``GRPOConfig`` and the papers.

    num_generations (G): completions sampled per prompt; advantages are relative to
    the group. beta (β): weight of the KL penalty to the frozen reference. epsilon (ε):
    clipping of the importance ratio π_θ/π_θold to [1-ε, 1+ε]. num_iterations (μ):
    policy updates per batch of rollouts (ratios differ from 1 from the 2nd update on).

    The defaults are GRPO (DeepSeekMath, arXiv:2402.03300) as Tunix's ``GRPOConfig``
    runs it. The variants are settings of the same knobs (docs/DESIGN-NOTES.md):

    * DAPO (arXiv:2503.14476; Tunix's ``DAPOConfig``): ``beta: 0``,
      ``epsilon_high: 0.28`` (clip-higher), ``loss_agg_mode: token-mean``,
      ``overlong_filter: true``, and dynamic sampling (``dynamic_sampling: N``);
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
    # DAPO's dynamic sampling: a group whose G rewards are all equal has zero advantages
    # (no policy gradient, only the KL pull). Up to this many extra prompts per step are
    # drawn to replace such groups; if they run out, the step trains on what it has.
    # Each extra prompt costs a rollout, not an update. 0: off
    dynamic_sampling: int = 0
    temperature: float = 1.0  # rollout sampling temperature
    # T of the policy/old/reference log-probs (logits / T); None = the rollout
    # temperature, as Tunix and TRL do. 1.0 takes them from the untempered policy.
    logp_temperature: float | None = None
    top_k: int | None = None
    max_new_tokens: int = 128
    # GSM8K's calculator inside rollouts: the sampler answers <<expr= calls; the tokens it
    # inserts are masked out of the policy loss and the KL (the model did not choose them)
    calculator: bool = False
    # recompute each layer's activations in the backward pass. It lowers the CPU peak only
    # together with the split update and XLA's lean CPU schedule (training.state): 8.4 ->
    # 5.5 GB on the 270M recipe (benchmarks/grpo_memory.py); the CPU recipes turn it on
    remat_layers: bool = False
    # the update's micro-batch, in whole groups (prompts with their G completions): the
    # step's groups go through the forward/backward this many at a time, LoRA gradients
    # add up in float32 and one optimizer step follows. The loss keeps its meaning (each
    # micro-batch divides by the whole step's normalisers). Memory then grows with this,
    # not with prompts_per_step x G. None: the whole step at once
    micro_batch_prompts: int | None = None
    # where rollouts are sampled: "jax" (our sampler, any backend) or "llama.cpp" (CPU: the
    # current LoRA re-exported as a GGUF adapter after each update; training.llamacpp_rollouts)
    rollout_engine: str = "jax"
    # guards against training on nothing: a warning line when no group of a step has
    # reward spread, when more than guard_truncated of its completions hit max_new_tokens,
    # or when all its completions are the same text; after guard_patience steps in a row
    # without a policy gradient (no spread, or all the same) the run checkpoints and stops
    # with exit status 76 instead of going on. 0: warn only
    guard_truncated: float = 0.5
    guard_patience: int = 20
    # the rollout engine's draws are not the trainer's computation (llama.cpp's quantised
    # kernels, another precision): truncated importance sampling reweights each token's
    # policy loss by w = π_old,trainer / π_sampler of it, capped at sampler_correction_cap
    # (stop-gradient, as Tunix's sampler_is and TRL's vLLM correction). "token": w per
    # token, min(w, C); "sequence": the sequence's product of ratios, min(., C), for all
    # its tokens; "token_mask": w where w <= C, 0 beyond (those tokens dropped). Calculator
    # tokens stay out (their mask is 0). None: off (docs/DESIGN-NOTES.md §13: measured)
    sampler_correction: str | None = None
    sampler_correction_cap: float = 2.0

    def __post_init__(self) -> None:
        if self.rollout_engine not in ("jax", "llama.cpp"):
            raise ValueError(f"grpo.rollout_engine must be jax or llama.cpp, got "
                             f"{self.rollout_engine!r}")
        if self.num_generations < 2:
            raise ValueError("grpo.num_generations (G) must be >= 2 for group advantages")
        for name in ("beta", "epsilon", "temperature"):
            _finite(f"grpo.{name}", getattr(self, name))
        if self.sampler_correction not in (None, "token", "sequence", "token_mask"):
            raise ValueError(f"grpo.sampler_correction must be token, sequence, token_mask "
                             f"or null, got {self.sampler_correction!r}")
        if self.sampler_correction is not None and self.resolved_logp_temperature != \
                self.temperature:
            raise ValueError(f"grpo.sampler_correction needs the log-probs at the rollout "
                             f"temperature ({self.temperature}), not logp_temperature "
                             f"{self.resolved_logp_temperature}")
        _finite("grpo.sampler_correction_cap", self.sampler_correction_cap)
        if self.sampler_correction_cap < 1.0:
            raise ValueError(f"grpo.sampler_correction_cap must be >= 1, got "
                             f"{self.sampler_correction_cap}")
        if not 0.0 <= self.guard_truncated <= 1.0:
            raise ValueError(f"grpo.guard_truncated must be in [0, 1], got {self.guard_truncated}")
        if self.guard_patience < 0:
            raise ValueError(f"grpo.guard_patience must be >= 0, got {self.guard_patience}")
        if self.micro_batch_prompts is not None and self.micro_batch_prompts < 1:
            raise ValueError(f"grpo.micro_batch_prompts must be >= 1 (or null), got "
                             f"{self.micro_batch_prompts}")
        if self.dynamic_sampling < 0:
            raise ValueError(f"grpo.dynamic_sampling must be >= 0 (extra prompts per step), "
                             f"got {self.dynamic_sampling}")
        if self.beta < 0 or self.epsilon <= 0 or self.num_iterations < 1:
            raise ValueError("need grpo.beta >= 0, grpo.epsilon > 0, grpo.num_iterations >= 1")
        if self.temperature < 0:
            raise ValueError(f"grpo.temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"grpo.top_k must be >= 1 (or null), got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"grpo.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.epsilon_high is not None and self.epsilon_high < self.epsilon:
            raise ValueError(f"grpo.epsilon_high ({self.epsilon_high}) must be >= "
                             f"grpo.epsilon ({self.epsilon})")
        for key, valid in (("loss_agg_mode", self.LOSS_AGG_MODES), ("kl_mode", self.KL_MODES)):
            if getattr(self, key) not in valid:
                raise ValueError(f"unknown grpo.{key} {getattr(self, key)!r}; "
                                 f"valid: {', '.join(valid)}")
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
    """AdamW on the LoRA weights, linear warm-up then cosine decay to 10% (η: learning_rate)."""

    learning_rate: float = 1e-4  # η, peak
    warmup_steps: int = 5
    decay_steps: int | None = None  # cosine decay horizon; None = max_steps
    weight_decay: float = 0.0
    b1: float = 0.9  # β1 of Adam
    b2: float = 0.99  # β2 of Adam
    max_grad_norm: float = 1.0  # global-norm gradient clipping

    def __post_init__(self) -> None:
        for name in ("learning_rate", "weight_decay", "b1", "b2", "max_grad_norm"):
            _finite(f"optim.{name}", getattr(self, name))
        if self.learning_rate <= 0:
            raise ValueError(f"optim.learning_rate must be > 0, got {self.learning_rate}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.decay_steps is not None and self.decay_steps < 1:
            raise ValueError(f"optim.decay_steps must be >= 1 (or null), got {self.decay_steps}")
        if self.weight_decay < 0 or self.max_grad_norm <= 0:
            raise ValueError("need optim.weight_decay >= 0 and optim.max_grad_norm > 0")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            raise ValueError(f"optim.b1 and optim.b2 must be in [0, 1), got {self.b1}, {self.b2}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """A whole GRPO recipe (YAML-loadable; see configs/).

    One step uses ``prompts_per_step`` questions × G completions each.
    """

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
    # new tokens of the periodic greedy evaluation; None = grpo.max_new_tokens
    eval_max_new_tokens: int | None = None
    mesh_fsdp: int = 1
    mesh_tp: int = 1
    report: ReportSection = field(default_factory=ReportSection)
    seed: int = 0
    out_dir: str = "runs/train"

    def __post_init__(self) -> None:
        if self.prompts_per_step < 1 or self.max_steps < 0 or self.save_every < 1:
            raise ValueError("need prompts_per_step >= 1, max_steps >= 0, save_every >= 1")
        check_run_fields(self)
        micro = self.grpo.micro_batch_prompts
        if micro is not None and self.prompts_per_step % micro:
            raise ValueError(f"grpo.micro_batch_prompts ({micro}) must divide "
                             f"prompts_per_step ({self.prompts_per_step})")
        if self.eval_max_new_tokens is not None and self.eval_max_new_tokens < 1:
            raise ValueError(f"eval_max_new_tokens must be >= 1 (or null), got "
                             f"{self.eval_max_new_tokens}")
        if self.mesh_fsdp < 1 or self.mesh_tp < 1:
            raise ValueError(f"mesh_fsdp and mesh_tp must be >= 1, got "
                             f"{self.mesh_fsdp}, {self.mesh_tp}")


def check_run_fields(config) -> None:
    """The checks every stage's config shares: its checkpoints, evaluation and run dir."""
    if config.keep_checkpoints < 1 or config.eval_every < 0 or config.eval_examples < 1:
        raise ValueError("need keep_checkpoints >= 1, eval_every >= 0, eval_examples >= 1")
    if not config.out_dir:
        raise ValueError("out_dir must not be empty")


def load_train_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """A recipe from YAML (None: the defaults) plus ``"a.b=value"`` overrides."""
    return load_yaml(TrainConfig, path, overrides)
