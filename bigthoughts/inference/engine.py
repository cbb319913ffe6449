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

Which model and which kind are ``models.resolve``'s to decide; this module builds.

Example::

    chosen = make_engine(settle(ModelChoice()))
    solver = Solver(chosen.engine, format=prompt_format_for(None, chosen.loaded.spec, 2))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from bigthoughts.inference.contract import Engine
from bigthoughts.models.registry import LoadedModel, ModelLoadError, embedded_package, file_digest
from bigthoughts.models.resolve import (
    ModelChoice,
    engine_kind,
    gguf_source,
    llamacpp_lora,
    load_jax,
)
from bigthoughts.models.spec import portable_source


@dataclass(frozen=True)
class ChosenEngine:
    """An engine and the model it serves.

    ``loaded.model`` is None for llama.cpp (it holds the weights itself); ``loaded``
    still carries the spec (prompt style) and a source naming the engine.
    """

    engine: Engine
    kind: Literal["jax", "llama.cpp"]
    loaded: LoadedModel


def make_engine(choice: ModelChoice | None = None) -> ChosenEngine:
    """Builds the engine for ``choice`` (default: the embedded Gemma 3 270M, no adapter;
    pass ``models.resolve.settle(choice)`` for the shipped defaults)."""
    choice = choice or ModelChoice()
    kind = engine_kind(choice)
    if kind == "jax":
        if choice.lora:
            raise ModelLoadError("a GGUF LoRA adapter needs the llama.cpp engine "
                                 "(--engine llama.cpp)")
        from bigthoughts.inference.jax_sampler import Sampler

        loaded = load_jax(choice)
        return ChosenEngine(engine=Sampler(loaded.model, loaded.tokenizer), kind="jax",
                            loaded=loaded)
    source = gguf_source(choice.checkpoint or choice.model)
    if source is None:
        raise ModelLoadError(
            "the llama.cpp engine needs a GGUF model (the embedded default or a .gguf "
            "path); convert a checkpoint with `bigthoughts export --gguf`")
    from bigthoughts.inference.llamacpp import LlamaCppEngine, LlamaCppError

    lora = llamacpp_lora(choice)
    path, spec = source
    try:
        engine = LlamaCppEngine(path, lora=lora, threads=choice.threads, spec=spec)
    except LlamaCppError as exc:
        raise ModelLoadError(str(exc)) from exc
    package = embedded_package() if spec.embedded else None
    label = portable_source(path, package=package, digest=file_digest(path))
    loaded = LoadedModel(model=None, tokenizer=None, spec=spec, source=f"llama.cpp:{label}")
    if choice.adapter:
        from bigthoughts.models.adapter import adapter_label

        loaded = dataclasses.replace(
            loaded, source=f"{loaded.source} + {adapter_label(choice.adapter)}")
    return ChosenEngine(engine=engine, kind="llama.cpp", loaded=loaded)


def token_counter(engine: Engine) -> Callable[[str], int] | None:
    """A prompt's tokens (BOS included) by the engine's own tokenizer: llama.cpp's
    ``tokenize`` or the JAX sampler's SentencePiece ``tokenizer``; None for an engine
    with neither."""
    tokenize = getattr(engine, "tokenize", None)
    if tokenize is not None:
        return lambda prompt: len(tokenize(prompt, add_bos=True))
    tokenizer = getattr(engine, "tokenizer", None)
    if tokenizer is not None:
        return lambda prompt: len(tokenizer.encode(prompt, add_bos=True))
    return None
