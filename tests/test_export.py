"""LoRA merge and checkpoint export: the merged model computes what the LoRA model did."""

import jax
import jax.numpy as jnp
import numpy as np
import qwix
from flax import nnx

from bigthoughts.models.build import build_model
from bigthoughts.models.export import export_checkpoint, export_hf_gemma3, load_exported, merge_lora
from bigthoughts.models.registry import ModelSpec
from tests.tiny import tiny_model


def _logits(model, ids):
    n = len(ids)
    out, _ = model(jnp.asarray([ids]), jnp.arange(n)[None], None,
                   jnp.tril(jnp.ones((1, n, n), dtype=bool)))
    return np.asarray(out)


def _lora_model(rank=4, alpha=8.0):
    model, tok = tiny_model(scale=0.3)
    x = jnp.ones((1, 4), jnp.int32)
    lora = qwix.apply_lora_to_model(
        model, qwix.LoraProvider(module_path=".*einsum|.*_proj", rank=rank, alpha=alpha),
        x, jnp.arange(4)[None], None, jnp.tril(jnp.ones((1, 4, 4), dtype=bool)),
        methods=("hidden_states",), rngs=nnx.Rngs(1))
    graphdef, lora_state, rest = nnx.split(lora, nnx.LoRAParam, ...)
    keys = iter(jax.random.split(jax.random.key(3), 1000))
    lora_state = jax.tree_util.tree_map(
        lambda v: 0.3 * jax.random.normal(next(keys), v.shape), lora_state)  # B != 0
    return nnx.merge(graphdef, lora_state, rest), tok


def test_merged_weights_reproduce_the_lora_model(tmp_path):
    from bigthoughts.models import forward

    model, tok = _lora_model()
    ids = tok.encode("merge me", add_bos=True)
    n = len(ids)
    hidden, _ = forward.hidden_states(model, jnp.asarray([ids]), jnp.arange(n)[None], None,
                                      jnp.tril(jnp.ones((1, n, n), dtype=bool)))
    want = np.asarray(forward.logits(model, hidden))
    params = merge_lora(model, alpha=8.0, rank=4)
    merged = build_model("gemma3", model.config, params)
    got = _logits(merged, ids)
    base_only, _ = tiny_model(scale=0.3)
    assert np.abs(_logits(base_only, ids) - want).max() > 1e-2  # LoRA really changed it
    np.testing.assert_allclose(got, want, atol=2e-4)

    spec = ModelSpec(name="tiny", family="gemma3", instruction_tuned=False)
    export_checkpoint(tmp_path / "ckpt", params, family="gemma3", config=model.config, spec=spec,
                      tokenizer=tok)
    loaded = load_exported(tmp_path / "ckpt")
    np.testing.assert_allclose(_logits(loaded.model, ids), want, atol=2e-4)
    assert loaded.spec == spec and loaded.tokenizer.encode("abc") == tok.encode("abc")


def test_hf_export_round_trips_through_the_hf_loader(tmp_path):
    from bigthoughts.models.checkpoints import load_checkpoint_dir

    model, tok = tiny_model(scale=0.3)
    params = {p: np.asarray(v.get_value())
              for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    export_hf_gemma3(tmp_path / "hf", params, model.config, tok)
    loaded, tok2, spec = load_checkpoint_dir(tmp_path / "hf", None, dtype=jnp.float32)
    ids = tok.encode("round trip", add_bos=True)
    np.testing.assert_allclose(_logits(loaded, ids), _logits(model, ids), atol=1e-5)
