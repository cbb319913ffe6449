"""A stage that starts from an adapter continues its LoRA (model.adapter_mode=continue):
one adapter from the base to the result, and GRPO's KL reference is the starting policy."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigthoughts.models.adapter import AdapterError, read_adapter, with_adapter
from bigthoughts.models.lora import LoraSection
from bigthoughts.training import grpo_loss as grpo
from bigthoughts.training.adapter import check_adapter_path, load_starting_model
from bigthoughts.training.config import ModelSection
from tests.test_sft import run, toy_sft
from tests.tiny import assert_same_params
from tests.train_toy import lowercase_share, toy_loaded, toy_setup


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory):
    """A trained (non-zero) rank-4 adapter of the tiny model."""
    out = tmp_path_factory.mktemp("sft")
    stage = toy_sft(out / "run", max_steps=4)
    run(stage, 4)
    stage = toy_sft(out / "run", max_steps=4)
    stage.export(out / "export")
    return out / "export" / "adapter.safetensors"


def _logps(model, batch, group):
    return np.asarray(grpo.completion_logps(model, batch["pt"], batch["pv"], batch["ct"], group))


def _batch(group: int = 2):
    rng = np.random.default_rng(1)
    return {"pt": jnp.asarray(rng.integers(3, 200, (2, 8))), "pv": jnp.ones((2, 8), bool),
            "ct": jnp.asarray(rng.integers(3, 200, (2 * group, 6)))}


def test_continued_sft_starts_at_the_adapter_and_exports_one_adapter(sft_adapter, tmp_path):
    from flax import nnx

    from bigthoughts.training.sft import SFTStage

    arrays, _, _ = read_adapter(sft_adapter)
    fresh = toy_sft(tmp_path / "fresh", max_steps=4)
    (tmp_path / "cont").mkdir()
    stage = SFTStage(fresh.config, tmp_path / "cont", train=fresh.train,
                     validation=fresh.validation, held_out=fresh.held_out,
                     loaded=toy_loaded(), lora_init=arrays)
    merged = with_adapter(toy_loaded(), sft_adapter)
    batch = _batch()
    start = nnx.merge(stage.graphdef, stage.params, stage.frozen)
    np.testing.assert_allclose(_logps(start, batch, 2), _logps(merged.model, batch, 2),
                               atol=1e-4)
    assert stage.validation_loss() < fresh.validation_loss()  # it starts trained
    run(stage, 2)
    stage = SFTStage(fresh.config, tmp_path / "cont", train=fresh.train,
                     validation=fresh.validation, held_out=fresh.held_out,
                     loaded=toy_loaded(), lora_init=arrays)  # resumed at step 2
    assert stage.step == 2
    stage.export(tmp_path / "export")
    trained = nnx.merge(stage.graphdef, stage.params, stage.frozen)
    alone = with_adapter(toy_loaded(), tmp_path / "export" / "adapter.safetensors").model
    want, got = _logps(trained, batch, 2), _logps(alone, batch, 2)
    moved = np.abs(want - _logps(merged.model, batch, 2)).max()
    assert moved > 0  # the two steps changed the model ...
    assert np.abs(got - want).max() < 0.05 * moved + 1e-3  # ... and one adapter holds it all


def test_continued_grpo_takes_the_adapter_as_its_kl_reference(sft_adapter, tmp_path):
    from flax import nnx

    from bigthoughts.training.grpo_trainer import GRPOTrainer

    config, examples, _ = toy_setup(str(tmp_path))
    config = dataclasses.replace(config, model=ModelSection(adapter=str(sft_adapter)))
    arrays, _, _ = read_adapter(sft_adapter)
    trainer = GRPOTrainer(config, tmp_path, examples=examples, loaded=toy_loaded(),
                          reward_fns=[lowercase_share], lora_init=arrays)
    merged = with_adapter(toy_loaded(), sft_adapter).model
    batch = _batch(4)
    args = (batch["pt"], batch["pv"], batch["ct"])
    want = _logps(merged, batch, 4)

    def ref():
        rb = grpo.RolloutBatch(prompt_tokens=args[0], prompt_valid=args[1],
                               completion_tokens=args[2],
                               completion_mask=jnp.ones((8, 6), bool),
                               advantages=jnp.zeros(8))
        return np.asarray(trainer._with_logps(rb).ref_logps)

    policy = np.asarray(trainer.programs.logps(trainer.lora, trainer.base, *args, group=4,
                                          lora_on=True))
    np.testing.assert_allclose(policy, want, atol=1e-4)  # the policy starts at the adapter
    np.testing.assert_allclose(ref(), want, atol=1e-4)  # and so does the reference (KL 0)
    for _ in range(2):
        trainer.train_step()
    now = np.asarray(trainer.programs.logps(trainer.lora, trainer.base, *args, group=4,
                                       lora_on=True))
    assert np.abs(now - want).max() > 1e-4  # the policy moved; the reference did not
    np.testing.assert_allclose(ref(), want, atol=1e-4)
    trainer.export(tmp_path / "export", hf=False)
    _, _, provenance = read_adapter(tmp_path / "export" / "adapter.safetensors")
    assert provenance["stage"] == "grpo" and provenance["continued"] == sft_adapter.name
    alone = with_adapter(toy_loaded(), tmp_path / "export" / "adapter.safetensors").model
    trained = nnx.merge(trainer.graphdef, trainer.lora, trainer.base)
    moved = np.abs(now - want).max()
    assert np.abs(_logps(alone, batch, 4) - _logps(trained, batch, 4)).max() < 0.05 * moved + 1e-3


def test_a_fresh_grpo_lora_keeps_the_base_as_reference(tmp_path):
    from bigthoughts.training.grpo_trainer import GRPOTrainer

    config, examples, loaded = toy_setup(str(tmp_path))
    trainer = GRPOTrainer(config, tmp_path, examples=examples, loaded=loaded,
                          reward_fns=[lowercase_share])
    assert trainer.ref_lora is None
    trainer.lora = jax.tree_util.tree_map(lambda x: x + 0.05, trainer.lora)  # moved policy
    batch = _batch(4)
    rb = grpo.RolloutBatch(prompt_tokens=batch["pt"], prompt_valid=batch["pv"],
                           completion_tokens=batch["ct"], completion_mask=jnp.ones((8, 6), bool),
                           advantages=jnp.zeros(8))
    np.testing.assert_allclose(np.asarray(trainer._with_logps(rb).ref_logps),
                               _logps(toy_loaded().model, batch, 4), atol=1e-4)


def test_continuing_needs_the_adapters_lora_shape(sft_adapter, monkeypatch):
    model = ModelSection(adapter=str(sft_adapter))
    check_adapter_path(model, LoraSection(rank=4, alpha=8.0))  # the adapter's own shape
    with pytest.raises(AdapterError, match=r"lora.rank=4.*adapter_mode=merge"):
        check_adapter_path(model, LoraSection(rank=8, alpha=8.0))
    check_adapter_path(dataclasses.replace(model, adapter_mode="merge"), LoraSection(rank=8))
    with pytest.raises(ValueError, match="adapter_mode"):
        ModelSection(adapter=str(sft_adapter), adapter_mode="stack")

    import bigthoughts.training.adapter as adapter_mod

    monkeypatch.setattr(adapter_mod, "load_model", lambda *a, **k: toy_loaded())
    loaded, init = load_starting_model(model, LoraSection(rank=4, alpha=8.0))
    assert init is not None and set(init) == set(read_adapter(sft_adapter)[0])
    assert loaded.source == "tiny"  # the base: the LoRA carries the adapter
    loaded, init = load_starting_model(model, None)  # full fine-tuning merges it
    assert init is None and "adapter.safetensors" in loaded.source


def test_an_adapter_is_named_by_content_so_evaluations_cannot_mix_two(sft_adapter, tmp_path):
    """Evaluation run directories fingerprint ``loaded.source``: a retrained adapter saved
    under the old name must not resume (and silently extend) the old adapter's run."""
    import shutil

    copy = tmp_path / "adapter.safetensors"
    shutil.copy(sft_adapter, copy)
    first = with_adapter(toy_loaded(), copy).source
    assert first.startswith("tiny + adapter.safetensors#sha256=")
    data = bytearray(copy.read_bytes())
    data[-1] ^= 1  # another adapter, same file name (a tensor byte, not the header)
    copy.write_bytes(bytes(data))
    assert with_adapter(toy_loaded(), copy).source != first


def test_folded_weights_are_cached_for_a_base_named_by_content(sft_adapter, tmp_path,
                                                               monkeypatch):
    """The second fold of the same adapter into the same base (named by its SHA-256)
    reads the cached weights instead of tracing the LoRA model, and gives the same
    model; a base known only by a path is never cached."""
    import dataclasses

    import bigthoughts.models.adapter as adapter_mod

    monkeypatch.setenv("BIGTHOUGHTS_CACHE", str(tmp_path / "cache"))
    base = dataclasses.replace(toy_loaded(), source="tiny.gguf#sha256=0123456789abcdef")
    first = with_adapter(base, sft_adapter)
    (cached,) = (tmp_path / "cache").glob("folded-*.safetensors")
    monkeypatch.setattr(adapter_mod, "apply_lora", lambda *a, **k: pytest.fail("traced"))
    second = with_adapter(base, sft_adapter)
    assert_same_params(first.model, second.model)
    assert second.source == first.source
    by_path = dataclasses.replace(toy_loaded(), source="some/dir")
    with pytest.raises(pytest.fail.Exception, match="traced"):
        with_adapter(by_path, sft_adapter)  # no cache: it must trace
    assert [cached] == list((tmp_path / "cache").glob("folded-*.safetensors"))
    monkeypatch.undo()  # the real apply_lora again; the same cache directory
    monkeypatch.setenv("BIGTHOUGHTS_CACHE", str(tmp_path / "cache"))
    cached.write_bytes(cached.read_bytes()[:-64])  # damaged (a kill mid-write): folded again
    third = with_adapter(base, sft_adapter)
    assert_same_params(first.model, third.model)
    assert cached.stat().st_size > 0 and with_adapter(base, sft_adapter).source == first.source
