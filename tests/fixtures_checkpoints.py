"""Deterministic tiny Gemma checkpoints in the on-disk formats ``checkpoints.py`` reads.

Shared by ``tests/test_checkpoints.py`` and ``scripts/make_tiny_hf_golden.py`` (which
runs in a separate venv with torch + transformers), so the golden logits and the test
see bit-identical weights generated from a seed; no weights are committed.

* Hugging Face: ``config.json`` + ``model.safetensors`` (or shards with
  ``model.safetensors.index.json``), real HF key names and (out, in) shapes.
* Kaggle Flax/Orbax: ``<root>/<name>/`` an Orbax PyTree checkpoint whose top-level keys
  are slash-joined module paths (``"transformer/layer_0/attn/q_einsum": {"w": ...}``),
  as in Kaggle's Gemma 2 / Gemma 3 Flax releases, with ``<root>/tokenizer.model``.

Both get a small SentencePiece ``tokenizer.model`` with Gemma's special ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bigthoughts.models.tokenizer import Vocabulary, build_sentencepiece_proto

VOCAB = 320
SEQ_IDS_SEED = 123
GOLDEN = Path(__file__).resolve().parent / "golden" / "tiny_hf_logits.npz"

GEMMA2_CONFIG: dict = {
    "architectures": ["Gemma2ForCausalLM"],
    "model_type": "gemma2",
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,  # local, global
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "query_pre_attn_scalar": 16,
    "sliding_window": 4,
    # Small caps so that tanh soft-capping visibly bends the tiny model's logits.
    "final_logit_softcapping": 10.0,
    "attn_logit_softcapping": 5.0,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 64,
    "bos_token_id": 2,
    "eos_token_id": 1,
    "pad_token_id": 0,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
}
GEMMA2_SEED = 2

GEMMA3_TEXT_CONFIG: dict = {
    "architectures": ["Gemma3ForCausalLM"],
    "model_type": "gemma3_text",
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 6,  # five local layers, then one global (Gemma 3's pattern)
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "query_pre_attn_scalar": 16,
    "sliding_window": 4,
    "sliding_window_pattern": 6,
    "rope_theta": 1000000.0,
    "rope_local_base_freq": 10000.0,
    "rope_scaling": {"rope_type": "linear", "factor": 8.0},
    "final_logit_softcapping": None,
    "attn_logit_softcapping": None,
    "rms_norm_eps": 1e-6,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 64,
    "bos_token_id": 2,
    "eos_token_id": 1,
    "pad_token_id": 0,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
}
GEMMA3_SEED = 3

# name -> (config, weight seed) of the tiny checkpoints with golden HF logits.
GOLDEN_MODELS = {
    "gemma2": (GEMMA2_CONFIG, GEMMA2_SEED),
    "gemma3": (GEMMA3_TEXT_CONFIG, GEMMA3_SEED),
}


def tokenizer_proto(vocab_size: int = VOCAB) -> bytes:
    """A SentencePiece BPE model: Gemma's 4 specials, 256 byte pieces, letters, digits."""
    pieces = ["<pad>", "<eos>", "<bos>", "<unk>"]
    types = [3, 3, 3, 2]  # CONTROL x3, UNKNOWN
    pieces += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256  # BYTE
    words = ["<start_of_turn>", "<end_of_turn>"]
    pieces += words
    types += [4] * len(words)  # USER_DEFINED
    normal = ["▁", *"abcdefghijklmnopqrstuvwxyz0123456789"]
    pieces += normal
    types += [1] * len(normal)
    pad = vocab_size - len(pieces)
    if pad < 0:
        raise ValueError(f"vocab_size {vocab_size} < {len(pieces)} base pieces")
    pieces += [f"<unused{i}>" for i in range(pad)]
    types += [5] * pad  # UNUSED
    scores = np.array([-float(i) if t == 1 else 0.0 for i, t in enumerate(types)], np.float32)
    return build_sentencepiece_proto(
        Vocabulary(pieces=tuple(pieces), scores=scores, types=np.array(types, np.int32))
    )


def _dims(config: dict) -> tuple[int, int, int, int, int, int, int]:
    c = config.get("text_config", config)
    return (c["vocab_size"], c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"],
            c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"])


def hf_tensors(config: dict, seed: int) -> dict[str, np.ndarray]:
    """Random float32 weights under Hugging Face's names for a Gemma 2 / Gemma 3 text config."""
    rng = np.random.default_rng(seed)
    v, d, f, layers, n, k, h = _dims(config)
    gemma3 = config["model_type"].startswith("gemma3")

    def normal(shape: tuple[int, ...], scale: float) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    out = {"model.embed_tokens.weight": normal((v, d), 0.5)}
    for i in range(layers):
        p = f"model.layers.{i}."
        out[p + "self_attn.q_proj.weight"] = normal((n * h, d), 0.4)
        out[p + "self_attn.k_proj.weight"] = normal((k * h, d), 0.4)
        out[p + "self_attn.v_proj.weight"] = normal((k * h, d), 0.3)
        out[p + "self_attn.o_proj.weight"] = normal((d, n * h), 0.2)
        if gemma3:
            out[p + "self_attn.q_norm.weight"] = normal((h,), 0.2)
            out[p + "self_attn.k_norm.weight"] = normal((h,), 0.2)
        out[p + "mlp.gate_proj.weight"] = normal((f, d), 0.2)
        out[p + "mlp.up_proj.weight"] = normal((f, d), 0.2)
        out[p + "mlp.down_proj.weight"] = normal((d, f), 0.2)
        for norm in ("input_layernorm", "post_attention_layernorm",
                     "pre_feedforward_layernorm", "post_feedforward_layernorm"):
            out[p + norm + ".weight"] = normal((d,), 0.2)
    out["model.norm.weight"] = normal((d,), 0.2)
    return out


def multimodal(config: dict, tensors: dict[str, np.ndarray], *, prefix: str):
    """Wraps a gemma3_text checkpoint as a ``gemma3`` (Gemma3ForConditionalGeneration) one.

    ``prefix`` is where the language model's ``model.`` lives: "language_model.model."
    (transformers < 4.52 and the Hub's Gemma 3 files) or "model.language_model.".
    A few vision tensors are added; a text-only loader must skip them.
    """
    text = {**config, "model_type": "gemma3_text"}
    text.pop("architectures", None)
    mm_config = {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "text_config": text,
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 8},
        "mm_tokens_per_image": 4,
    }
    vision_root = "model." if prefix.startswith("model.") else ""
    mm = {prefix + k.removeprefix("model."): v for k, v in tensors.items()}
    mm[vision_root + "vision_tower.vision_model.embeddings.patch_embedding.weight"] = np.zeros(
        (8, 3, 2, 2), np.float32)
    mm[vision_root + "multi_modal_projector.mm_input_projection_weight"] = np.zeros(
        (8, config["hidden_size"]), np.float32)
    return mm_config, mm


def write_hf_checkpoint(
    dest: Path, config: dict, tensors: dict[str, np.ndarray], *, shards: int = 1,
    tokenizer: bool = True,
) -> Path:
    """Writes ``config.json``, safetensors file(s) and ``tokenizer.model`` into ``dest``."""
    from safetensors.numpy import save_file

    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    names = list(tensors)
    if shards == 1:
        save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for s, part in enumerate(np.array_split(np.arange(len(names)), shards)):
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            save_file({names[i]: tensors[names[i]] for i in part}, str(dest / fname),
                      metadata={"format": "pt"})
            weight_map.update({names[i]: fname for i in part})
        index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
                 "weight_map": weight_map}
        (dest / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    if tokenizer:
        (dest / "tokenizer.model").write_bytes(tokenizer_proto(config.get("vocab_size", VOCAB)))
    return dest


def kaggle_params(
    family: str, seed: int, *, vocab: int = VOCAB, embed: int = 32, hidden: int = 64,
    layers: int = 2, heads: int = 4, kv_heads: int = 2, head_dim: int = 8,
) -> dict[str, dict[str, np.ndarray]]:
    """Random params in the Kaggle Flax layout (Gemma 2 or Gemma 3 text).

    ``mlp/gating_einsum`` is (2, D, F) in Gemma 2 releases and (2, F, D) in Gemma 3's;
    ``mlp/linear`` is (F, D); attention is ``q_einsum`` (N, D, H) + ``kv_einsum``
    (2, K, D, H), or ``qkv_einsum`` (3, N, D, H) when N == K; Gemma 3 adds
    ``attn/_query_norm`` and ``attn/_key_norm``.
    """
    rng = np.random.default_rng(seed)

    def normal(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    t = "transformer/"
    out = {t + "embedder": {"input_embedding": normal(vocab, embed, scale=0.5)}}
    for i in range(layers):
        p = f"{t}layer_{i}/"
        if heads == kv_heads:
            out[p + "attn/qkv_einsum"] = {"w": normal(3, heads, embed, head_dim, scale=0.4)}
        else:
            out[p + "attn/q_einsum"] = {"w": normal(heads, embed, head_dim, scale=0.4)}
            out[p + "attn/kv_einsum"] = {"w": normal(2, kv_heads, embed, head_dim, scale=0.4)}
        out[p + "attn/attn_vec_einsum"] = {"w": normal(heads, head_dim, embed)}
        if family == "gemma3":
            out[p + "attn/_query_norm"] = {"scale": normal(head_dim)}
            out[p + "attn/_key_norm"] = {"scale": normal(head_dim)}
            out[p + "mlp/gating_einsum"] = {"w": normal(2, hidden, embed)}
        else:
            out[p + "mlp/gating_einsum"] = {"w": normal(2, embed, hidden)}
        out[p + "mlp/linear"] = {"w": normal(hidden, embed)}
        for norm in ("pre_attention_norm", "post_attention_norm", "pre_ffw_norm", "post_ffw_norm"):
            out[p + norm] = {"scale": normal(embed)}
    out[t + "final_norm"] = {"scale": normal(embed)}
    return out


def write_kaggle_checkpoint(root: Path, name: str, params: dict, *, tokenizer: bool = True) -> Path:
    """Saves ``params`` as an Orbax checkpoint ``root/name`` (+ ``root/tokenizer.model``)."""
    import orbax.checkpoint as ocp

    root.mkdir(parents=True, exist_ok=True)
    ocp.PyTreeCheckpointer().save((root / name).resolve(), params)
    if tokenizer:
        (root / "tokenizer.model").write_bytes(tokenizer_proto())
    return root


def sample_ids(n: int = 12, vocab: int = VOCAB) -> np.ndarray:
    """Fixed token ids for the golden comparison: BOS then n - 1 ordinary ids."""
    rng = np.random.default_rng(SEQ_IDS_SEED)
    return np.concatenate([[2], rng.integers(4, vocab, n - 1)]).astype(np.int32)


def fingerprint(tensors: dict[str, np.ndarray]) -> float:
    """A cheap checksum of a weight dict, to notice a drifted generator."""
    return float(sum(np.abs(t.astype(np.float64)).sum() * (i + 1)
                     for i, (_, t) in enumerate(sorted(tensors.items()))))
