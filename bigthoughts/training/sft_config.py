"""The supervised warm-start recipe (``bigthoughts sft``) as frozen, validated dataclasses.

    config = load_sft_config("configs/gemma3-270m-sft.yaml", ["batch_size=4"])

It shares ``model``, ``lora`` and ``optim`` with the GRPO recipe; ``data`` says how
GSM8K train solutions become completions (see :mod:`bigthoughts.training.sft_data`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bigthoughts.config import load_yaml
from bigthoughts.models.lora import LoraSection
from bigthoughts.training.config import (
    STYLES,
    ModelSection,
    OptimSection,
    check_run_fields,
)
from bigthoughts.training.sft_data import LOSS_ON
from bigthoughts.training.trackers import ReportSection


@dataclass(frozen=True, kw_only=True)
class SFTDataSection:
    """GSM8K *train* as supervised pairs; a seeded slice is held out for validation."""

    path: str | None = None  # GSM8K dir; default $BIGTHOUGHTS_DATA
    limit: int | None = None  # use only the first ``limit`` training questions
    validation_size: int = 200  # held out of *train* (test stays untouched)
    annotations: bool = True  # keep GSM8K's <<expr=result>> calculator notes
    style: str = "zeroshot"  # prompt style: no worked examples in the prompt
    max_length: int = 512  # longer prompt+completion pairs are skipped, not cut
    # batches are padded to multiples of this many tokens: each (length, completion
    # window) pair compiles once, so coarse buckets compile less and pad more
    pad_multiple: int = 128
    # completion: every completion token is a target; results: only the calculator
    # results of the <<expr=result>> notes the calculator agrees with (the model learns
    # the calculator's arithmetic on the set-ups it writes; see sft_data.result_targets)
    loss_on: str = "completion"

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 2:
            raise ValueError(f"data.limit must be >= 2 (or null for all), got {self.limit}")
        if self.validation_size < 0:
            raise ValueError(f"data.validation_size must be >= 0, got {self.validation_size}")
        if self.style not in STYLES:
            raise ValueError(f"data.style must be one of {', '.join(STYLES)}, got {self.style!r}")
        if self.max_length < 32:
            raise ValueError(f"data.max_length must be >= 32, got {self.max_length}")
        if self.pad_multiple < 1:
            raise ValueError(f"data.pad_multiple must be >= 1, got {self.pad_multiple}")
        if self.loss_on not in LOSS_ON:
            raise ValueError(f"data.loss_on must be one of {', '.join(LOSS_ON)}, "
                             f"got {self.loss_on!r}")
        if self.loss_on == "results" and not self.annotations:
            raise ValueError("data.loss_on: results learns the results of the "
                             "<<expr=result>> notes: it needs data.annotations: true")


@dataclass(frozen=True, kw_only=True)
class SFTConfig:
    """A whole supervised fine-tuning recipe (YAML-loadable; see configs/).

    One step is ``batch_size`` sequences; the loss is the mean negative log-likelihood
    of the completion tokens (prompt tokens are context only). ``full_finetune``
    trains every weight instead of a LoRA adapter.
    """

    model: ModelSection = field(default_factory=ModelSection)
    data: SFTDataSection = field(default_factory=SFTDataSection)
    lora: LoraSection = field(default_factory=LoraSection)
    optim: OptimSection = field(default_factory=lambda: OptimSection(learning_rate=2e-4,
                                                                     warmup_steps=10))
    full_finetune: bool = False
    batch_size: int = 8
    max_steps: int = 300
    save_every: int = 10
    keep_checkpoints: int = 2
    eval_every: int = 0  # 0 = no periodic evaluation
    eval_examples: int = 32  # validation questions answered greedily at each evaluation
    eval_max_new_tokens: int = 256
    calculator: bool = True  # evaluation decodes with the calculator
    remat_layers: bool = False
    report: ReportSection = field(default_factory=ReportSection)
    seed: int = 0
    out_dir: str = "runs/sft"

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_steps < 0 or self.save_every < 1:
            raise ValueError("need batch_size >= 1, max_steps >= 0, save_every >= 1")
        check_run_fields(self)
        if self.eval_max_new_tokens < 1:
            raise ValueError(f"eval_max_new_tokens must be >= 1, got {self.eval_max_new_tokens}")


def load_sft_config(path: str | Path | None, overrides: Sequence[str] = ()) -> SFTConfig:
    """A recipe from YAML (None: the defaults) plus ``"a.b=value"`` overrides."""
    return load_yaml(SFTConfig, path, overrides)
