"""Which model answers: its weights, adapter, engine kind and prompt, settled once.

``ask``, ``generate``, ``eval`` and ``serve`` all take the same flags (``--model``,
``--checkpoint``, ``--adapter``, ``--lora``, ``--dtype``, ``--engine``, ``--threads``,
``--style``, ``--calculator``). A :class:`ModelChoice` holds them; :func:`settle` fills
in the defaults (with nothing named: the package's shipped adapter on the embedded base,
prompted as it was trained); the functions below answer what an engine needs (the kind,
the JAX model with its adapter folded in, the adapter as a GGUF LoRA for llama.cpp)
and ``inference.engine.make_engine(choice)`` builds it. The CLI only parses and prints.

    choice = settle(ModelChoice())              # the shipped gemma3-270m-gsm8k
    engine_kind(choice)                          # "llama.cpp" on a CPU with the extra
    prompt_format_for(choice.style, spec_before_load(choice), shots=2)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from bigthoughts.data import PromptFormat, prompt_format
from bigthoughts.models.registry import (
    DEFAULT_MODEL,
    REGISTRY,
    embedded_gguf_path,
    load_model,
    looks_like_path,
)
from bigthoughts.models.spec import LoadedModel, ModelLoadError, ModelSpec

ENGINE_KINDS: tuple[str, ...] = ("auto", "jax", "llama.cpp")


@dataclass(frozen=True, kw_only=True)
class ModelChoice:
    """What a command asked for. ``model``: a registry name or a path (None: the
    default); ``checkpoint``: a directory exported by ``train`` (its weights win);
    ``adapter``: a LoRA ``.safetensors`` (folded in on JAX, converted for llama.cpp);
    ``lora``: a GGUF LoRA (llama.cpp only); ``dtype``: the JAX weights' dtype (naming
    one picks JAX under ``auto``); ``style``/``calculator``: how to prompt (None: the
    model's own); ``shipped``: the shipped model's name once :func:`settle` chose it."""

    model: str | None = None
    checkpoint: str | None = None
    adapter: str | None = None
    lora: str | None = None
    dtype: str | None = None
    engine: str = "auto"
    threads: int | None = None
    style: str | None = None
    calculator: bool | None = None
    shipped: str | None = None

    def __post_init__(self) -> None:
        if self.engine not in ENGINE_KINDS:
            raise ModelLoadError(f"unknown engine {self.engine!r}; choose one of "
                                 f"{', '.join(ENGINE_KINDS)}")


def settle(choice: ModelChoice) -> ModelChoice:
    """The choice with its defaults: with no model, checkpoint, adapter or LoRA named (or
    the shipped model's own name), the package's shipped adapter on the embedded base,
    with the style and calculator it was trained with unless given; ``gemma3-270m-base``
    is the raw base. The calculator is off unless something turned it on."""
    from bigthoughts.models.shipped import BASE_ALIAS, shipped_default

    shipped = shipped_default()
    named = shipped is not None and choice.model == shipped.name
    if choice.model == BASE_ALIAS:
        choice = dataclasses.replace(choice, model=DEFAULT_MODEL)
    elif choice.model is None or named:
        given = [flag for flag, value in (("--checkpoint", choice.checkpoint),
                                          ("--adapter", choice.adapter),
                                          ("--lora", choice.lora)) if value]
        if named and given:
            raise ModelLoadError(f"--model {shipped.name} is the base plus its shipped adapter; "
                                 f"with {given[0]} use --model {BASE_ALIAS}")
        if shipped is not None and not given:
            choice = dataclasses.replace(
                choice, model=None if shipped.base == DEFAULT_MODEL else shipped.base,
                adapter=str(shipped.adapter_path()), shipped=shipped.name,
                style=shipped.style if choice.style is None else choice.style,
                calculator=shipped.calculator if choice.calculator is None
                else choice.calculator)
    if choice.calculator is None:
        choice = dataclasses.replace(choice, calculator=False)
    return choice


def spec_before_load(choice: ModelChoice) -> ModelSpec | None:
    """The spec of the chosen model when it is known without loading (else None); a
    model or checkpoint path that does not exist is refused here."""
    if choice.checkpoint:
        if not Path(choice.checkpoint).expanduser().exists():
            raise ModelLoadError(f"checkpoint path does not exist: {choice.checkpoint}")
        return None
    if choice.model is None:
        return REGISTRY[DEFAULT_MODEL]
    if choice.model in REGISTRY:  # a name that needs a path fails in load_model, not here
        return REGISTRY[choice.model] if REGISTRY[choice.model].embedded else None
    if looks_like_path(choice.model) and not Path(choice.model).expanduser().exists():
        raise ModelLoadError(f"model path does not exist: {choice.model}")
    return None


def prompt_format_for(style: str | None, spec: ModelSpec | None, shots: int) -> PromptFormat:
    """The prompt: ``style`` if given, else the model's own (chat for instruction-tuned
    models, fewshot for base ones; fewshot when the model is not known yet)."""
    return prompt_format(style or (spec.prompt_style if spec else "fewshot"), shots)


def llamacpp_available() -> bool:
    from bigthoughts.llama_install import available

    return available()


def gguf_source(model: str | Path | None) -> tuple[Path, ModelSpec] | None:
    """``(path, spec)`` of the GGUF file that ``model`` names, or None when it is not
    one (a checkpoint directory, a registry model that is not embedded)."""
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
    """The engine that ``kind`` means for a model (``gguf``: it is a GGUF file).

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


def engine_kind(choice: ModelChoice) -> str:
    """The engine, with "auto" settled: a GGUF LoRA needs llama.cpp, a JAX dtype or a
    checkpoint needs JAX, else :func:`resolve_kind` decides."""
    if choice.engine != "auto":
        return choice.engine
    gguf = not choice.checkpoint and gguf_source(choice.model) is not None
    if choice.dtype is not None and not (gguf and choice.lora):
        return "jax"
    return resolve_kind("auto", gguf=gguf, lora=bool(choice.lora))


def load_jax(choice: ModelChoice) -> LoadedModel:
    """The chosen weights for the JAX engine, with the adapter (if any) folded in."""
    from bigthoughts.models.adapter import with_adapter

    if choice.adapter and not Path(choice.adapter).expanduser().is_file():
        raise ModelLoadError(f"adapter file does not exist: {choice.adapter}")
    if choice.checkpoint:
        from bigthoughts.models.export import load_exported

        lm = load_exported(choice.checkpoint, dtype=choice.dtype or "float32")
    else:
        lm = load_model(choice.model, dtype=choice.dtype or "float32")
    if choice.adapter:
        lm = with_adapter(lm, Path(choice.adapter).expanduser())
    return lm


def llamacpp_lora(choice: ModelChoice) -> Path | None:
    """The GGUF LoRA llama.cpp applies: ``lora`` as given, or the adapter converted
    (once, into the cache) for the chosen GGUF base."""
    if not choice.adapter:
        return Path(choice.lora) if choice.lora else None
    from bigthoughts.models.adapter import adapter_gguf

    if choice.lora:
        raise ModelLoadError("give the adapter once: --adapter (safetensors) or --lora (GGUF)")
    if not Path(choice.adapter).expanduser().is_file():
        raise ModelLoadError(f"adapter file does not exist: {choice.adapter}")
    source = gguf_source(choice.checkpoint or choice.model)
    if source is None:
        raise ModelLoadError("the llama.cpp engine needs a GGUF model (the embedded default or "
                             "a .gguf path)")
    return adapter_gguf(choice.adapter, source[0])
