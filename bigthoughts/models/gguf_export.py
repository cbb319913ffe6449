"""What we train, written as GGUF files llama.cpp, Ollama and LM Studio load.

Two outputs:

* **a GGUF LoRA adapter** (``write_lora_adapter``) that runs on the *unchanged*
  embedded Q4_K_M base (we train on exactly its dequantised weights). llama.cpp's
  adapter loader wants ``general.type=adapter``, ``adapter.type=lora``,
  ``adapter.lora.alpha`` and, for each adapted base tensor ``W`` (numpy (out, in)),
  ``<W>.lora_a`` of numpy shape (r, in) and ``<W>.lora_b`` of shape (out, r); it adds
  ``(alpha / r) · B·A·x`` to ``W·x`` -- the same ``alpha / rank`` scale as qwix.
* **a merged model** (``write_model_gguf``): the reverse of
  ``bigthoughts.models.gguf.params_from_gguf`` (RMSNorm scales get their +1 back,
  q/k/v/o go back to (out, in) matrices), matrices in F16, Q8_0 or F32, with the
  base's tokenizer and metadata copied.

qwix LoRA layouts (A, B) and their GGUF (A, B), r = rank::

    q_einsum        A (D, r)     B (r, N, H)      -> attn_q:      A.T, B.reshape(r, N*H).T
    kv_einsum       A (D, r)     B (r, 2, K, H)   -> attn_k/v:    A.T, B[:, i].reshape(r, K*H).T
    qkv_einsum      A (D, r)     B (r, 3, N, H)   -> attn_q/k/v:  likewise
    attn_vec_einsum A (N, H, r)  B (r, D)         -> attn_output: A.reshape(N*H, r).T, B.T
    gate/up/down    A (in, r)    B (r, out)       -> ffn_*:       A.T, B.T

Example::

    write_lora_adapter("adapter.gguf", lora_model, alpha=32.0, base=open_gguf(base_path))
    write_model_gguf("merged-q8_0.gguf", merged_params, config, base=open_gguf(base_path),
                     ftype="q8_0")
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bigthoughts.files import atomic_output
from bigthoughts.models.build import qkv_matrices
from bigthoughts.models.gguf import PathKey, architecture, field

FTYPES = ("f32", "f16", "q8_0")
_MLP = {"gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
# metadata we rewrite from the model's config (the rest is copied from the base)
_HPARAMS = ("block_count", "embedding_length", "feed_forward_length", "attention.head_count",
            "attention.head_count_kv", "attention.key_length", "attention.value_length",
            "attention.sliding_window")


class GGUFExportError(ValueError):
    """Parameters that cannot be written as the requested GGUF."""


def _split_heads(b: np.ndarray, names: tuple[str, ...]) -> list[tuple[str, np.ndarray]]:
    """B (r, S, n, H) stacked q/k/v -> [(name, (n*H, r))]."""
    r = b.shape[0]
    return [(n, b[:, i].reshape(r, -1).T) for i, n in enumerate(names)]


def _gguf_lora(module: tuple, a: np.ndarray, b: np.ndarray) -> list[tuple[str, np.ndarray,
                                                                           np.ndarray]]:
    """(gguf tensor stem, A (r, in), B (out, r)) for one qwix LoRA pair."""
    kind = module[-1]
    if kind in _MLP:
        return [(_MLP[kind], a.T, b.T)]
    if kind == "attn_vec_einsum":
        return [("attn_output", a.reshape(-1, a.shape[-1]).T, b.T)]
    if kind == "q_einsum":
        return [("attn_q", a.T, b.reshape(b.shape[0], -1).T)]
    if kind == "kv_einsum":
        return [(n, a.T, bb) for n, bb in _split_heads(b, ("attn_k", "attn_v"))]
    if kind == "qkv_einsum":
        return [(n, a.T, bb) for n, bb in _split_heads(b, ("attn_q", "attn_k", "attn_v"))]
    raise GGUFExportError(f"no GGUF tensor for a LoRA on {'.'.join(map(str, module))}")


def lora_tensors(lora: dict[PathKey, np.ndarray]) -> dict[str, np.ndarray]:
    """``{tunix path of a LoRA param: array}`` -> ``{gguf name: float32 array}``.

    ``lora`` keys end in ``<weight>_lora_a`` / ``<weight>_lora_b`` as qwix names
    them, e.g. ``("layers", 3, "attn", "q_einsum", "w_lora_a")``.
    """
    out: dict[str, np.ndarray] = {}
    for path, a in lora.items():
        name = str(path[-1])
        if not name.endswith("_lora_a"):
            continue
        b_path = (*path[:-1], name[: -len("_lora_a")] + "_lora_b")
        if b_path not in lora or path[0] != "layers":
            raise GGUFExportError(f"LoRA param {'.'.join(map(str, path))} has no pair / layer")
        layer = int(path[1])
        for stem, ga, gb in _gguf_lora(tuple(path[:-1]), np.asarray(a), np.asarray(lora[b_path])):
            base = f"blk.{layer}.{stem}.weight"
            out[base + ".lora_a"] = np.ascontiguousarray(ga, dtype=np.float32)
            out[base + ".lora_b"] = np.ascontiguousarray(gb, dtype=np.float32)
    if not out:
        raise GGUFExportError("the model has no LoRA parameters to export")
    return out


def lora_params(model) -> dict[PathKey, np.ndarray]:
    """The qwix LoRA parameters of ``model`` as ``{path: numpy array}``."""
    from flax import nnx

    state = nnx.state(model, nnx.LoRAParam)
    return {tuple(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}


def write_lora_adapter(path: str | Path, lora: dict[PathKey, np.ndarray] | object, *,
                       alpha: float, base) -> Path:
    """Writes a llama.cpp GGUF LoRA adapter for the base GGUF ``base`` (a reader).

    ``lora``: a model carrying qwix LoRA params, or ``lora_params(model)``. ``alpha``
    is qwix's alpha (the scale is alpha / rank, as in llama.cpp).
    """
    import gguf

    tensors = lora_tensors(lora if isinstance(lora, dict) else lora_params(lora))
    arch = architecture(base)
    path = Path(path)
    with _gguf_writer(path, arch) as writer:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        name = field(base, "general.name")
        if name is not None:
            writer.add_name(f"{name} LoRA")
        for key, value in tensors.items():
            writer.add_tensor(key, value)
    return path


@contextlib.contextmanager
def _gguf_writer(path: Path, arch: str) -> Iterator:
    """A GGUF writer whose file appears at ``path`` only once it is complete
    (:func:`bigthoughts.files.atomic_output`): a kill leaves the old file or none."""
    import gguf

    with atomic_output(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        yield writer
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


def _copy_metadata(writer, base, skip: set[str]) -> None:
    """Copies the base's key/values (tokenizer included) except ``skip``."""
    import gguf

    for key, f in base.fields.items():
        if key.startswith("GGUF.") or key in skip:
            continue
        main = f.types[0]
        sub = f.types[-1] if main == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, f.contents(), main, sub_type=sub)


def _hparams(config) -> dict[str, int]:
    return {
        "block_count": config.num_layers, "embedding_length": config.embed_dim,
        "feed_forward_length": config.hidden_dim, "attention.head_count": config.num_heads,
        "attention.head_count_kv": config.num_kv_heads, "attention.key_length": config.head_dim,
        "attention.value_length": config.head_dim,
        "attention.sliding_window": config.sliding_window_size,
    }


def gguf_matrices(params: dict[PathKey, np.ndarray], config) -> dict[str, np.ndarray]:
    """Tunix params -> ``{gguf tensor name: float32 numpy array}`` (the loader reversed)."""
    n, h = config.num_heads, config.head_dim
    out = {"token_embd.weight": params[("embedder", "input_embedding")],
           "output_norm.weight": params[("final_norm", "scale")] + 1.0}
    for i in range(config.num_layers):
        p = lambda *key: np.asarray(params[("layers", i, *key)])  # noqa: B023, E731
        pre = f"blk.{i}."
        # Tunix (n, D, H) -> GGUF (n*H, D)
        (out[pre + "attn_q.weight"], out[pre + "attn_k.weight"],
         out[pre + "attn_v.weight"]) = qkv_matrices(params, i)
        out[pre + "attn_output.weight"] = p("attn", "attn_vec_einsum", "w").reshape(n * h, -1).T
        out[pre + "attn_q_norm.weight"] = p("attn", "_query_norm", "scale") + 1.0
        out[pre + "attn_k_norm.weight"] = p("attn", "_key_norm", "scale") + 1.0
        out[pre + "attn_norm.weight"] = p("pre_attention_norm", "scale") + 1.0
        out[pre + "post_attention_norm.weight"] = p("post_attention_norm", "scale") + 1.0
        out[pre + "ffn_norm.weight"] = p("pre_ffw_norm", "scale") + 1.0
        out[pre + "post_ffw_norm.weight"] = p("post_ffw_norm", "scale") + 1.0
        for kind, stem in _MLP.items():
            out[pre + stem + ".weight"] = p("mlp", kind, "kernel").T
    return {name: np.ascontiguousarray(v, dtype=np.float32) for name, v in out.items()}


def _encode(name: str, value: np.ndarray, ftype: str):
    """(data, raw_dtype) for one tensor: 1-D tensors (norms) stay F32."""
    import gguf

    if value.ndim == 1 or ftype == "f32":
        return value, None
    if ftype == "f16":
        return value.astype(np.float16), None
    if value.shape[-1] % 32:
        raise GGUFExportError(f"{name}: width {value.shape[-1]} is not a multiple of 32 (Q8_0)")
    q8 = gguf.GGMLQuantizationType.Q8_0
    return gguf.quants.quantize(value, q8), q8


def write_model_gguf(path: str | Path, params: dict[PathKey, np.ndarray], config, *, base,
                     ftype: str = "f16") -> Path:
    """Writes a full Gemma 3 GGUF from Tunix ``params`` with ``base``'s tokenizer.

    ``ftype``: "f16", "q8_0" or "f32" for the matrices (norm vectors stay F32).
    """
    import gguf

    if ftype not in FTYPES:
        raise GGUFExportError(f"unknown GGUF type {ftype!r}; choose one of {', '.join(FTYPES)}")
    arch = architecture(base)
    if arch != "gemma3":
        raise GGUFExportError(f"GGUF model export supports gemma3, not {arch}")
    vocab = base.fields.get("tokenizer.ggml.tokens")
    if vocab is not None and len(vocab.data) != config.num_embed:
        raise GGUFExportError(f"the base GGUF's vocabulary has {len(vocab.data)} tokens, the "
                              f"model {config.num_embed}: not the same tokenizer")
    path = Path(path)
    with _gguf_writer(path, arch) as writer:
        hparams = _hparams(config)
        skip = {"general.architecture", "general.file_type", "general.quantization_version",
                *(f"{arch}.{k}" for k in _HPARAMS)}
        _copy_metadata(writer, base, skip)
        for key, value in hparams.items():
            writer.add_uint32(f"{arch}.{key}", int(value))
        file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[ftype]
        writer.add_file_type(file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for name, value in gguf_matrices(params, config).items():
            data, raw = _encode(name, value, ftype)
            writer.add_tensor(name, data, raw_dtype=raw)
    return path
