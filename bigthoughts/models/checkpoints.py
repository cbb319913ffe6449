"""Checkpoint directories -> Tunix Gemma models: Hugging Face safetensors, Kaggle Orbax.

``detect_format`` tells the two layouts apart by their contents:

* ``hf_safetensors``: ``config.json`` + ``*.safetensors`` (one file or shards listed in
  ``model.safetensors.index.json``) + ``tokenizer.model``; model_type "gemma2",
  "gemma3_text", or "gemma3" (multimodal: only the language model is loaded, from
  ``language_model.model.*`` or ``model.language_model.*``). The Tunix ``ModelConfig``
  comes from ``config.json``; settings Tunix's models cannot express are refused.
  HF tensors are (out, in): q -> (N, D, H), k/v -> ``kv_einsum`` (2, K, D, H) or
  ``qkv_einsum`` (3, N, D, H) when N == K, ``o_proj`` -> (N, H, D), MLP kernels are
  transposes, RMSNorm weights map unchanged (both compute ``x * (1 + w)``).
* ``kaggle_orbax``: an Orbax checkpoint of ``{"transformer/layer_0/attn/q_einsum":
  {"w": ...}, ...}``, alone or inside a release folder beside ``tokenizer.model``.
  Sizes come from the shapes; attention settings (window, RoPE, soft-caps) from
  ``spec.tunix_config``, else the Tunix preset of the same size, else the smallest one.
  Names are mapped by Tunix's ``gemma3.params.map_from_upstream_checkpoint``.

We do not call Tunix's loaders end to end: ``params_safetensors`` assumes one dtype per
file, misses the ``model.language_model.`` prefix of transformers >= 4.52 and reports a
wrong config as a reshape error; ``create_model_from_checkpoint`` restores with the
checkpoint's saved sharding, which fails on another device count ("Topology
mismatch"). We restore into NumPy and ``build_model`` checks every name and shape.

Example: ``model, tokenizer, spec = load_checkpoint_dir(Path("gemma-2-2b-it"), None)``
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import re
from pathlib import Path
from typing import Any, Literal

import jax.numpy as jnp
import numpy as np
from flax import nnx

from bigthoughts.models.build import ParameterMismatch, PathKey, build_model
from bigthoughts.models.spec import ModelLoadError, ModelSpec, resolve_dtype
from bigthoughts.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer

Format = Literal["hf_safetensors", "kaggle_orbax"]
Loaded = tuple[nnx.Module, Tokenizer, ModelSpec]
ORBAX_MARKERS = ("_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt", "_sharding", "checkpoint")
_log = logging.getLogger(__name__)

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
_PRESETS = {"gemma3": ("gemma3_270m", "gemma3_1b_pt", "gemma3_4b_pt", "gemma3_12b_pt",
                       "gemma3_27b_pt"),
            "gemma2": ("gemma2_2b", "gemma2_9b")}
_IDENTITY = ("num_layers", "embed_dim", "num_heads", "num_kv_heads", "head_dim")


# ---------------------------------------------------------------- format detection
def _orbax_root(path: Path) -> Path | None:
    """``path`` if it is an Orbax checkpoint, else its single checkpoint sub-directory."""
    if any((path / m).exists() for m in ORBAX_MARKERS):
        return path
    found = [d for d in sorted(path.iterdir()) if d.is_dir()
             and any((d / m).exists() for m in ORBAX_MARKERS)]
    if len(found) > 1:
        raise ModelLoadError(f"{path} holds several Orbax checkpoints "
                             f"({', '.join(d.name for d in found)}): pass one of them")
    return found[0] if found else None


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


def _safetensors_files(path: Path) -> list[Path]:
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


def detect_format(path: Path) -> Format:
    """Which checkpoint layout ``path`` holds; ``ModelLoadError`` when neither."""
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"{path} is not a checkpoint directory")
    if (path / "config.json").is_file():
        if _safetensors_files(path):
            return "hf_safetensors"
        raise ModelLoadError(
            f"{path} has config.json but no *.safetensors weights; PyTorch .bin "
            "checkpoints are not supported (re-save with safe_serialization=True)")
    if _orbax_root(path) is not None:
        return "kaggle_orbax"
    seen = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "nothing"
    raise ModelLoadError(
        f"{path} is not a checkpoint we can read (it holds: {seen}). Expected a Hugging "
        "Face directory (config.json + *.safetensors + tokenizer.model) or a Kaggle "
        "Flax/Orbax release (an Orbax checkpoint directory with _METADATA/manifest.ocdbt, "
        "and tokenizer.model beside it)")


# ---------------------------------------------------------------- shared helpers
def _model_config_cls(family: str):
    if family == "gemma3":
        from tunix.models.gemma3.model import ModelConfig
    else:
        from tunix.models.gemma.model import ModelConfig
    return ModelConfig


def _gemma2_attention(num_layers: int, kinds: list[str] | None = None) -> tuple:
    """Tunix attention types from HF ``layer_types``; default: local, global, local, ..."""
    from tunix.models.gemma.model import AttentionType

    kinds = kinds or ["sliding_attention", "full_attention"] * num_layers
    return tuple(AttentionType.GLOBAL if k == "full_attention" else AttentionType.LOCAL_SLIDING
                 for k in kinds[:num_layers])


def _check_spec(family: str, config: Any, spec: ModelSpec | None) -> None:
    """The checkpoint must be the model ``spec`` names: same family and sizes."""
    if spec is None:
        return
    if spec.family != family:
        raise ModelLoadError(f"{spec.name} is a {spec.family} model but the checkpoint "
                             f"holds a {family} model")
    if spec.tunix_config:
        ref = getattr(_model_config_cls(family), spec.tunix_config)()
        diff = [f"{k}={getattr(config, k)} (expected {getattr(ref, k)})" for k in _IDENTITY
                if getattr(config, k) != getattr(ref, k)]
        if diff:
            raise ParameterMismatch(f"checkpoint does not match {spec.name}: {', '.join(diff)}")


def _default_spec(name: str, family: str) -> ModelSpec:
    lowered = name.lower()
    return ModelSpec(name=name, family=family,  # type: ignore[arg-type]
                     instruction_tuned="-it" in lowered or "instruct" in lowered)


def _load_tokenizer(candidates: list[Path]) -> Tokenizer:
    candidates = list(dict.fromkeys(p.resolve() for p in candidates))
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        looked = ", ".join(map(str, candidates))
        raise ModelLoadError(
            f"no SentencePiece tokenizer.model found (looked for {looked}); copy the "
            "tokenizer.model of the model's release next to the weights")
    try:
        tokenizer = Tokenizer.from_file(path)
    except (RuntimeError, OSError) as exc:
        raise ModelLoadError(f"{path} is not a SentencePiece model: {exc}") from exc
    proc = tokenizer.processor
    if (proc.bos_id(), proc.eos_id(), proc.pad_id()) != (BOS_ID, EOS_ID, PAD_ID):
        raise ModelLoadError(f"{path} is not a Gemma tokenizer: bos/eos/pad ids are "
                             f"{proc.bos_id()}/{proc.eos_id()}/{proc.pad_id()}, expected 2/1/0")
    return tokenizer


# ---------------------------------------------------------------- Hugging Face
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
        attention_types=_gemma2_attention(sizes["num_layers"], t.get("layer_types")))


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
    from safetensors import safe_open

    tensors: dict[str, np.ndarray] = {}
    lm_head = None
    for file in files:
        with safe_open(str(file), framework="numpy") as fh:
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
    _check_spec(family, tunix_config, spec)
    tokenizer = _load_tokenizer([path / "tokenizer.model"])
    expected = _hf_expected_shapes(family, tunix_config)
    tensors = _read_hf_tensors(_safetensors_files(path), expected)
    model = build_model(family, tunix_config, params_from_hf(tensors, family, tunix_config),
                        dtype=dtype)
    name = Path(str(config.get("_name_or_path") or path.resolve().name)).name
    return model, tokenizer, spec or _default_spec(name, family)


# ---------------------------------------------------------------- Kaggle Flax / Orbax
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
    cls = _model_config_cls(family)
    if spec is not None and spec.tunix_config:
        base = getattr(cls, spec.tunix_config)()
    else:
        presets = [getattr(cls, name)() for name in _PRESETS[family]]
        same = [p for p in presets if all(getattr(p, k) == sizes[k] for k in _IDENTITY)]
        base = same[0] if same else presets[0]
        if not same:
            _log.warning("no Tunix %s preset has these sizes; using the attention settings "
                         "(sliding window, RoPE, soft-caps) of %s", family, _PRESETS[family][0])
    config = dataclasses.replace(base, **sizes)
    if family == "gemma2":
        config = dataclasses.replace(config, attention_types=_gemma2_attention(len(layers)))
    else:
        config = dataclasses.replace(config, param_dtype=dtype)
    _check_spec(family, config, spec)
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
    ckpt = _orbax_root(path)
    if ckpt is None:
        raise ModelLoadError(f"{path} holds no Orbax checkpoint")
    tokenizer = _load_tokenizer([path / "tokenizer.model", ckpt.parent / "tokenizer.model"])
    raw = restore_orbax(ckpt)
    family, config = tunix_config_from_kaggle(raw, spec, dtype=dtype)
    model = build_model(family, config, params_from_kaggle(raw, family, config), dtype=dtype)
    return model, tokenizer, spec or _default_spec(ckpt.resolve().name, family)


def load_checkpoint_dir(path: Path, spec: ModelSpec | None, *, dtype=jnp.float32) -> Loaded:
    """Loads a checkpoint directory in either format -> ``(model, Tokenizer, ModelSpec)``.

    ``spec`` None: family, sizes and name come from the directory. Otherwise the
    checkpoint must match ``spec`` (family and sizes; ``ParameterMismatch`` if not)."""
    path, dtype = Path(path), resolve_dtype(dtype)
    if detect_format(path) == "hf_safetensors":
        return load_hf_dir(path, spec, dtype=dtype)
    return load_kaggle_dir(path, spec, dtype=dtype)
