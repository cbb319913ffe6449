"""GGUF (llama.cpp) Gemma 2 / Gemma 3 checkpoints -> Tunix parameter trees.

Every tensor is dequantised to float32 with the ``gguf`` package and mapped into the
parameter layout of Tunix's NNX Gemma models. Conventions of llama.cpp's converter
that we undo here (each checked against Hugging Face transformers' logits, see
``tests/test_models_real.py``):

* every Gemma RMSNorm weight, q/k norms included, is stored as ``1 + w``; Tunix's
  RMSNorm computes ``x * (1 + scale)``, so we subtract 1;
* matrices come out as (out, in): q is ``W.T`` reshaped to (D, N, H) then moved to
  (N, D, H); k and v likewise, stacked into ``kv_einsum`` (2, K, D, H) or, when
  N == K, into ``qkv_einsum`` (3, N, D, H); ``attn_output.T`` is reshaped (N, H, D);
  MLP kernels are plain transposes;
* no q/k permutation (Gemma uses NeoX-style RoPE) and tied embeddings.

Example::

    reader = open_gguf(path)
    family, config = tunix_config_from_gguf(reader)
    params = params_from_gguf(reader, family, config.num_layers)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

PathKey = tuple[str | int, ...]
SUPPORTED_ARCHITECTURES = ("gemma3", "gemma2")


class GGUFError(ValueError):
    """A GGUF file that we cannot read or do not support."""


def open_gguf(path: str | Path):
    """Opens a GGUF file (memory-mapped) with a clear error for bad input."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"GGUF file not found: {path}")
    size = path.stat().st_size
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise GGUFError(f"{path} is not a GGUF file (it does not start with the GGUF magic)")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # the reader raises bare ValueError/struct/index errors
        raise GGUFError(f"{path} is truncated or corrupt ({size} bytes; the GGUF reader "
                        f"failed: {exc}); download or assemble it again") from exc
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise GGUFError(f"{path} is truncated: its tensors need {end} bytes, the file has "
                        f"{size}; download or assemble it again")
    return reader


def field(reader, key: str, default=None):
    """Returns a scalar or string metadata value, or ``default`` when absent."""
    entry = reader.fields.get(key)
    if entry is None:
        return default
    return entry.contents()


def architecture(reader) -> str:
    arch = field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFError(
            f"unsupported GGUF architecture {arch!r}; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return arch


_HEADER_KEYS = ("block_count", "embedding_length", "feed_forward_length",
                "attention.head_count", "attention.key_length", "attention.head_count_kv",
                "attention.sliding_window", "rope.freq_base", "final_logit_softcapping",
                "attn_logit_softcapping", "context_length")


def gguf_header(reader) -> dict:
    """What a model load needs from a GGUF besides its tensors and vocabulary, as plain
    JSON-able values: parsing a 262k-token vocabulary takes seconds, so the loader caches
    this next to the converted parameters and a second load never opens the file."""
    arch = architecture(reader)
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    embed = _tensor(reader, "token_embd.weight")
    return {"architecture": arch, "name": field(reader, "general.name"),
            "num_embed": int(embed.shape[-1] if tokens is None else len(tokens.data)),
            **{f"{arch}.{k}": field(reader, f"{arch}.{k}") for k in _HEADER_KEYS}}


def tunix_config_from_gguf(reader, *, param_dtype=None):
    """Builds the Tunix ``ModelConfig`` described by the GGUF metadata.

    Returns ``(family, config)`` with family "gemma3" or "gemma2".
    """
    return tunix_config_from_header(gguf_header(reader), param_dtype=param_dtype)


def tunix_config_from_header(header: dict, *, param_dtype=None):
    """``tunix_config_from_gguf`` for a :func:`gguf_header` (a reader's or a cached one)."""
    arch = header["architecture"]

    def meta(name, default=None):
        value = header.get(f"{arch}.{name}")
        value = default if value is None else value
        if value is None:
            raise GGUFError(f"GGUF metadata {arch}.{name} is missing")
        return value

    num_embed = int(header["num_embed"])
    common = dict(
        num_layers=int(meta("block_count")),
        num_embed=num_embed,
        embed_dim=int(meta("embedding_length")),
        hidden_dim=int(meta("feed_forward_length")),
        num_heads=int(meta("attention.head_count")),
        head_dim=int(meta("attention.key_length")),
        num_kv_heads=int(meta("attention.head_count_kv")),
        sliding_window_size=int(meta("attention.sliding_window")),
    )
    if arch == "gemma3":
        from tunix.models.gemma3 import model as g3

        config = g3.ModelConfig(
            **common,
            local_base_frequency=10_000,
            global_base_frequency=int(meta("rope.freq_base", 1_000_000.0)),
        )
        if param_dtype is not None:
            config = dataclasses.replace(config, param_dtype=param_dtype)
        return "gemma3", config

    from tunix.models.gemma import model as g2

    num_layers = common["num_layers"]
    config = g2.ModelConfig(
        **common,
        final_logit_softcap=float(meta("final_logit_softcapping", 30.0)),
        attn_logits_soft_cap=float(meta("attn_logit_softcapping", 50.0)),
        use_post_attn_norm=True,
        use_post_ffw_norm=True,
        attention_types=(g2.AttentionType.LOCAL_SLIDING, g2.AttentionType.GLOBAL)
        * (num_layers // 2)
        + ((g2.AttentionType.LOCAL_SLIDING,) if num_layers % 2 else ()),
    )
    return "gemma2", config


def _tensor(reader, name: str):
    for tensor in reader.tensors:
        if tensor.name == name:
            return tensor
    raise GGUFError(f"GGUF tensor {name!r} is missing")


def dequantize(tensor) -> np.ndarray:
    """Dequantises one GGUF tensor to a float32 array in numpy (out, in) order."""
    from gguf import quants

    shape = tuple(int(d) for d in reversed(tensor.shape))
    data = quants.dequantize(tensor.data, tensor.tensor_type)
    return np.asarray(data, dtype=np.float32).reshape(shape)


def _attention(tensors: dict[str, np.ndarray], num_heads: int, num_kv_heads: int, head_dim: int):
    def heads(w: np.ndarray, n: int) -> np.ndarray:  # (n*H, D) -> (n, D, H)
        d = w.shape[1]
        return w.T.reshape(d, n, head_dim).transpose(1, 0, 2)

    q = heads(tensors["attn_q"], num_heads)
    k = heads(tensors["attn_k"], num_kv_heads)
    v = heads(tensors["attn_v"], num_kv_heads)
    out = tensors["attn_output"].T.reshape(num_heads, head_dim, -1)
    if num_heads == num_kv_heads:
        return {("qkv_einsum", "w"): np.stack([q, k, v])}, out
    return {("q_einsum", "w"): q, ("kv_einsum", "w"): np.stack([k, v])}, out


def params_from_gguf(reader, family: str, config) -> dict[PathKey, np.ndarray]:
    """Flat ``{path: float32 array}`` in Tunix's parameter layout for ``family``."""
    by_layer: dict[int, dict[str, np.ndarray]] = {}
    flat: dict[PathKey, np.ndarray] = {}
    for tensor in reader.tensors:
        name = tensor.name
        if name == "token_embd.weight":
            flat[("embedder", "input_embedding")] = dequantize(tensor)
        elif name == "output_norm.weight":
            flat[("final_norm", "scale")] = dequantize(tensor) - 1.0
        elif name.startswith("blk."):
            _, index, rest = name.split(".", 2)
            by_layer.setdefault(int(index), {})[rest.removesuffix(".weight")] = dequantize(tensor)
        elif name == "output.weight":
            raise GGUFError("untied output embeddings are not supported for Gemma")
    post_attn = "post_attention_norm" if family == "gemma3" else "post_attn_norm"
    for i in range(config.num_layers):
        if i not in by_layer:
            raise GGUFError(f"GGUF has no tensors for layer {i}")
        t = by_layer[i]
        try:
            qkv, out = _attention(t, config.num_heads, config.num_kv_heads, config.head_dim)
            layer: dict[PathKey, np.ndarray] = {("attn", *k): v for k, v in qkv.items()}
            layer[("attn", "attn_vec_einsum", "w")] = out
            layer[("pre_attention_norm", "scale")] = t["attn_norm"] - 1.0
            layer[(post_attn, "scale")] = t["post_attention_norm"] - 1.0
            layer[("pre_ffw_norm", "scale")] = t["ffn_norm"] - 1.0
            layer[("post_ffw_norm", "scale")] = t["post_ffw_norm"] - 1.0
            layer[("mlp", "gate_proj", "kernel")] = t["ffn_gate"].T
            layer[("mlp", "up_proj", "kernel")] = t["ffn_up"].T
            layer[("mlp", "down_proj", "kernel")] = t["ffn_down"].T
            if family == "gemma3":
                layer[("attn", "_query_norm", "scale")] = t["attn_q_norm"] - 1.0
                layer[("attn", "_key_norm", "scale")] = t["attn_k_norm"] - 1.0
        except KeyError as exc:
            raise GGUFError(f"GGUF layer {i} lacks tensor {exc.args[0]!r}") from exc
        for key, value in layer.items():
            flat[("layers", i, *key)] = np.ascontiguousarray(value, dtype=np.float32)
    return flat

