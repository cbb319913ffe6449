"""Where llama.cpp is installed for the llama.cpp engine: the pinned build, the xllamacpp
wheel's library, the opt-in native build in the cache, ``$BIGTHOUGHTS_LLAMA_LIB``.
Finding it loads nothing (``bigthoughts.inference.llama_lib`` loads it), so the engine
choice (``models.resolve``) can ask whether it is there."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from bigthoughts.models.spec import cache_dir

LLAMA_BUILD = "b11549"  # the llama.cpp commit of xllamacpp 2026.10.11549
XLLAMACPP_VERSION = "2026.10.11549"


def native_dir() -> Path:
    """Where ``bigthoughts build-llamacpp`` puts llama.cpp built for this CPU."""
    return cache_dir() / f"llama.cpp-{LLAMA_BUILD}-native"


def wheel_library() -> Path | None:
    """The xllamacpp wheel's shared library (found without importing it), or None."""
    spec = importlib.util.find_spec("xllamacpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("xllamacpp*.so"))
        if found:
            return found[0]
    return None


def library_choice() -> tuple[Path, str] | None:
    """``(path, kind)`` of the library ``load`` would use (kind: env, native, wheel)."""
    chosen = os.environ.get("BIGTHOUGHTS_LLAMA_LIB")
    if chosen:
        return Path(chosen), "env"
    native = native_dir() / "lib" / "libllama.so"
    if os.environ.get("BIGTHOUGHTS_LLAMA_NATIVE", "1") != "0" and native.is_file():
        return native, "native"
    wheel = wheel_library()
    return (wheel, "wheel") if wheel is not None else None


def available() -> bool:
    """True when a llama.cpp library is installed (the engine may still fail to load it)."""
    return library_choice() is not None
