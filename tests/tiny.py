"""Tiny random Gemma models and a byte-level tokenizer for fast tests."""

from __future__ import annotations

import jax.numpy as jnp
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from bigthoughts.models.build import build_model, random_params
from bigthoughts.models.tokenizer import Tokenizer

SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")


def byte_tokenizer() -> Tokenizer:
    """PAD=0, EOS=1, BOS=2, UNK=3, then one piece per byte (vocab 260)."""
    model = sp_pb2.ModelProto()
    model.trainer_spec.model_type = sp_pb2.TrainerSpec.BPE
    model.trainer_spec.byte_fallback = True
    model.trainer_spec.unk_id, model.trainer_spec.bos_id = 3, 2
    model.trainer_spec.eos_id, model.trainer_spec.pad_id = 1, 0
    model.trainer_spec.unk_piece, model.trainer_spec.bos_piece = "<unk>", "<bos>"
    model.trainer_spec.eos_piece, model.trainer_spec.pad_piece = "<eos>", "<pad>"
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = False
    model.normalizer_spec.escape_whitespaces = True
    for i, piece in enumerate(SPECIALS):
        p = model.pieces.add()
        p.piece, p.score, p.type = piece, 0.0, (2 if i == 3 else 3)
    for b in range(256):
        p = model.pieces.add()
        p.piece, p.score, p.type = f"<0x{b:02X}>", 0.0, 6
    return Tokenizer(model.SerializeToString())


def tiny_config(family: str = "gemma3", *, vocab: int = 260, layers: int = 2):
    if family == "gemma3":
        from tunix.models.gemma3 import model as g3

        return g3.ModelConfig(
            num_layers=layers, num_embed=vocab, embed_dim=32, hidden_dim=64, num_heads=2,
            head_dim=16, num_kv_heads=1, sliding_window_size=8, param_dtype=jnp.float32,
        )
    from tunix.models.gemma import model as g2

    return g2.ModelConfig(
        num_layers=layers, num_embed=vocab, embed_dim=32, hidden_dim=64, num_heads=2,
        head_dim=16, num_kv_heads=1, final_logit_softcap=30.0, use_post_attn_norm=True,
        use_post_ffw_norm=True, attn_logits_soft_cap=50.0, sliding_window_size=8,
        attention_types=(g2.AttentionType.LOCAL_SLIDING, g2.AttentionType.GLOBAL) * (layers // 2),
    )


def tiny_model(family: str = "gemma3", *, seed: int = 0, scale: float = 0.5):
    """A random model whose logits are peaked enough for greedy decoding to vary."""
    config = tiny_config(family)
    params = random_params(family, config, seed=seed, scale=scale)
    return build_model(family, config, params), byte_tokenizer()


def assert_same_params(a, b) -> None:
    """Every parameter of models ``a`` and ``b`` equal, bit for bit."""
    import numpy as np
    from flax import nnx

    for (path, x), (_, y) in zip(nnx.to_flat_state(nnx.state(a, nnx.Param)),
                                 nnx.to_flat_state(nnx.state(b, nnx.Param)), strict=True):
        np.testing.assert_array_equal(np.asarray(x.get_value()), np.asarray(y.get_value()),
                                      err_msg=str(path))
