"""Kaggle Flax / Orbax Gemma 2 / Gemma 3 releases -> Tunix Gemma models.

Sizes come from the shapes; attention settings (window, RoPE, soft-caps) from
``spec.tunix_config``, else the Tunix preset of the same size, else the smallest one.
Names are mapped by Tunix's ``gemma3.params.map_from_upstream_checkpoint``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from bigthoughts.models.build import ParameterMismatch, PathKey, build_model
from bigthoughts.models.checkpoint_common import (
    IDENTITY,
    Loaded,
    check_spec,
    default_spec,
    gemma2_attention,
    load_tokenizer,
    model_config_cls,
)
from bigthoughts.models.spec import ModelLoadError, ModelSpec

ORBAX_MARKERS = ("_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt", "_sharding", "checkpoint")
_log = logging.getLogger(__name__)
_PRESETS = {"gemma3": ("gemma3_270m", "gemma3_1b_pt", "gemma3_4b_pt", "gemma3_12b_pt",
                       "gemma3_27b_pt"),
            "gemma2": ("gemma2_2b", "gemma2_9b")}


def orbax_root(path: Path) -> Path | None:
    """``path`` if it is an Orbax checkpoint, else its single checkpoint sub-directory."""
    if any((path / m).exists() for m in ORBAX_MARKERS):
        return path
    found = [d for d in sorted(path.iterdir()) if d.is_dir()
             and any((d / m).exists() for m in ORBAX_MARKERS)]
    if len(found) > 1:
        raise ModelLoadError(f"{path} holds several Orbax checkpoints "
                             f"({', '.join(d.name for d in found)}): pass one of them")
    return found[0] if found else None



def restore_orbax(ckpt: Path) -> dict[str, dict[str, np.ndarray]]:
    """Restores an Orbax PyTree into host NumPy arrays (ignoring any saved sharding),
    keyed ``{"transformer/layer_0/attn/q_einsum": {"w": array}}`` whether the tree was
    saved with slash-joined keys (Kaggle) or nested dicts."""
    import jax
    import orbax.checkpoint as ocp
    from flax import traverse_util

    ckptr = ocp.PyTreeCheckpointer()
    try:
        meta = ckptr.metadata(ckpt.resolve())
        tree = getattr(getattr(meta, "item_metadata", meta), "tree", None) or meta
        args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        raw = ckptr.restore(ckpt.resolve(), restore_args=args)
    except Exception as exc:  # Orbax raises many types for unreadable directories
        raise ModelLoadError(f"cannot restore Orbax checkpoint {ckpt}: {exc}") from exc
    flat = traverse_util.flatten_dict(raw.get("params", raw))
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, value in flat.items():
        module = "/".join(str(k) for k in key[:-1])
        out.setdefault(module, {})[str(key[-1])] = np.asarray(value)
    return out


def tunix_config_from_kaggle(
    raw: dict[str, dict[str, np.ndarray]], spec: ModelSpec | None, *, dtype=jnp.float32
) -> tuple[str, Any]:
    """``(family, ModelConfig)``: sizes from shapes, attention settings from a preset."""
    def w(module: str, name: str = "w") -> np.ndarray:
        try:
            return raw[f"transformer/{module}"][name]
        except KeyError:
            raise ParameterMismatch(
                f"Kaggle checkpoint lacks transformer/{module}/{name}") from None

    layers = {int(m.group(1)) for k in raw if (m := re.match(r"transformer/layer_(\d+)/", k))}
    if not layers:
        raise ParameterMismatch("Kaggle checkpoint has no transformer/layer_* parameters")
    if "transformer/layer_0/attn/_query_norm" in raw:
        family = "gemma3"
    elif "transformer/layer_0/post_attention_norm" in raw:
        family = "gemma2"
    else:
        raise ModelLoadError("Kaggle checkpoint is neither Gemma 2 nor Gemma 3 (no "
                             "post-attention norm): Gemma 1 checkpoints are not supported")
    num_embed, embed_dim = w("embedder", "input_embedding").shape
    if "transformer/layer_0/attn/qkv_einsum" in raw:
        _, heads, _, head_dim = w("layer_0/attn/qkv_einsum").shape
        kv_heads = heads
    else:
        heads, _, head_dim = w("layer_0/attn/q_einsum").shape
        kv_heads = w("layer_0/attn/kv_einsum").shape[1]
    sizes = dict(num_layers=len(layers), num_embed=num_embed, embed_dim=embed_dim,
                 hidden_dim=w("layer_0/mlp/linear").shape[0], num_heads=heads,
                 head_dim=head_dim, num_kv_heads=kv_heads)
    cls = model_config_cls(family)
    if spec is not None and spec.tunix_config:
        base = getattr(cls, spec.tunix_config)()
    else:
        presets = [getattr(cls, name)() for name in _PRESETS[family]]
        same = [p for p in presets if all(getattr(p, k) == sizes[k] for k in IDENTITY)]
        base = same[0] if same else presets[0]
        if not same:
            _log.warning("no Tunix %s preset has these sizes; using the attention settings "
                         "(sliding window, RoPE, soft-caps) of %s", family, _PRESETS[family][0])
    config = dataclasses.replace(base, **sizes)
    if family == "gemma2":
        config = dataclasses.replace(config, attention_types=gemma2_attention(len(layers)))
    else:
        config = dataclasses.replace(config, param_dtype=dtype)
    check_spec(family, config, spec)
    return family, config


def params_from_kaggle(raw: dict[str, dict[str, np.ndarray]], family: str,
                       config: Any) -> dict[PathKey, Any]:
    """Flat Tunix parameters via Tunix's ``map_from_upstream_checkpoint``.

    Gemma 2 releases store ``mlp/gating_einsum`` as (2, D, F) while the Tunix mapping
    expects Gemma 3's (2, F, D); we transpose those first (told apart by D)."""
    from flax import traverse_util
    from tunix.models.gemma3.params import map_from_upstream_checkpoint

    fixed = {}
    for module, leaves in raw.items():
        gating = leaves.get("w") if module.endswith("mlp/gating_einsum") else None
        if gating is not None and gating.shape[1] == config.embed_dim != gating.shape[2]:
            leaves = {"w": gating.transpose(0, 2, 1)}
        fixed[module] = leaves
    nested = map_from_upstream_checkpoint(fixed, model_type=family, text_only=True)
    return dict(traverse_util.flatten_dict(nested))


def load_kaggle_dir(path: Path, spec: ModelSpec | None, *, dtype=jnp.float32) -> Loaded:
    """A Kaggle Flax/Orbax Gemma 2 / Gemma 3 release -> (model, tokenizer, spec)."""
    ckpt = orbax_root(path)
    if ckpt is None:
        raise ModelLoadError(f"{path} holds no Orbax checkpoint")
    tokenizer = load_tokenizer([path / "tokenizer.model", ckpt.parent / "tokenizer.model"])
    raw = restore_orbax(ckpt)
    family, config = tunix_config_from_kaggle(raw, spec, dtype=dtype)
    model = build_model(family, config, params_from_kaggle(raw, family, config), dtype=dtype)
    return model, tokenizer, spec or default_spec(ckpt.resolve().name, family)

