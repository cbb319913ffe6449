"""What a LoRA adapter is: its rank, its scale and the modules it adapts.

A plain frozen dataclass (no JAX), shared by the adapter files (``models.adapter``),
the training recipes (``training.config``) and the GGUF export.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["LORA_TARGETS", "LoraSection"]

LORA_TARGETS = (
    ".*q_einsum|.*kv_einsum|.*qkv_einsum|.*attn_vec_einsum|.*gate_proj|.*up_proj|.*down_proj"
)


@dataclass(frozen=True, kw_only=True)
class LoraSection:
    """Low-rank adapter ΔW = A·B·(alpha/rank) on the modules matching ``targets`` (qwix)."""

    rank: int = 16  # r
    alpha: float = 32.0  # α: the update is scaled by α / r
    targets: str = LORA_TARGETS  # regex over module paths

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
        if not math.isfinite(self.alpha):
            raise ValueError(f"lora.alpha must be finite, got {self.alpha}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
