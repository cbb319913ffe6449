"""The no-signal guards (``grpo.guard_truncated``, ``grpo.guard_patience``): warning lines
for steps that cannot teach anything, and a stop with its own exit status after too
many in a row, checkpoint saved and nothing exported."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest

from bigthoughts.config import ConfigError, load_yaml
from bigthoughts.inference.contract import Generation
from bigthoughts.training.config import TrainConfig
from bigthoughts.training.progress import Progress
from bigthoughts.training.rollout import Rollout, signal_warnings
from tests.conftest import REPO_ROOT


def _rollout(texts, rewards, reasons, group=2):
    gens = tuple(Generation(text=t, token_ids=(1, 2), logprobs=(0.0, 0.0), finish_reason=r,
                            prompt_tokens=3, temperature=1.0)
                 for t, r in zip(texts, reasons, strict=True))
    n = len(texts) // group
    return Rollout(examples=(None,) * n, prompts=("p",) * n, generations=gens,
                   rewards=np.asarray(rewards, float), per_fn={},
                   advantages=np.zeros(len(texts)), seconds=1.0)


def test_each_condition_is_named():
    fine, empty = signal_warnings(_rollout(["a", "b", "c", "d"], [1, 0, 0, 1],
                                           ["stop"] * 4), truncated_limit=0.5)
    assert fine == [] and not empty
    flat, empty = signal_warnings(_rollout(["a", "b", "c", "d"], [1, 1, 0, 0],
                                           ["length", "length", "length", "stop"]),
                                  truncated_limit=0.5)
    assert empty and len(flat) == 2
    assert "no group has reward spread" in flat[0] and "75% of the completions" in flat[1]
    same, empty = signal_warnings(_rollout(["x"] * 4, [1, 0, 1, 0], ["stop"] * 4),
                                  truncated_limit=1.0)
    assert empty and same == ["all 4 completions are the same text (the policy has "
                              "collapsed, or the temperature is 0)"]


def test_a_run_without_signal_stops_with_its_own_status(tmp_path):
    from bigthoughts.training import train
    from tests.train_toy import toy_setup

    config, examples, loaded = toy_setup(str(tmp_path / "run"), max_steps=6)
    config = dataclasses.replace(config, grpo=dataclasses.replace(
        config.grpo, guard_patience=2, guard_truncated=0.0))
    stream = io.StringIO()
    result = train(config, examples=examples, loaded=loaded,
                   reward_fns=[lambda prompts, completions, answer, **kw:
                               [1.0] * len(completions)],
                   progress=Progress(stream))
    assert result.stopped_no_signal and "guard_patience = 2" in result.stopped_no_signal
    assert result.step == 2 and result.exported is None
    assert (tmp_path / "run" / "checkpoints" / "step_000002").is_dir()
    lines = stream.getvalue().splitlines()
    assert sum("no group has reward spread" in x for x in lines) == 2
    assert any("hit max_new_tokens" in x for x in lines)  # limit 0: any cut completion


@pytest.mark.parametrize("override, message", [
    ("grpo.guard_truncated=1.5", "guard_truncated"),
    ("grpo.guard_patience=-1", "guard_patience")])
def test_bad_guard_settings_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_yaml(TrainConfig, REPO_ROOT / "configs" / "gemma3-270m-cpu.yaml", [override])
