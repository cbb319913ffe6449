"""``make_engine``: which engine serves a model, and the engine it builds.

Every engine honours the contract of ``inference.contract`` (its ``Engine.generate``).
Two implementations:

* ``"jax"``: ``bigthoughts.inference.jax_sampler.Sampler`` on the Tunix model (training rollouts,
  TPU/GPU, any checkpoint we can load);
* ``"llama.cpp"``: ``bigthoughts.inference.llamacpp.LlamaCppEngine`` on a GGUF file
  (CPU inference; needs the ``llamacpp`` extra).

``"auto"`` picks llama.cpp for a GGUF model when JAX would run on the CPU and the
``llamacpp`` extra is installed (measured in ``benchmarks/llamacpp.py``: about 3x faster
for the 5-trace vote), and JAX otherwise (accelerators, checkpoints that are not GGUF,
or no llama-cpp-python).

Example::

    chosen = make_engine("auto")
    solver = Solver(chosen.engine, style=chosen.loaded.spec.prompt_style)
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bigthoughts.inference.contract import Engine
from bigthoughts.models.registry import (
    LoadedModel,
    ModelLoadError,
    embedded_package,
    file_digest,
)
from bigthoughts.models.spec import portable_source

EngineKind = Literal["auto", "jax", "llama.cpp"]
ENGINE_KINDS: tuple[str, ...] = ("auto", "jax", "llama.cpp")


@dataclass(frozen=True)
class ChosenEngine:
    """An engine and the model it serves.

    ``loaded.model`` is None for llama.cpp (it holds the weights itself); ``loaded``
    still carries the spec (prompt style) and a source naming the engine.
    """

    engine: Engine
    kind: Literal["jax", "llama.cpp"]
    loaded: LoadedModel


def llamacpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def gguf_source(model: str | Path | None):
    """``(path, spec)`` of the GGUF file that ``model`` names, or None when it is not
    one (a checkpoint directory, a registry model that is not embedded)."""
    from bigthoughts.models.registry import DEFAULT_MODEL, REGISTRY, ModelSpec, embedded_gguf_path

    name = DEFAULT_MODEL if model is None else str(model)
    spec = REGISTRY.get(name)
    if spec is not None:
        return (embedded_gguf_path(), spec) if spec.embedded else None
    path = Path(name)
    if path.is_file() and path.suffix == ".gguf":
        it = "-it" in path.name.lower() or "instruct" in path.name.lower()
        return path, ModelSpec(name=path.stem, family="gemma3", instruction_tuned=it)
    return None


def resolve_kind(kind: str, *, gguf: bool, jax_backend: str | None = None,
                 llamacpp: bool | None = None, lora: bool = False) -> str:
    """The concrete engine for ``kind``; "auto" is decided here.

    "auto" is llama.cpp for a GGUF model with a GGUF LoRA adapter (``lora``: it runs
    only there), or when the model is a GGUF file, llama-cpp-python is installed
    (``llamacpp``, default: looked up) and JAX's backend (``jax_backend``, default: asked
    of JAX) is the CPU; JAX otherwise. On a 2-core CPU our llama.cpp engine runs the
    5-trace vote in about a third of the JAX sampler's time (``benchmarks/llamacpp.py``).
    """
    if kind not in ENGINE_KINDS:
        raise ModelLoadError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINE_KINDS)}")
    if kind != "auto":
        return kind
    if gguf and lora:
        return "llama.cpp"
    if not gguf or not (llamacpp_available() if llamacpp is None else llamacpp):
        return "jax"
    if jax_backend is None:
        import jax

        jax_backend = jax.default_backend()
    return "llama.cpp" if jax_backend == "cpu" else "jax"


def make_engine(
    kind: str = "auto",
    *,
    model: str | Path | None = None,
    lora: str | Path | None = None,
    threads: int | None = None,
    load_jax: Callable[[], LoadedModel] | None = None,
) -> ChosenEngine:
    """Builds the engine ``kind`` for ``model`` (default: the embedded Gemma 3 270M).

    ``model``: a registry name, a ``.gguf`` file or a checkpoint directory (JAX only).
    ``lora``: a GGUF LoRA adapter (llama.cpp only). ``load_jax`` loads the model for
    the JAX engine (default ``load_model(model)``), e.g. with another dtype.
    """
    source = gguf_source(model)
    chosen = resolve_kind(kind, gguf=source is not None, lora=lora is not None)
    if chosen == "llama.cpp":
        if source is None:
            raise ModelLoadError(
                "the llama.cpp engine needs a GGUF model (the embedded default or a .gguf "
                "path); convert a checkpoint with `bigthoughts export --gguf`")
        from bigthoughts.inference.llamacpp import LlamaCppEngine, LlamaCppError

        path, spec = source
        try:
            engine = LlamaCppEngine(path, lora=lora, threads=threads, spec=spec)
        except LlamaCppError as exc:
            raise ModelLoadError(str(exc)) from exc
        package = embedded_package() if spec.embedded else None
        source = portable_source(path, package=package, digest=file_digest(path))
        loaded = LoadedModel(model=None, tokenizer=None, spec=spec, source=f"llama.cpp:{source}")
        return ChosenEngine(engine=engine, kind="llama.cpp", loaded=loaded)
    if lora is not None:
        raise ModelLoadError("a GGUF LoRA adapter needs the llama.cpp engine (--engine llama.cpp)")
    from bigthoughts.inference.jax_sampler import Sampler
    from bigthoughts.models.registry import load_model

    loaded = load_jax() if load_jax is not None else load_model(model)
    return ChosenEngine(engine=Sampler(loaded.model, loaded.tokenizer), kind="jax",
                        loaded=loaded)
