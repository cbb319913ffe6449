"""Where a training stage starts: the base weights and, with ``model.adapter``, an
adapter to continue (its matrices become the stage's LoRA) or to merge first.

The adapter files themselves (read, write, apply, convert) are ``models.adapter``'s.
"""

from __future__ import annotations

from pathlib import Path

from bigthoughts.models.adapter import (
    AdapterError,
    apply_lora,
    fill_lora,
    read_adapter,
    with_adapter,
)
from bigthoughts.models.lora import LoraSection
from bigthoughts.models.registry import load_model
from bigthoughts.models.spec import LoadedModel
from bigthoughts.training.config import ModelSection

__all__ = ["adapted", "check_adapter_path", "load_starting_model"]


def check_adapter_path(model: ModelSection, lora: LoraSection | None = None) -> None:
    """Refuses a configured adapter that is not a file, or (``lora`` given: the stage
    continues it) whose rank, alpha or targets differ from ``lora`` (before anything loads)."""
    if model.adapter is None:
        return
    if not Path(model.adapter).expanduser().is_file():
        raise AdapterError(f"model.adapter {model.adapter} does not exist")
    if lora is not None and model.adapter_mode == "continue":
        _, saved, _ = read_adapter(Path(model.adapter).expanduser())
        if (saved.rank, saved.alpha, saved.targets) != (lora.rank, lora.alpha, lora.targets):
            raise AdapterError(
                f"model.adapter {model.adapter} has lora.rank={saved.rank}, "
                f"lora.alpha={saved.alpha:g}, lora.targets={saved.targets!r}; this run's lora "
                f"section must match to continue it (or set model.adapter_mode=merge)")


def load_starting_model(model: ModelSection, lora: LoraSection | None = None
                        ) -> tuple[LoadedModel, dict | None]:
    """(the weights a training stage starts from, the LoRA matrices it starts with).

    ``lora`` is the stage's LoRA section (None for full fine-tuning). With an adapter in
    ``continue`` mode and a LoRA stage, the weights are the base's and the adapter's
    matrices are returned as the LoRA's starting value; otherwise the adapter (if any)
    is merged into the weights and the LoRA starts fresh (None).
    """
    check_adapter_path(model, lora)
    loaded = load_model(model.name, path=model.path, dtype=model.dtype)
    if model.adapter is None:
        return loaded, None
    path = Path(model.adapter).expanduser()
    if lora is None or model.adapter_mode == "merge":
        return with_adapter(loaded, path), None
    arrays, _, _ = read_adapter(path)
    return loaded, arrays


def adapted(model, lora: LoraSection, seed: int, init: dict | None,
            source: str | Path | None = None):
    """``model`` with LoRA on ``lora.targets``: fresh (B = 0), or holding ``init``'s matrices."""
    out = apply_lora(model, lora, seed)
    if init is not None:
        fill_lora(out, init, source or "adapter")
    return out
