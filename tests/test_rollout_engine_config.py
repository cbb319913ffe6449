"""grpo.rollout_engine: validated in the recipe, refused before the model loads when the
model or adapter mode cannot sample on llama.cpp, resumable across a change."""

from __future__ import annotations

import pytest

from bigthoughts.config import ConfigError
from bigthoughts.models.resolve import llamacpp_available
from bigthoughts.training.config import load_train_config
from bigthoughts.training.llamacpp_rollouts import rollout_gguf
from bigthoughts.training.rundir import config_differences

RECIPE = "configs/gemma3-270m-grpo.yaml"
has_llamacpp = llamacpp_available()


def test_unknown_engine_is_a_config_error():
    with pytest.raises(ConfigError, match="rollout_engine must be jax or llama.cpp"):
        load_train_config(RECIPE, ["grpo.rollout_engine=vllm"])


@pytest.mark.skipif(not has_llamacpp, reason="needs the llamacpp extra")
@pytest.mark.parametrize("overrides, message", [
    (["model.adapter_mode=merge"], "adapter_mode=continue"),
    (["model.name=gemma2-2b-it", "model.path=/ckpt/gemma2", "model.adapter=null"],
     "needs a GGUF model"),
])
def test_models_llamacpp_cannot_sample_are_refused(overrides, message):
    config = load_train_config(RECIPE, ["grpo.rollout_engine=llama.cpp", *overrides])
    with pytest.raises(ConfigError, match=message):
        rollout_gguf(config)


@pytest.mark.skipif(not has_llamacpp, reason="needs the llamacpp extra")
def test_the_embedded_model_samples_on_llamacpp():
    config = load_train_config(RECIPE, ["grpo.rollout_engine=llama.cpp"])
    assert rollout_gguf(config).suffix == ".gguf"


def test_a_relay_may_change_the_rollout_engine():
    from bigthoughts.config import to_dict

    jax_run = to_dict(load_train_config(RECIPE, ["grpo.rollout_engine=jax"]))
    cpp_run = to_dict(load_train_config(RECIPE, ["grpo.rollout_engine=llama.cpp"]))
    assert jax_run != cpp_run and config_differences(jax_run, cpp_run) == []
    beta = to_dict(load_train_config(RECIPE, ["grpo.rollout_engine=jax", "grpo.beta=0.1"]))
    assert config_differences(jax_run, beta)  # a recipe change still differs
