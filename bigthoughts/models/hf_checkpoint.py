"""Hugging Face Gemma 2 / Gemma 3 safetensors directories -> Tunix Gemma models.

``config.json`` gives the Tunix ``ModelConfig``; settings Tunix's models cannot express are
refused. HF tensors are (out, in): q -> (N, D, H), k/v -> ``kv_einsum`` (2, K, D, H) or
``qkv_einsum`` (3, N, D, H) when N == K, ``o_proj`` -> (N, H, D), MLP kernels are
transposes, RMSNorm weights map unchanged (both compute ``x * (1 + w)``).
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from bigthoughts.models.build import ParameterMismatch, PathKey, build_model
from bigthoughts.models.checkpoint_common import (
    Loaded,
    check_spec,
    default_spec,
    gemma2_attention,
    load_tokenizer,
)
from bigthoughts.models.spec import ModelLoadError, ModelSpec
from bigthoughts.models.tensorfile import open_safetensors

# transformers' defaults for fields a config.json may omit (Gemma2Config, Gemma3TextConfig).
_HF_COMMON = dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                  num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                  query_pre_attn_scalar=256, sliding_window=4096, rms_norm_eps=1e-6,
                  hidden_activation="gelu_pytorch_tanh")
_HF_DEFAULTS = {
    "gemma2": dict(_HF_COMMON, vocab_size=256000, final_logit_softcapping=30.0,
                   attn_logit_softcapping=50.0, rope_theta=10000.0),
    "gemma3": dict(_HF_COMMON, vocab_size=262208, final_logit_softcapping=None,
                   attn_logit_softcapping=None, rope_theta=1e6, rope_local_base_freq=1e4),
}
_HF_PREFIXES = ("model.language_model.", "language_model.model.", "model.")
_HF_IGNORED = re.compile(r"(model\.)?(vision_tower|multi_modal_projector)\.|lm_head\.weight$|"
                         r".*rotary_emb\.inv_freq$")


def _shard_path(root: Path, name: object, index: Path) -> Path:
    """The shard ``name`` listed in ``index``, refused unless it is a plain file name
    inside ``root`` (no absolute path, no ``..``, no link out of the directory)."""
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(
            name).parts or "\\" in name:
        raise ModelLoadError(f"{index}: shard name {name!r} is not a file name inside {root}")
    shard = root / name
    if not shard.resolve().is_relative_to(root.resolve()):
        raise ModelLoadError(f"{index}: shard {name!r} resolves outside {root}")
    return shard


def safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()), key=str)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelLoadError(f"{index} is unreadable or has no weight_map ({exc})") from exc
        shards = [_shard_path(path, n, index) for n in names]
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise ModelLoadError(f"{index.name} lists shards missing from {path}: {missing}")
        return shards
    return sorted(path.glob("*.safetensors"))


def _rope(text: dict, family: str) -> tuple[float, float, float, float]:
    """(local theta, global theta, local factor, global factor) from either the legacy
    keys (rope_theta, rope_local_base_freq, rope_scaling) or transformers 5's
    ``rope_parameters`` (one dict, or one per layer type)."""
    params = text.get("rope_parameters")
    if params:
        local = params.get("sliding_attention", params)
        glob = params.get("full_attention", params)
    else:
        glob = {"rope_theta": text["rope_theta"], **(text.get("rope_scaling") or {})}
        local = {"rope_theta": text.get("rope_local_base_freq", text["rope_theta"])}
    for kind in (local, glob):
        if kind.get("rope_type", kind.get("type", "default")) not in ("default", "linear"):
            raise ModelLoadError(f"RoPE type {kind.get('rope_type')!r} is not supported by "
                                 "Tunix's Gemma (default or linear only)")
    default = _HF_DEFAULTS[family]
    return (float(local.get("rope_theta", default.get("rope_local_base_freq", 1e4))),
            float(glob.get("rope_theta", default["rope_theta"])),
            float(local.get("factor", 1.0)), float(glob.get("factor", 1.0)))


def tunix_config_from_hf(config: dict, *, dtype=jnp.float32) -> tuple[str, Any]:
    """``(family, Tunix ModelConfig)`` for a Hugging Face ``config.json`` dict."""
    model_type = config.get("model_type")
    if model_type == "gemma3":
        family, text = "gemma3", config.get("text_config") or {}
    elif model_type == "gemma3_text":
        family, text = "gemma3", config
    elif model_type == "gemma2":
        family, text = "gemma2", config
    else:
        raise ModelLoadError(
            f"unsupported model_type {model_type!r} in config.json; supported: gemma2 "
            "(Gemma2ForCausalLM), gemma3_text (Gemma3ForCausalLM), gemma3 (text part)")
    t = {**_HF_DEFAULTS[family], **text}
    if abs(float(t["rms_norm_eps"]) - 1e-6) > 1e-12:
        raise _refuse(family, f"rms_norm_eps={t['rms_norm_eps']} (Tunix uses 1e-6)")
    act = t.get("hidden_activation") or t.get("hidden_act")
    if act != "gelu_pytorch_tanh":
        raise _refuse(family, f"hidden_activation={act!r}")
    if t.get("use_bidirectional_attention"):
        raise _refuse(family, "use_bidirectional_attention=true")
    rope = _rope(t, family)
    sizes = dict(num_layers=t["num_hidden_layers"], num_embed=t["vocab_size"],
                 embed_dim=t["hidden_size"], hidden_dim=t["intermediate_size"],
                 num_heads=t["num_attention_heads"], head_dim=t["head_dim"],
                 num_kv_heads=t["num_key_value_heads"], sliding_window_size=t["sliding_window"])
    if family == "gemma2":
        return family, _gemma2_from_hf(t, sizes, rope)
    return family, _gemma3_from_hf(t, text, sizes, rope, dtype)


def _refuse(family: str, what: str) -> ModelLoadError:
    return ModelLoadError(f"config.json: {what} is not supported by Tunix's {family} model")


def _gemma2_from_hf(t: dict, sizes: dict, rope: tuple[float, ...]) -> Any:
    from tunix.models.gemma.model import ModelConfig

    if t["query_pre_attn_scalar"] != sizes["head_dim"]:
        raise _refuse("gemma2", f"query_pre_attn_scalar={t['query_pre_attn_scalar']} != head_dim")
    if rope != (1e4, 1e4, 1.0, 1.0):
        raise _refuse("gemma2", "RoPE other than base 10000 without scaling")
    return ModelConfig(
        **sizes, final_logit_softcap=t["final_logit_softcapping"],
        attn_logits_soft_cap=t["attn_logit_softcapping"], use_post_attn_norm=True,
        use_post_ffw_norm=True,
        attention_types=gemma2_attention(sizes["num_layers"], t.get("layer_types")))


def _gemma3_from_hf(t: dict, text: dict, sizes: dict, rope: tuple[float, ...], dtype) -> Any:
    from tunix.models.gemma3 import model as g3

    layers, head_dim = sizes["num_layers"], sizes["head_dim"]
    pattern = ["full_attention" if k == g3.AttentionType.GLOBAL else "sliding_attention"
               for k in itertools.islice(itertools.cycle(g3.GEMMA3_ATTENTION_PATTERN), layers)]
    every = text.get("sliding_window_pattern") or text.get("_sliding_window_pattern") or 6
    kinds = t.get("layer_types") or [
        "sliding_attention" if (i + 1) % every else "full_attention" for i in range(layers)]
    if list(kinds) != pattern:
        raise _refuse("gemma3", f"layer_types {kinds} (Tunix uses 5 local then 1 global)")
    if t["final_logit_softcapping"] is not None or t["attn_logit_softcapping"] is not None:
        raise _refuse("gemma3", "logit soft-capping")
    norm = g3.QueryPreAttentionNormalisation
    if t["query_pre_attn_scalar"] == head_dim:
        query_norm = norm.BY_ONE_OVER_SQRT_HEAD_DIM
    elif t["query_pre_attn_scalar"] == t["hidden_size"] // sizes["num_heads"]:
        query_norm = norm.BY_ONE_OVER_SQRT_EMBED_DIM_DIV_NUM_HEADS
    else:
        raise _refuse("gemma3", f"query_pre_attn_scalar={t['query_pre_attn_scalar']}")
    local_theta, global_theta, local_factor, global_factor = rope
    return g3.ModelConfig(
        **sizes, local_base_frequency=local_theta, global_base_frequency=global_theta,
        local_scale_factor=local_factor, global_scale_factor=global_factor,
        query_pre_attn_norm=query_norm, param_dtype=dtype)


def _hf_expected_shapes(family: str, c: Any) -> dict[str, tuple[int, ...]]:
    d, f, n, k, h = c.embed_dim, c.hidden_dim, c.num_heads, c.num_kv_heads, c.head_dim
    out = {"embed_tokens": (c.num_embed, d), "norm": (d,)}
    per_layer = {"self_attn.q_proj": (n * h, d), "self_attn.k_proj": (k * h, d),
                 "self_attn.v_proj": (k * h, d), "self_attn.o_proj": (d, n * h),
                 "mlp.gate_proj": (f, d), "mlp.up_proj": (f, d), "mlp.down_proj": (d, f),
                 "input_layernorm": (d,), "post_attention_layernorm": (d,),
                 "pre_feedforward_layernorm": (d,), "post_feedforward_layernorm": (d,)}
    if family == "gemma3":
        per_layer |= {"self_attn.q_norm": (h,), "self_attn.k_norm": (h,)}
    for i in range(c.num_layers):
        out |= {f"layers.{i}.{name}": shape for name, shape in per_layer.items()}
    return out


def _read_hf_tensors(
    files: list[Path], expected: dict[str, tuple[int, ...]]
) -> dict[str, np.ndarray]:
    """``{short name: array}`` with every expected tensor, shapes checked before loading."""
    tensors: dict[str, np.ndarray] = {}
    lm_head = None
    for file in files:
        with open_safetensors(file) as fh:
            for key in fh.keys():
                prefix = next((p for p in _HF_PREFIXES if key.startswith(p)), "")
                short = key[len(prefix):].removesuffix(".weight")
                if short in expected:
                    shape = tuple(fh.get_slice(key).get_shape())
                    if shape != expected[short]:
                        raise ParameterMismatch(
                            f"{key}: checkpoint shape {shape}, config.json implies "
                            f"{expected[short]}")
                    tensors[short] = fh.get_tensor(key)
                elif key == "lm_head.weight" or key.endswith(".lm_head.weight"):
                    lm_head = fh.get_tensor(key)
                elif not _HF_IGNORED.match(key):
                    raise ParameterMismatch(f"unexpected tensor {key} in {file.name}")
    missing = sorted(expected.keys() - tensors.keys())
    if missing:
        raise ParameterMismatch(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:5]}")
    if lm_head is not None and not np.array_equal(lm_head, tensors["embed_tokens"]):
        raise ParameterMismatch("untied lm_head.weight is not supported (Gemma ties it to "
                                "the input embedding)")
    return tensors


def params_from_hf(tensors: dict[str, np.ndarray], family: str, c: Any) -> dict[PathKey, Any]:
    """Flat Tunix parameters from HF tensors keyed by name without prefix/``.weight``."""
    def heads(w: np.ndarray, n: int) -> np.ndarray:  # (n*H, D) -> (n, D, H)
        return w.reshape(n, c.head_dim, -1).transpose(0, 2, 1)

    post_attn = "post_attention_norm" if family == "gemma3" else "post_attn_norm"
    flat: dict[PathKey, Any] = {("embedder", "input_embedding"): tensors["embed_tokens"],
                                ("final_norm", "scale"): tensors["norm"]}
    for i in range(c.num_layers):
        t = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"layers.{i}.")}
        q = heads(t["self_attn.q_proj"], c.num_heads)
        k, v = heads(t["self_attn.k_proj"], c.num_kv_heads), heads(t["self_attn.v_proj"],
                                                                     c.num_kv_heads)
        layer: dict[tuple[str, ...], Any] = {
            ("attn", "attn_vec_einsum", "w"): t["self_attn.o_proj"].T.reshape(
                c.num_heads, c.head_dim, c.embed_dim),
            ("mlp", "gate_proj", "kernel"): t["mlp.gate_proj"].T,
            ("mlp", "up_proj", "kernel"): t["mlp.up_proj"].T,
            ("mlp", "down_proj", "kernel"): t["mlp.down_proj"].T,
            ("pre_attention_norm", "scale"): t["input_layernorm"],
            (post_attn, "scale"): t["post_attention_layernorm"],
            ("pre_ffw_norm", "scale"): t["pre_feedforward_layernorm"],
            ("post_ffw_norm", "scale"): t["post_feedforward_layernorm"],
        }
        if c.num_heads == c.num_kv_heads:
            layer[("attn", "qkv_einsum", "w")] = np.stack([q, k, v])
        else:
            layer[("attn", "q_einsum", "w")] = q
            layer[("attn", "kv_einsum", "w")] = np.stack([k, v])
        if family == "gemma3":
            layer[("attn", "_query_norm", "scale")] = t["self_attn.q_norm"]
            layer[("attn", "_key_norm", "scale")] = t["self_attn.k_norm"]
        flat |= {("layers", i, *key): value for key, value in layer.items()}
    return flat


def load_hf_dir(path: Path, spec: ModelSpec | None, *, dtype=jnp.float32) -> Loaded:
    """A Hugging Face Gemma 2 / Gemma 3 safetensors directory -> (model, tokenizer, spec)."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path / 'config.json'} is unreadable ({exc})") from exc
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path / 'config.json'} is not a JSON object")
    family, tunix_config = tunix_config_from_hf(config, dtype=dtype)
    check_spec(family, tunix_config, spec)
    tokenizer = load_tokenizer([path / "tokenizer.model"])
    expected = _hf_expected_shapes(family, tunix_config)
    tensors = _read_hf_tensors(safetensors_files(path), expected)
    model = build_model(family, tunix_config, params_from_hf(tensors, family, tunix_config),
                        dtype=dtype)
    name = Path(str(config.get("_name_or_path") or path.resolve().name)).name
    return model, tokenizer, spec or default_spec(name, family)

