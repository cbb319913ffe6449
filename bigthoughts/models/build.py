"""Instantiate Tunix Gemma models from flat parameter dictionaries.

The model graph is created abstractly with ``nnx.eval_shape`` (no random
initialisation of 270M+ parameters), then every leaf is filled from a
``{path: array}`` mapping whose keys and shapes are checked against the graph, so
a loader bug shows up as a clear error naming the offending parameter.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bigthoughts.models import forward

PathKey = tuple[str | int, ...]
FAMILIES = ("gemma3", "gemma2")


class ParameterMismatch(ValueError):
    """Loaded parameters do not match the model architecture."""


def model_class(family: str):
    """Tunix's model class for ``family``, extended with a ``hidden_states`` method
    (the forward pass without the vocabulary projection; see models/forward.py)."""
    if family == "gemma3":
        from tunix.models.gemma3.model import Gemma3 as base
    elif family == "gemma2":
        from tunix.models.gemma.model import Gemma as base
    else:
        raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")
    return _WITH_HIDDEN.setdefault(base, type(base.__name__, (base,), {
        "hidden_states": forward.hidden_states_impl,
        "__module__": __name__,
    }))


_WITH_HIDDEN: dict = {}


def _abstract(family: str, config):
    cls = model_class(family)
    return nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0)))


_SPLIT: dict[tuple[str, str], tuple] = {}


def _abstract_split(family: str, config) -> tuple:
    """``nnx.split`` of the abstract model, traced once per (family, config) and process
    (~1.5 s for the 270M; a load with an adapter builds the model twice). Immutable:
    ``build_model`` only reads it."""
    key = (family, repr(config))
    if key not in _SPLIT:
        _SPLIT[key] = nnx.split(_abstract(family, config))
    return _SPLIT[key]


def build_model(
    family: str, config, params: Mapping[PathKey, np.ndarray], *, dtype=jnp.float32
) -> nnx.Module:
    """Returns a ``Gemma3``/``Gemma`` module whose weights are ``params`` cast to dtype."""
    graphdef, state = _abstract_split(family, config)
    flat = dict(nnx.to_flat_state(state))
    missing = sorted(".".join(map(str, k)) for k in flat.keys() - params.keys())
    extra = sorted(".".join(map(str, k)) for k in params.keys() - flat.keys())
    if missing or extra:
        raise ParameterMismatch(
            f"checkpoint does not match the {family} architecture: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}"
        )
    filled = []
    for path, var in flat.items():
        value = np.asarray(params[path])
        if tuple(value.shape) != tuple(var.get_value().shape):
            raise ParameterMismatch(
                f"{'.'.join(map(str, path))}: checkpoint shape {value.shape}, "
                f"model expects {var.get_value().shape}"
            )
        filled.append((path, var.replace(jnp.asarray(value, dtype=dtype))))
    return nnx.merge(graphdef, nnx.from_flat_state(filled))


def random_params(family: str, config, *, seed: int = 0, scale: float = 0.05) -> dict:
    """Random parameters for tests: normal(0, scale) everywhere (norm scales too)."""
    _, state = nnx.split(_abstract(family, config))
    rng = np.random.default_rng(seed)
    return {
        path: (rng.standard_normal(var.get_value().shape) * scale).astype(np.float32)
        for path, var in nnx.to_flat_state(state)
    }


def flat_params(model: nnx.Module) -> dict[PathKey, np.ndarray]:
    """The model's parameters as ``{path: numpy array}`` (host copies)."""
    state = nnx.state(model, nnx.Param)
    return {path: np.asarray(jax.device_get(v.get_value())) for path, v in nnx.to_flat_state(state)}


def path_name(path: PathKey) -> str:
    return ".".join(str(p) for p in path)


def parse_path_name(name: str) -> PathKey:
    return tuple(int(p) if p.isdigit() else p for p in name.split("."))


def qkv_matrices(params: Mapping[PathKey, np.ndarray], layer: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Layer ``layer``'s query, key and value weights as (heads·head_dim, embed) matrices,
    the layout of HF and GGUF checkpoints (Tunix keeps (heads, embed, head_dim)); a fused
    ``qkv_einsum`` is split first."""
    attn = ("layers", layer, "attn")
    if (*attn, "qkv_einsum", "w") in params:
        q, k, v = np.asarray(params[(*attn, "qkv_einsum", "w")])
    else:
        q = np.asarray(params[(*attn, "q_einsum", "w")])
        k, v = np.asarray(params[(*attn, "kv_einsum", "w")])
    return tuple(w.transpose(0, 2, 1).reshape(-1, w.shape[1]) for w in (q, k, v))
