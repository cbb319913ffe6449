"""What the Hugging Face and Kaggle checkpoint loaders share: the Tunix config class of a
family, the spec check, the default spec and the Gemma tokenizer check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flax import nnx

from bigthoughts.models.build import ParameterMismatch
from bigthoughts.models.spec import ModelLoadError, ModelSpec
from bigthoughts.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer

Loaded = tuple[nnx.Module, Tokenizer, ModelSpec]
# The fields that make two configs the same model size.
IDENTITY = ("num_layers", "embed_dim", "num_heads", "num_kv_heads", "head_dim")


def model_config_cls(family: str):
    if family == "gemma3":
        from tunix.models.gemma3.model import ModelConfig
    else:
        from tunix.models.gemma.model import ModelConfig
    return ModelConfig


def gemma2_attention(num_layers: int, kinds: list[str] | None = None) -> tuple:
    """Tunix attention types from HF ``layer_types``; default: local, global, local, ..."""
    from tunix.models.gemma.model import AttentionType

    kinds = kinds or ["sliding_attention", "full_attention"] * num_layers
    return tuple(AttentionType.GLOBAL if k == "full_attention" else AttentionType.LOCAL_SLIDING
                 for k in kinds[:num_layers])


def check_spec(family: str, config: Any, spec: ModelSpec | None) -> None:
    """The checkpoint must be the model ``spec`` names: same family and sizes."""
    if spec is None:
        return
    if spec.family != family:
        raise ModelLoadError(f"{spec.name} is a {spec.family} model but the checkpoint "
                             f"holds a {family} model")
    if spec.tunix_config:
        ref = getattr(model_config_cls(family), spec.tunix_config)()
        diff = [f"{k}={getattr(config, k)} (expected {getattr(ref, k)})" for k in IDENTITY
                if getattr(config, k) != getattr(ref, k)]
        if diff:
            raise ParameterMismatch(f"checkpoint does not match {spec.name}: {', '.join(diff)}")


def default_spec(name: str, family: str) -> ModelSpec:
    lowered = name.lower()
    return ModelSpec(name=name, family=family,  # type: ignore[arg-type]
                     instruction_tuned="-it" in lowered or "instruct" in lowered)


def load_tokenizer(candidates: list[Path]) -> Tokenizer:
    candidates = list(dict.fromkeys(p.resolve() for p in candidates))
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        looked = ", ".join(map(str, candidates))
        raise ModelLoadError(
            f"no SentencePiece tokenizer.model found (looked for {looked}); copy the "
            "tokenizer.model of the model's release next to the weights")
    try:
        tokenizer = Tokenizer.from_file(path)
    except (RuntimeError, OSError) as exc:
        raise ModelLoadError(f"{path} is not a SentencePiece model: {exc}") from exc
    proc = tokenizer.processor
    if (proc.bos_id(), proc.eos_id(), proc.pad_id()) != (BOS_ID, EOS_ID, PAD_ID):
        raise ModelLoadError(f"{path} is not a Gemma tokenizer: bos/eos/pad ids are "
                             f"{proc.bos_id()}/{proc.eos_id()}/{proc.pad_id()}, expected 2/1/0")
    return tokenizer

