"""A damaged safetensors file is one line naming it, never a traceback: an exported
checkpoint's ``params.safetensors``, a Hugging Face checkpoint's shard; a damaged cache
file of ours (converted GGUF weights, folded adapter weights) is rebuilt instead."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tests.fixtures_checkpoints as fx
from bigthoughts.models.export import export_checkpoint, load_exported
from bigthoughts.models.spec import ModelLoadError, ModelSpec
from bigthoughts.models.tensorfile import read_safetensors
from tests.tiny import assert_same_params, tiny_model


def damage(path, how: str) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        if how == "truncated":
            fh.truncate(size - 100)
        elif how == "header":
            fh.seek(8)
            fh.write(b"\xff" * 32)  # the JSON header is no longer JSON
        else:
            fh.truncate(0)


@pytest.mark.parametrize("how", ["truncated", "header", "empty"])
def test_a_damaged_exported_checkpoint_is_one_line(tmp_path, how):
    model, tok = tiny_model()
    params = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model,
                                                                                  nnx.Param))}
    spec = ModelSpec(name="tiny", family="gemma3", instruction_tuned=False)
    export_checkpoint(tmp_path / "ckpt", params, family="gemma3", config=model.config,
                      spec=spec, tokenizer=tok)
    load_exported(tmp_path / "ckpt")  # intact: loads
    damage(tmp_path / "ckpt" / "params.safetensors", how)
    with pytest.raises(ModelLoadError, match=r"ckpt/params\.safetensors is not a readable "
                       r"safetensors file \(.+\); it may be truncated or damaged") as err:
        load_exported(tmp_path / "ckpt")
    assert "\n" not in str(err.value)


def test_a_damaged_hf_shard_is_one_line(tmp_path):
    from bigthoughts.models.checkpoints import load_checkpoint_dir

    path = fx.write_hf_checkpoint(tmp_path / "hf", fx.GEMMA3_TEXT_CONFIG,
                                  fx.hf_tensors(fx.GEMMA3_TEXT_CONFIG, 0))
    damage(path / "model.safetensors", "truncated")
    with pytest.raises(ModelLoadError, match=r"model\.safetensors is not a readable"):
        load_checkpoint_dir(path, None, dtype=jnp.float32)


def test_a_damaged_gguf_conversion_cache_is_rebuilt(tmp_path, monkeypatch):
    """The converted-GGUF cache (params-*.safetensors): a damaged file (a kill or a full
    disk mid-write in an older version) is converted again; the weights are equal."""
    from bigthoughts.models.registry import load_model
    from tests.tiny_gguf import tiny_model_and_gguf

    monkeypatch.setenv("BIGTHOUGHTS_CACHE", str(tmp_path / "cache"))
    _, _, _, gguf = tiny_model_and_gguf(tmp_path)
    first = load_model(gguf)
    (cached,) = (tmp_path / "cache").glob("params-*.safetensors")
    damage(cached, "truncated")
    again = load_model(gguf)
    assert_same_params(first.model, again.model)
    assert read_safetensors(cached)  # rewritten whole


def test_read_safetensors_names_the_file(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with pytest.raises(ModelLoadError, match="x.safetensors is not a readable"):
        read_safetensors(bad)
    with pytest.raises(ModelLoadError, match="missing.safetensors is not a readable"):
        read_safetensors(tmp_path / "missing.safetensors")
