"""Checkpoint directories -> Tunix Gemma models: Hugging Face safetensors, Kaggle Orbax.

``detect_format`` tells the two layouts apart by their contents:

* ``hf_safetensors``: ``config.json`` + ``*.safetensors`` (one file or shards listed in
  ``model.safetensors.index.json``) + ``tokenizer.model``; model_type "gemma2",
  "gemma3_text", or "gemma3" (multimodal: only the language model is loaded, from
  ``language_model.model.*`` or ``model.language_model.*``).
  Read by ``hf_checkpoint.py``.
* ``kaggle_orbax``: an Orbax checkpoint of ``{"transformer/layer_0/attn/q_einsum":
  {"w": ...}, ...}``, alone or inside a release folder beside ``tokenizer.model``.
  Read by ``kaggle_checkpoint.py``.

We do not call Tunix's loaders end to end: ``params_safetensors`` assumes one dtype per
file, misses the ``model.language_model.`` prefix of transformers >= 4.52 and reports a
wrong config as a reshape error; ``create_model_from_checkpoint`` restores with the
checkpoint's saved sharding, which fails on another device count ("Topology
mismatch"). We restore into NumPy and ``build_model`` checks every name and shape.

Example: ``model, tokenizer, spec = load_checkpoint_dir(Path("gemma-2-2b-it"), None)``
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import jax.numpy as jnp

from bigthoughts.models.checkpoint_common import Loaded
from bigthoughts.models.hf_checkpoint import load_hf_dir, safetensors_files
from bigthoughts.models.kaggle_checkpoint import load_kaggle_dir, orbax_root
from bigthoughts.models.spec import ModelLoadError, ModelSpec, resolve_dtype

Format = Literal["hf_safetensors", "kaggle_orbax"]


def detect_format(path: Path) -> Format:
    """Which checkpoint layout ``path`` holds; ``ModelLoadError`` when neither."""
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"{path} is not a checkpoint directory")
    if (path / "config.json").is_file():
        if safetensors_files(path):
            return "hf_safetensors"
        raise ModelLoadError(
            f"{path} has config.json but no *.safetensors weights; PyTorch .bin "
            "checkpoints are not supported (re-save with safe_serialization=True)")
    if orbax_root(path) is not None:
        return "kaggle_orbax"
    seen = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "nothing"
    raise ModelLoadError(
        f"{path} is not a checkpoint we can read (it holds: {seen}). Expected a Hugging "
        "Face directory (config.json + *.safetensors + tokenizer.model) or a Kaggle "
        "Flax/Orbax release (an Orbax checkpoint directory with _METADATA/manifest.ocdbt, "
        "and tokenizer.model beside it)")


def load_checkpoint_dir(path: Path, spec: ModelSpec | None, *, dtype=jnp.float32) -> Loaded:
    """Loads a checkpoint directory in either format -> ``(model, Tokenizer, ModelSpec)``.

    ``spec`` None: family, sizes and name come from the directory. Otherwise the
    checkpoint must match ``spec`` (family and sizes; ``ParameterMismatch`` if not)."""
    path, dtype = Path(path), resolve_dtype(dtype)
    if detect_format(path) == "hf_safetensors":
        return load_hf_dir(path, spec, dtype=dtype)
    return load_kaggle_dir(path, spec, dtype=dtype)
