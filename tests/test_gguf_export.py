"""GGUF export: merged models and LoRA adapters in llama.cpp's layout.

Truths: the GGUF loader (``models.gguf``, itself checked against HF transformers)
must read back exactly the parameters we wrote, and the adapter's ``B·A·alpha/r``
must equal the weight change of ``export.merge_lora`` (checked against the LoRA
model's forward in test_export.py). The llama.cpp checks live in test_llamacpp*.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import qwix
from flax import nnx

from bigthoughts.models.build import flat_params
from bigthoughts.models.export import merge_lora
from bigthoughts.models.gguf import dequantize, open_gguf, params_from_gguf, tunix_config_from_gguf
from bigthoughts.models.gguf_export import (
    GGUFExportError,
    gguf_matrices,
    lora_params,
    lora_tensors,
    write_lora_adapter,
    write_model_gguf,
)
from bigthoughts.models.lora import LORA_TARGETS
from tests.tiny_gguf import tiny_model_and_gguf


def with_lora(model, *, rank=4, alpha=8.0, seed=3, scale=0.3):
    x = jnp.ones((1, 4), jnp.int32)
    lora = qwix.apply_lora_to_model(
        model, qwix.LoraProvider(module_path=LORA_TARGETS, rank=rank, alpha=alpha),
        x, jnp.arange(4)[None], None, jnp.tril(jnp.ones((1, 4, 4), dtype=bool)),
        methods=("hidden_states",), rngs=nnx.Rngs(1))
    graphdef, lora_state, rest = nnx.split(lora, nnx.LoRAParam, ...)
    keys = iter(jax.random.split(jax.random.key(seed), 1000))
    lora_state = jax.tree_util.tree_map(  # B != 0, so the adapter really changes things
        lambda v: scale * jax.random.normal(next(keys), v.shape), lora_state)
    return nnx.merge(graphdef, lora_state, rest)


@pytest.mark.parametrize("kv_heads", [1, 2])  # kv_einsum+q_einsum, and qkv_einsum
def test_merged_gguf_reads_back_the_same_parameters(tmp_path, kv_heads):
    import dataclasses

    from bigthoughts.models.build import random_params
    from tests.tiny_gguf import tiny_llamacpp_config, write_tokenizer_gguf

    config = dataclasses.replace(tiny_llamacpp_config(), num_kv_heads=kv_heads)
    params = random_params("gemma3", config, seed=4)
    base = open_gguf(write_tokenizer_gguf(tmp_path / "tok.gguf", config))
    path = write_model_gguf(tmp_path / "m.gguf", params, config, base=base, ftype="f32")
    reader = open_gguf(path)
    family, read_config = tunix_config_from_gguf(reader)
    assert (family, read_config.num_kv_heads, read_config.embed_dim) == ("gemma3", kv_heads, 32)
    back = params_from_gguf(reader, family, read_config)
    assert back.keys() == params.keys()
    for key, value in params.items():
        np.testing.assert_allclose(back[key], value, atol=1e-6, err_msg=str(key))
    # tokenizer and metadata copied from the base
    assert reader.fields["tokenizer.ggml.tokens"].contents()[4] == "<0x00>"
    assert reader.fields["general.file_type"].contents() == 0


@pytest.mark.parametrize("ftype,tol", [("f16", 2e-3), ("q8_0", 2e-2)])
def test_quantised_exports_stay_within_quantisation_error(tmp_path, ftype, tol):
    model, _, base, _ = tiny_model_and_gguf(tmp_path)
    params = flat_params(model)
    path = write_model_gguf(tmp_path / f"m-{ftype}.gguf", params, model.config, base=base,
                            ftype=ftype)
    reader = open_gguf(path)
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["blk.0.attn_q.weight"] == ftype.upper()
    assert kinds["blk.0.attn_norm.weight"] == "F32"  # norm vectors are never quantised
    want = gguf_matrices(params, model.config)
    for tensor in reader.tensors:
        got = dequantize(tensor)
        scale = np.abs(want[tensor.name]).max()
        assert np.abs(got - want[tensor.name]).max() <= tol * scale, tensor.name


def test_q8_0_needs_rows_that_are_multiples_of_32(tmp_path):
    import dataclasses

    from bigthoughts.models.build import random_params
    from tests.tiny_gguf import tiny_llamacpp_config, write_tokenizer_gguf

    config = dataclasses.replace(tiny_llamacpp_config(), embed_dim=40)
    params = random_params("gemma3", config)
    base = open_gguf(write_tokenizer_gguf(tmp_path / "tok.gguf", config))
    with pytest.raises(GGUFExportError, match="multiple of 32"):
        write_model_gguf(tmp_path / "m.gguf", params, config, base=base, ftype="q8_0")
    with pytest.raises(GGUFExportError, match="unknown GGUF type"):
        write_model_gguf(tmp_path / "m.gguf", params, config, base=base, ftype="q4_0")


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_adapter_delta_equals_the_merged_weight_change(tmp_path, kv_heads):
    import dataclasses

    from bigthoughts.models.build import build_model, random_params
    from tests.tiny_gguf import tiny_llamacpp_config, write_tokenizer_gguf

    config = dataclasses.replace(tiny_llamacpp_config(), num_kv_heads=kv_heads)
    params = random_params("gemma3", config, seed=5, scale=0.3)
    model = with_lora(build_model("gemma3", config, params), rank=4, alpha=8.0)
    base = open_gguf(write_tokenizer_gguf(tmp_path / "tok.gguf", config))
    path = write_lora_adapter(tmp_path / "adapter.gguf", model, alpha=8.0, base=base)

    reader = open_gguf(path)
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == 8.0
    assert reader.fields["general.architecture"].contents() == "gemma3"
    tensors = {t.name: dequantize(t) for t in reader.tensors}
    before = gguf_matrices(params, config)
    after = gguf_matrices(merge_lora(model, alpha=8.0, rank=4), config)
    changed = {n for n in before if not np.allclose(before[n], after[n])}
    stems = {n.removesuffix(".lora_a") for n in tensors if n.endswith(".lora_a")}
    assert stems == changed  # q, k, v, o, gate, up, down of every layer, nothing else
    assert len(stems) == 7 * config.num_layers
    for stem in stems:
        a, b = tensors[stem + ".lora_a"], tensors[stem + ".lora_b"]
        assert a.shape == (4, before[stem].shape[1]) and b.shape == (before[stem].shape[0], 4)
        np.testing.assert_allclose(before[stem] + (8.0 / 4) * b @ a, after[stem], atol=1e-5,
                                   err_msg=stem)


def test_lora_export_errors():
    with pytest.raises(GGUFExportError, match="no LoRA"):
        lora_tensors({})
    with pytest.raises(GGUFExportError, match="no pair"):
        lora_tensors({("layers", 0, "mlp", "up_proj", "kernel_lora_a"): np.zeros((2, 2))})


def test_lora_params_reads_only_lora_leaves(tmp_path):
    model, _, _, _ = tiny_model_and_gguf(tmp_path)
    got = lora_params(with_lora(model))
    assert got and all(str(k[-1]).endswith(("_lora_a", "_lora_b")) for k in got)


def test_cli_export_writes_a_gguf_of_an_exported_checkpoint(tmp_path, capsys):
    from bigthoughts.cli import main
    from bigthoughts.models.export import export_checkpoint
    from bigthoughts.models.registry import ModelSpec

    model, tok, _, _ = tiny_model_and_gguf(tmp_path)
    params = flat_params(model)
    spec = ModelSpec(name="tiny", family="gemma3", instruction_tuned=False)
    export_checkpoint(tmp_path / "ckpt", params, family="gemma3", config=model.config, spec=spec,
                      tokenizer=tok)
    out = tmp_path / "tiny.gguf"
    argv = ["export", "--checkpoint", str(tmp_path / "ckpt"), "--gguf", str(out),
            "--gguf-type", "f32", "--tokenizer-from", str(tmp_path / "tokenizer.gguf")]
    assert main(argv) == 0
    reader = open_gguf(out)
    back = params_from_gguf(reader, *tunix_config_from_gguf(reader))
    for key, value in params.items():
        np.testing.assert_allclose(back[key], value, atol=1e-6, err_msg=str(key))
    # the embedded 270M's vocabulary is not the tiny one: one-line error, nothing written
    bad = tmp_path / "bad.gguf"
    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--gguf", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "vocabulary" in err and not bad.exists(), err
    assert main(["export", "--checkpoint", str(tmp_path / "none"), "--gguf", str(bad)]) == 2
    assert not list(tmp_path.glob("*.tmp"))
