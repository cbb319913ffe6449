"""LoRA adapters as small safetensors files, and loading a model with one applied.

    save_adapter("adapter.safetensors", lora_state, LoraSection(rank=16), provenance={...})
    lm = with_adapter(load_model(), "adapter.safetensors")   # base + ΔW, merged

File layout: one tensor per LoRA matrix, named by its path in the Tunix model tree
(``layers.3.attn.q_einsum.w_lora_a``), stored as float16 or bfloat16 to halve
the size (a rank-16 adapter of Gemma 3 270M is ~7 MB); the metadata holds the
rank, alpha, target regex, dtype and provenance (JSON). Loading re-applies qwix LoRA
with the same rank/targets, fills the matrices and folds them into the base weights
(``export.merge_lora``), so inference runs at the base model's speed.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import qwix
from flax import nnx

from bigthoughts.models.build import build_model, parse_path_name, path_name
from bigthoughts.models.export import merge_lora
from bigthoughts.models.lora import LoraSection
from bigthoughts.models.spec import LoadedModel
from bigthoughts.models.tensorfile import write_safetensors

FORMAT = "bigthoughts-lora-1"
STORE_DTYPES = ("float16", "bfloat16", "float32")


def apply_lora(model, lora: LoraSection, seed: int):
    """A copy of ``model`` with LoRA adapters (``nnx.LoRAParam``) on ``lora.targets``;
    B starts at zero, so the adapted model computes what the base does."""
    if not hasattr(model, "hidden_states"):
        raise TypeError("LoRA needs a model built by bigthoughts.models (hidden_states)")
    provider = qwix.LoraProvider(module_path=lora.targets, rank=lora.rank, alpha=lora.alpha)
    x = jnp.ones((1, 4), jnp.int32)
    return qwix.apply_lora_to_model(
        model, provider, x, jnp.arange(4)[None], None,
        jnp.tril(jnp.ones((1, 4, 4), dtype=bool)),
        methods=("hidden_states",), rngs=nnx.Rngs(seed),
    )


class AdapterError(ValueError):
    """An adapter file is missing, corrupt, or made for another model."""


def save_adapter(path: str | Path, lora_state, lora: LoraSection, *, dtype: str = "bfloat16",
                 provenance: dict | None = None) -> Path:
    """Writes the LoRA matrices of ``lora_state`` (an ``nnx.State`` of LoRAParams)."""
    import ml_dtypes
    if dtype not in STORE_DTYPES:
        raise ValueError(f"dtype must be one of {STORE_DTYPES}, got {dtype!r}")
    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    tensors = {path_name(p): np.asarray(v.get_value() if hasattr(v, "get_value") else v
                                        ).astype(np_dtype)
               for p, v in nnx.to_flat_state(lora_state)}
    meta = {"format": FORMAT, "rank": str(lora.rank), "alpha": repr(float(lora.alpha)),
            "targets": lora.targets, "dtype": dtype,
            "provenance": json.dumps(provenance or {}, sort_keys=True)}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_safetensors(out, tensors, metadata=meta)


def read_adapter(path: str | Path) -> tuple[dict, LoraSection, dict]:
    """(``{path tuple: float32 array}``, its LoraSection, provenance) of an adapter file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"adapter {path} does not exist")
    try:
        with safe_open(str(path), framework="np") as fh:
            meta = fh.metadata() or {}
            arrays = {parse_path_name(k): np.asarray(fh.get_tensor(k), dtype=np.float32)
                      for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterError(f"adapter {path} is not a readable safetensors file ({err})") from err
    if meta.get("format") != FORMAT:
        raise AdapterError(f"{path} is not a bigthoughts LoRA adapter (format "
                           f"{meta.get('format')!r}, expected {FORMAT!r})")
    lora = LoraSection(rank=int(meta["rank"]), alpha=float(meta["alpha"]),
                       targets=meta["targets"])
    return arrays, lora, json.loads(meta.get("provenance", "{}"))


def fill_lora(model, arrays: dict, source: str | Path = "adapter") -> None:
    """Sets the LoRA matrices of a qwix-adapted ``model`` from ``arrays`` (in place)."""
    state = nnx.state(model, nnx.LoRAParam)
    flat = dict(nnx.to_flat_state(state))
    if set(flat) != set(arrays):
        missing, extra = set(flat) - set(arrays), set(arrays) - set(flat)
        raise AdapterError(f"adapter {source} does not fit this model ({len(missing)} LoRA "
                           f"matrices missing, {len(extra)} unknown)")
    filled = []
    for key, var in flat.items():
        need = tuple(var.get_value().shape)
        if need != arrays[key].shape:
            raise AdapterError(f"adapter {source}: {path_name(key)} has shape "
                               f"{arrays[key].shape}, the model needs {need}")
        filled.append((key, var.replace(jnp.asarray(arrays[key], dtype=var.get_value().dtype))))
    nnx.update(model, nnx.from_flat_state(filled))


def with_adapter(loaded: LoadedModel, path: str | Path) -> LoadedModel:
    """``loaded`` with the adapter's ΔW folded into its weights (a new plain model).

    Folding goes through the LoRA-wrapped model (qwix traces it: ~9 s for the 270M on
    2 cores); for a base named by content (its source has a SHA-256) the folded weights
    that changed are cached by (base, adapter, dtype), so the next load reads them."""
    base = {p: v.get_value() for p, v in nnx.to_flat_state(nnx.state(loaded.model, nnx.Param))}
    dtype = next(iter(base.values())).dtype
    label = adapter_label(path)
    cached = _folded_cache(loaded.source, label, str(dtype))
    folded = _read_folded(cached)
    if folded is not None:
        params = {**base, **folded}
    else:
        arrays, lora, _ = read_adapter(path)
        model = apply_lora(loaded.model, lora, seed=0)
        fill_lora(model, arrays, path)
        params = merge_lora(model, alpha=lora.alpha, rank=lora.rank)
        if cached is not None:
            changed = {path_name(p): np.asarray(v) for p, v in params.items()
                       if p in base and not _same_array(v, base[p])}
            cached.parent.mkdir(parents=True, exist_ok=True)
            write_safetensors(cached, changed)
    merged = build_model(loaded.spec.family, loaded.model.config, params, dtype=dtype)
    return LoadedModel(model=merged, tokenizer=loaded.tokenizer, spec=loaded.spec,
                       source=f"{loaded.source} + {label}")


def _read_folded(cached: Path | None) -> dict | None:
    """The cached folded weights; None when absent or damaged (then folded again)."""
    if cached is None or not cached.exists():
        return None
    from bigthoughts.models.spec import ModelLoadError
    from bigthoughts.models.tensorfile import read_safetensors

    try:
        return {parse_path_name(k): v for k, v in read_safetensors(cached).items()}
    except ModelLoadError:
        cached.unlink(missing_ok=True)
        return None


def _folded_cache(source: str, label: str, dtype: str) -> Path | None:
    """The cache file of the weights an adapter changes in a base named by content
    (``source`` holds its SHA-256); None for a base known only by its path."""
    import hashlib

    from bigthoughts.models.spec import cache_dir

    if "sha256=" not in source:
        return None
    key = hashlib.sha256(f"{source}|{label}|{dtype}".encode()).hexdigest()[:16]
    return cache_dir() / f"folded-{key}.safetensors"


def _same_array(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))


def adapter_label(path: str | Path) -> str:
    """``NAME#sha256=PREFIX``: names an adapter by content, so a run directory made with
    one adapter file refuses to resume with another saved under the same name."""
    from bigthoughts.files import file_sha256

    return f"{Path(path).name}#sha256={file_sha256(Path(path).expanduser())[:16]}"


def adapter_gguf(path: str | Path, base_gguf: str | Path) -> Path:
    """The adapter as a llama.cpp GGUF LoRA for ``base_gguf``, converted once into the
    cache (keyed by the adapter's SHA-256), so ``--adapter`` works on both engines."""
    from bigthoughts.files import file_sha256
    from bigthoughts.models.gguf import open_gguf
    from bigthoughts.models.gguf_export import write_lora_adapter
    from bigthoughts.models.spec import cache_dir

    path = Path(path).expanduser()
    if not path.is_file():
        raise AdapterError(f"adapter {path} does not exist")
    out = cache_dir() / f"lora-{file_sha256(path)[:16]}.gguf"
    if not out.exists():  # read (and validate) the adapter only to convert it
        arrays, lora, _ = read_adapter(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_lora_adapter(out, arrays, alpha=lora.alpha, base=open_gguf(base_gguf))
    return out
