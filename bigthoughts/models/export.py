"""Merge LoRA into the base weights and save a checkpoint others can load.

``export_checkpoint`` writes a directory that ``bigthoughts eval --checkpoint DIR`` and
``bigthoughts ask --checkpoint DIR`` load:

    DIR/params.safetensors   # merged float32 weights, Tunix parameter names
    DIR/tokenizer.model      # SentencePiece model
    DIR/bigthoughts.json     # family, Tunix ModelConfig fields, spec, provenance

and, with ``hf=True``, ``DIR/hf/`` in Hugging Face's Gemma 3 text layout
(config.json + model.safetensors + tokenizer.model) so the model can be taken
elsewhere. The HF export is the inverse of ``models/hf_checkpoint.py``'s loader and
is tested as a round trip.

LoRA merge: qwix computes ``y = x·W + einsum(x, A, B)·(alpha/rank)``; for each adapted
weight the merged weight is ``W + einsum(A, B)·(alpha/rank)`` laid out as W.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from flax import nnx

from bigthoughts.files import atomic_write_bytes, atomic_write_json
from bigthoughts.models.build import build_model, parse_path_name, path_name, qkv_matrices
from bigthoughts.models.spec import (
    LoadedModel,
    ModelLoadError,
    ModelSpec,
    portable_source,
    resolve_dtype,
)
from bigthoughts.models.tensorfile import read_safetensors, write_safetensors
from bigthoughts.models.tokenizer import Tokenizer

__all__ = ["export_checkpoint", "export_hf_gemma3", "load_exported", "merge_lora"]

FORMAT_VERSION = 1


def _module_at(model, path):
    node = model
    for part in path:
        node = node[part] if isinstance(part, int) else getattr(node, part)
    return node


def merge_lora(model, *, alpha: float, rank: int) -> dict:
    """Flat ``{path: array}`` of ``model``'s base parameters with LoRA deltas folded in."""
    params = {p: np.asarray(v.get_value())
              for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
              if not isinstance(v, nnx.LoRAParam)}
    lora = dict(nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)))
    scale = alpha / rank
    for path, var in lora.items():
        name = path[-1]
        if not name.endswith("_lora_a"):
            continue
        base = name[: -len("_lora_a")]
        a = np.asarray(var.get_value())
        b = np.asarray(lora[(*path[:-1], base + "_lora_b")].get_value())
        module = _module_at(model, path[:-1])
        weight_path = (*path[:-1], base)
        weight = params[weight_path]
        einsum_str = getattr(module, base + "_lora_einsum_str", None)
        if einsum_str is None:  # nnx.Linear kernel (in, out): A (in, r), B (r, out)
            delta = a @ b
        else:
            _, a_spec, b_spec = einsum_str.split("->")[0].split(",")
            rhs = module.einsum_str.split("->")[0].split(",")[1]
            delta = np.einsum(f"{a_spec},{b_spec}->{rhs}", a, b)
        params[weight_path] = (weight + scale * delta.reshape(weight.shape)).astype(np.float32)
    return params


def export_checkpoint(out_dir: str | Path, params: dict, *, family: str, config, spec: ModelSpec,
                      tokenizer: Tokenizer, provenance: dict | None = None) -> Path:
    """Writes ``params`` (flat, Tunix names) as an export :func:`load_exported` reads.

    Every file is written atomically; ``bigthoughts.json`` last, so a directory with
    it is complete.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors(out / "params.safetensors",
                      {path_name(k): v for k, v in params.items()}, dtype=np.float32)
    atomic_write_bytes(out / "tokenizer.model", tokenizer.model_proto)
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
              if isinstance(getattr(config, f.name), int | float | str | bool | type(None))}
    meta = {"format_version": FORMAT_VERSION, "family": family, "model_config": fields,
            "spec": dataclasses.asdict(spec), "provenance": provenance or {}}
    atomic_write_json(out / "bigthoughts.json", meta, indent=1)
    return out


def _config_from_meta(meta: dict, dtype):
    family, fields = meta["family"], dict(meta["model_config"])
    if family == "gemma3":
        from tunix.models.gemma3 import model as g3

        return family, g3.ModelConfig(**fields, param_dtype=dtype)
    from tunix.models.gemma import model as g2

    layers = fields["num_layers"]
    kinds = (g2.AttentionType.LOCAL_SLIDING, g2.AttentionType.GLOBAL)
    return family, g2.ModelConfig(**fields, attention_types=tuple(kinds[i % 2]
                                                                   for i in range(layers)))


def load_exported(path: str | Path, *, dtype="float32") -> LoadedModel:
    """Loads a directory written by :func:`export_checkpoint`."""

    root = Path(path)
    meta_file = root / "bigthoughts.json"
    if not root.exists():
        raise ModelLoadError(f"checkpoint path does not exist: {root}")
    if not meta_file.is_file():
        raise ModelLoadError(f"{root} is not a bigthoughts export (no bigthoughts.json); "
                             "export one with `bigthoughts train` or pass --model")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{meta_file} is unreadable ({err})") from err
    dt = resolve_dtype(dtype)
    family, config = _config_from_meta(meta, dt)
    params = {parse_path_name(k): v
              for k, v in read_safetensors(root / "params.safetensors").items()}
    model = build_model(family, config, params, dtype=dt)
    spec = ModelSpec(**meta["spec"])
    return LoadedModel(model=model, tokenizer=Tokenizer.from_file(root / "tokenizer.model"),
                       spec=spec, source=portable_source(root))


def export_hf_gemma3(out_dir: str | Path, params: dict, config, tokenizer: Tokenizer) -> Path:
    """Writes a Hugging Face ``Gemma3ForCausalLM`` (text) directory from Tunix params."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n, k, h, d = config.num_heads, config.num_kv_heads, config.head_dim, config.embed_dim
    hf: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": params[("embedder", "input_embedding")],
        "model.norm.weight": params[("final_norm", "scale")],
    }
    for i in range(config.num_layers):
        p = lambda *key: params[("layers", i, *key)]  # noqa: B023, E731
        pre = f"model.layers.{i}."
        (hf[pre + "self_attn.q_proj.weight"], hf[pre + "self_attn.k_proj.weight"],
         hf[pre + "self_attn.v_proj.weight"]) = qkv_matrices(params, i)
        hf[pre + "self_attn.o_proj.weight"] = p("attn", "attn_vec_einsum", "w").reshape(n * h, d).T
        hf[pre + "self_attn.q_norm.weight"] = p("attn", "_query_norm", "scale")
        hf[pre + "self_attn.k_norm.weight"] = p("attn", "_key_norm", "scale")
        hf[pre + "input_layernorm.weight"] = p("pre_attention_norm", "scale")
        hf[pre + "post_attention_layernorm.weight"] = p("post_attention_norm", "scale")
        hf[pre + "pre_feedforward_layernorm.weight"] = p("pre_ffw_norm", "scale")
        hf[pre + "post_feedforward_layernorm.weight"] = p("post_ffw_norm", "scale")
        hf[pre + "mlp.gate_proj.weight"] = p("mlp", "gate_proj", "kernel").T
        hf[pre + "mlp.up_proj.weight"] = p("mlp", "up_proj", "kernel").T
        hf[pre + "mlp.down_proj.weight"] = p("mlp", "down_proj", "kernel").T
    # views of ``params`` (transposes, reshapes): laid out one at a time as they are written
    write_safetensors(out / "model.safetensors", hf, dtype=np.float32)
    hf_config = {
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
        "vocab_size": config.num_embed, "hidden_size": d, "intermediate_size": config.hidden_dim,
        "num_hidden_layers": config.num_layers, "num_attention_heads": n,
        "num_key_value_heads": k, "head_dim": h, "sliding_window": config.sliding_window_size,
        "rope_theta": float(config.global_base_frequency),
        "rope_local_base_freq": float(config.local_base_frequency),
        "query_pre_attn_scalar": h, "rms_norm_eps": 1e-6, "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 32768, "tie_word_embeddings": True,
        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0, "torch_dtype": "float32",
    }
    atomic_write_json(out / "config.json", hf_config, indent=1)
    atomic_write_bytes(out / "tokenizer.model", tokenizer.model_proto)
    return out
