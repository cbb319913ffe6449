"""Tests for bigthoughts.models.checkpoints: Hugging Face safetensors and Kaggle Orbax dirs.

Tiny random checkpoints are written in the real on-disk layouts by
``tests/fixtures_checkpoints.py``. Independent truths: logits from Hugging Face
transformers for the same weights (``tests/golden/tiny_hf_logits.npz``, made by
``scripts/make_tiny_hf_golden.py``), Tunix's own safetensors loaders, and the Kaggle
layout transformation written out by hand below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from bigthoughts.models import checkpoints as ck
from bigthoughts.models.build import ParameterMismatch, build_model, flat_params
from bigthoughts.models.registry import REGISTRY, ModelLoadError, ModelSpec, load_model
from tests import fixtures_checkpoints as fx

REPO = Path(__file__).resolve().parents[1]


def forward(model, ids: np.ndarray) -> np.ndarray:
    """Full-sequence causal forward pass -> [L, vocab] float32 logits."""
    length = len(ids)
    mask = jnp.tril(jnp.ones((1, length, length), dtype=bool))
    logits, _ = model(jnp.asarray(ids)[None], jnp.arange(length)[None], None, mask)
    return np.asarray(logits[0], dtype=np.float32)


def assert_same_params(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(actual[key], np.asarray(value, np.float32), err_msg=str(key))


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return dict(np.load(fx.GOLDEN))


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {name: fx.write_hf_checkpoint(root / name, config, fx.hf_tensors(config, seed))
            for name, (config, seed) in fx.GOLDEN_MODELS.items()}


@pytest.fixture(scope="module")
def kaggle_raw() -> dict[str, dict]:
    # Gemma 2 with N != K (q_einsum + kv_einsum), Gemma 3 with N == K (qkv_einsum).
    return {"gemma2": fx.kaggle_params("gemma2", 7, heads=4, kv_heads=2),
            "gemma3": fx.kaggle_params("gemma3", 8, heads=2, kv_heads=2, head_dim=16)}


@pytest.fixture(scope="module")
def kaggle_dirs(tmp_path_factory, kaggle_raw) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kaggle")
    return {family: fx.write_kaggle_checkpoint(root / family, f"{family}-tiny-it", raw)
            for family, raw in kaggle_raw.items()}


# ------------------------------------------------------------------ format detection
def test_detect_format(hf_dirs, kaggle_dirs, tmp_path):
    sharded = fx.write_hf_checkpoint(tmp_path / "sharded", fx.GEMMA2_CONFIG,
                                     fx.hf_tensors(fx.GEMMA2_CONFIG, 0), shards=2)
    assert ck.detect_format(hf_dirs["gemma2"]) == "hf_safetensors"
    assert ck.detect_format(sharded) == "hf_safetensors"
    assert ck.detect_format(kaggle_dirs["gemma2"]) == "kaggle_orbax"  # release folder
    assert ck.detect_format(kaggle_dirs["gemma2"] / "gemma2-tiny-it") == "kaggle_orbax"


# ------------------------------------------------------------------ Hugging Face
@pytest.mark.parametrize("name", ["gemma2", "gemma3"])
def test_hf_logits_match_transformers(name, hf_dirs, golden):
    config, seed = fx.GOLDEN_MODELS[name]
    assert fx.fingerprint(fx.hf_tensors(config, seed)) == pytest.approx(
        float(golden[f"{name}_fingerprint"]), rel=1e-9
    ), "fixture generator changed: rerun scripts/make_tiny_hf_golden.py"
    model, tokenizer, spec = ck.load_checkpoint_dir(hf_dirs[name], None)
    assert (spec.family, spec.name, spec.instruction_tuned) == (name, name, False)
    diff = np.abs(forward(model, golden["ids"]) - golden[f"{name}_logits"]).max()
    assert diff < 1e-4, f"max |logit difference| vs transformers = {diff}"
    assert tokenizer.decode(tokenizer.encode("tiny 42")) == "tiny 42"


@pytest.mark.parametrize(
    ("name", "change"),
    [("gemma2", {"sliding_window": 12}), ("gemma2", {"attn_logit_softcapping": None}),
     ("gemma2", {"final_logit_softcapping": 30.0}), ("gemma3", {"sliding_window": 12}),
     ("gemma3", {"rope_scaling": None}), ("gemma3", {"rope_local_base_freq": 1e6})],
)
def test_hf_golden_comparison_is_sensitive(name, change, golden, tmp_path):
    """Each config setting we translate changes the logits: a loader ignoring it fails."""
    config, seed = fx.GOLDEN_MODELS[name]
    path = fx.write_hf_checkpoint(tmp_path, {**config, **change}, fx.hf_tensors(config, seed))
    model, _, _ = ck.load_checkpoint_dir(path, None)
    assert np.abs(forward(model, golden["ids"]) - golden[f"{name}_logits"]).max() > 0.1


@pytest.mark.parametrize("name", ["gemma2", "gemma3"])
def test_hf_params_match_tunix_safetensors_loader(name, hf_dirs):
    if name == "gemma2":
        from tunix.models.gemma.params_safetensors import create_model_from_safe_tensors
    else:
        from tunix.models.gemma3.params_safetensors import create_model_from_safe_tensors
    ours, _, _ = ck.load_checkpoint_dir(hf_dirs[name], None)
    theirs = create_model_from_safe_tensors(str(hf_dirs[name]), ours.config, dtype=jnp.float32)
    assert_same_params(flat_params(ours), flat_params(theirs))


@pytest.mark.parametrize("layout", ["sharded", "language_model.model.", "model.language_model."])
def test_hf_sharded_and_multimodal_layouts(layout, hf_dirs, tmp_path):
    config, seed = fx.GOLDEN_MODELS["gemma3"]
    tensors = fx.hf_tensors(config, seed)
    if layout == "sharded":
        path = fx.write_hf_checkpoint(tmp_path, config, tensors, shards=3)
        assert len(list(tmp_path.glob("*.safetensors"))) == 3
    else:
        mm_config, mm_tensors = fx.multimodal(config, tensors, prefix=layout)
        path = fx.write_hf_checkpoint(tmp_path, mm_config, mm_tensors)
    model, _, spec = ck.load_checkpoint_dir(path, None)
    reference, _, _ = ck.load_checkpoint_dir(hf_dirs["gemma3"], None)
    assert spec.family == "gemma3"
    assert_same_params(flat_params(model), flat_params(reference))


def test_hf_bfloat16_weights_and_named_spec(hf_dirs, tmp_path):
    import ml_dtypes

    config, seed = fx.GOLDEN_MODELS["gemma2"]
    tensors = {k: v.astype(ml_dtypes.bfloat16) for k, v in fx.hf_tensors(config, seed).items()}
    path = fx.write_hf_checkpoint(tmp_path / "gemma-2-tiny-it", config, tensors)
    mine = ModelSpec(name="mine", family="gemma2", instruction_tuned=True)
    model, _, spec = ck.load_checkpoint_dir(path, mine, dtype="bfloat16")
    assert spec is mine
    params = flat_params(model)
    assert params[("embedder", "input_embedding")].dtype == jnp.bfloat16
    reference = flat_params(ck.load_checkpoint_dir(hf_dirs["gemma2"], None)[0])
    for key, value in params.items():
        np.testing.assert_array_equal(
            value, reference[key].astype(ml_dtypes.bfloat16), err_msg=str(key))
    _, _, inferred = ck.load_checkpoint_dir(path, None)
    assert (inferred.name, inferred.instruction_tuned) == ("gemma-2-tiny-it", True)


def test_registry_load_model_reads_checkpoint_dirs(hf_dirs, kaggle_dirs):
    for path in (hf_dirs["gemma3"], kaggle_dirs["gemma2"]):
        loaded = load_model(str(path))
        # recorded relative to the working directory, never as this machine's absolute path
        assert not Path(loaded.source).is_absolute()
        assert (Path.cwd() / loaded.source).resolve() == Path(path).resolve()
        assert forward(loaded.model, fx.sample_ids(5)).shape == (5, fx.VOCAB)


# ------------------------------------------------------------------ Kaggle Flax / Orbax
def expected_from_kaggle(raw: dict, family: str) -> dict:
    """The documented Kaggle -> Tunix transformation, written out independently."""
    out = {}
    for module, leaves in raw.items():
        parts = module.split("/")[1:]
        (leaf, value), = leaves.items()
        if parts[0] in ("embedder", "final_norm"):
            out[(parts[0], leaf)] = value
            continue
        layer, rest = ("layers", int(parts[0].removeprefix("layer_"))), parts[1:]
        if rest == ["mlp", "gating_einsum"]:  # Gemma 2: (2, D, F); Gemma 3: (2, F, D)
            gating = value if family == "gemma2" else value.transpose(0, 2, 1)
            out[(*layer, "mlp", "gate_proj", "kernel")] = gating[0]
            out[(*layer, "mlp", "up_proj", "kernel")] = gating[1]
        elif rest == ["mlp", "linear"]:
            out[(*layer, "mlp", "down_proj", "kernel")] = value
        elif rest == ["post_attention_norm"] and family == "gemma2":
            out[(*layer, "post_attn_norm", leaf)] = value
        else:
            out[(*layer, *rest, leaf)] = value
    return out


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_kaggle_checkpoint_loads_every_parameter(family, kaggle_raw, kaggle_dirs):
    model, tokenizer, spec = ck.load_checkpoint_dir(kaggle_dirs[family], None)
    assert (spec.name, spec.family, spec.instruction_tuned) == (f"{family}-tiny-it", family, True)
    expected = expected_from_kaggle(kaggle_raw[family], family)
    assert_same_params(flat_params(model), expected)
    config = model.config
    assert (config.num_layers, config.embed_dim, config.hidden_dim, config.num_embed) == (
        2, 32, 64, fx.VOCAB)
    if family == "gemma2":  # attention settings of the gemma2_2b preset
        assert (config.attn_logits_soft_cap, config.final_logit_softcap) == (50.0, 30.0)
        assert config.sliding_window_size == 4096
    else:
        assert config.sliding_window_size == 512
    ids = fx.sample_ids()
    direct = build_model(family, config, expected)
    np.testing.assert_allclose(forward(model, ids), forward(direct, ids), rtol=0, atol=1e-6)
    assert tokenizer.encode("ab") == [263, 264]


def test_kaggle_sharded_checkpoint_restores_on_another_topology(kaggle_raw, tmp_path):
    """Kaggle releases carry the sharding they were saved with; a plain Orbax restore on
    another device count fails ("Topology mismatch"), ours restores into host memory."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        import jax, numpy as np, orbax.checkpoint as ocp
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from tests import fixtures_checkpoints as fx
        mesh = Mesh(np.array(jax.devices()), ("x",))
        raw = fx.kaggle_params("gemma2", 7, heads=4, kv_heads=2)
        tree = jax.tree.map(lambda a: jax.device_put(
            a, NamedSharding(mesh, P("x") if a.shape[0] % 4 == 0 else P())), raw)
        ocp.PyTreeCheckpointer().save({str(tmp_path / "gemma2-sharded")!r}, tree)
        """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120)
    (tmp_path / "tokenizer.model").write_bytes(fx.tokenizer_proto())
    model, _, _ = ck.load_checkpoint_dir(tmp_path, None)
    assert_same_params(flat_params(model), expected_from_kaggle(kaggle_raw["gemma2"], "gemma2"))


# ------------------------------------------------------------------ errors
def test_empty_dir_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="not a checkpoint we can read") as info:
        ck.load_checkpoint_dir(tmp_path, None)
    assert "config.json + *.safetensors" in str(info.value)
    assert "Orbax" in str(info.value)


def test_config_without_safetensors_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(fx.GEMMA2_CONFIG))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"no \*\.safetensors.*\.bin"):
        ck.detect_format(tmp_path)


def test_unsupported_model_type(tmp_path):
    config, seed = fx.GOLDEN_MODELS["gemma2"]
    fx.write_hf_checkpoint(tmp_path, {**config, "model_type": "llama"}, fx.hf_tensors(config, 0))
    with pytest.raises(ModelLoadError, match="unsupported model_type 'llama'.*gemma2"):
        ck.load_checkpoint_dir(tmp_path, None)


@pytest.mark.parametrize(
    ("change", "message"),
    [({"query_pre_attn_scalar": 144}, "query_pre_attn_scalar=144"),
     ({"rope_theta": 500000.0}, "RoPE"),
     ({"rms_norm_eps": 1e-5}, "rms_norm_eps"),
     ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "RoPE type 'yarn'")],
)
def test_settings_tunix_cannot_express_are_refused(change, message, tmp_path):
    config, _ = fx.GOLDEN_MODELS["gemma2"]
    fx.write_hf_checkpoint(tmp_path, {**config, **change}, fx.hf_tensors(config, 0))
    with pytest.raises(ModelLoadError, match=message):
        ck.load_checkpoint_dir(tmp_path, None)


def test_gemma3_other_attention_pattern_is_refused(tmp_path):
    config, _ = fx.GOLDEN_MODELS["gemma3"]
    fx.write_hf_checkpoint(tmp_path, {**config, "sliding_window_pattern": 2},
                           fx.hf_tensors(config, 0))
    with pytest.raises(ModelLoadError, match="5 local then 1 global"):
        ck.load_checkpoint_dir(tmp_path, None)


def test_missing_tokenizer(tmp_path, kaggle_raw):
    config, _ = fx.GOLDEN_MODELS["gemma2"]
    fx.write_hf_checkpoint(tmp_path / "hf", config, fx.hf_tensors(config, 0), tokenizer=False)
    with pytest.raises(ModelLoadError, match="no SentencePiece tokenizer.model found"):
        ck.load_checkpoint_dir(tmp_path / "hf", None)
    fx.write_kaggle_checkpoint(tmp_path / "kg", "ckpt", kaggle_raw["gemma2"], tokenizer=False)
    with pytest.raises(ModelLoadError, match="tokenizer.model"):
        ck.load_checkpoint_dir(tmp_path / "kg", None)


def test_wrong_hidden_size_names_the_tensor(tmp_path):
    config, _ = fx.GOLDEN_MODELS["gemma2"]
    fx.write_hf_checkpoint(tmp_path, {**config, "hidden_size": 48}, fx.hf_tensors(config, 0))
    with pytest.raises(ParameterMismatch) as info:
        ck.load_checkpoint_dir(tmp_path, None)
    message = str(info.value)
    assert "model.embed_tokens.weight" in message
    assert "(320, 32)" in message and "(320, 48)" in message


def test_missing_and_unexpected_tensors(tmp_path):
    config, _ = fx.GOLDEN_MODELS["gemma3"]
    tensors = fx.hf_tensors(config, 0)
    del tensors["model.layers.5.self_attn.k_norm.weight"]
    fx.write_hf_checkpoint(tmp_path / "missing", config, tensors)
    with pytest.raises(ParameterMismatch, match=r"lacks 1 tensors.*layers\.5\.self_attn\.k_norm"):
        ck.load_checkpoint_dir(tmp_path / "missing", None)
    tensors = fx.hf_tensors(config, 0)
    tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(64, np.float32)
    fx.write_hf_checkpoint(tmp_path / "extra", config, tensors)
    with pytest.raises(ParameterMismatch, match=r"unexpected tensor .*q_proj\.bias"):
        ck.load_checkpoint_dir(tmp_path / "extra", None)


def test_checkpoint_must_match_the_named_spec(hf_dirs, kaggle_dirs):
    with pytest.raises(ModelLoadError, match="gemma2-2b-it is a gemma2 model.*gemma3"):
        ck.load_checkpoint_dir(hf_dirs["gemma3"], REGISTRY["gemma2-2b-it"])
    with pytest.raises(ParameterMismatch, match=r"gemma2-2b-it: .*embed_dim=32 \(expected 2304\)"):
        ck.load_checkpoint_dir(kaggle_dirs["gemma2"], REGISTRY["gemma2-2b-it"])
    with pytest.raises(ParameterMismatch, match=r"gemma3-270m: num_layers=6 \(expected 18\)"):
        ck.load_checkpoint_dir(hf_dirs["gemma3"], REGISTRY["gemma3-270m"])
