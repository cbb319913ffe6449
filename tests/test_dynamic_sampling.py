"""DAPO's dynamic sampling: groups whose rewards are all equal (zero advantages) are
replaced by further prompts, within a budget of extra draws; resumes stay exact."""

from pathlib import Path

import numpy as np
import pytest

import bigthoughts.training.rollout as ro
from bigthoughts.config import ConfigError
from bigthoughts.data import Example
from bigthoughts.inference.contract import Generation
from bigthoughts.training.config import GRPOSection
from bigthoughts.training.rundir import config_differences


def fake_rollout(rewards_per_group: list[list[float]], start: int) -> ro.Rollout:
    """A rollout of len(rewards_per_group) questions toy-<start>..., G rewards each."""
    group = len(rewards_per_group[0])
    examples = tuple(Example(id=f"toy-{start + i}", question=f"q{start + i}", answer="#### 1",
                             gold="1") for i in range(len(rewards_per_group)))
    rewards = np.asarray([r for rows in rewards_per_group for r in rows], dtype=np.float64)
    gens = tuple(Generation(text=f"t{start + i // group}.{i % group}", token_ids=(1, 2),
                            logprobs=(-0.5, -0.5), finish_reason="stop", prompt_tokens=3,
                            temperature=1.0) for i in range(len(rewards)))
    return ro.Rollout(examples=examples, prompts=tuple(e.question for e in examples),
                      generations=gens, rewards=rewards, per_fn={"r": rewards},
                      advantages=np.asarray(
                          ro.grpo_loss.group_advantages(rewards, group)), seconds=1.0)


class Stream:
    """draw(n, index) over a fixed list of groups' rewards, recording each call."""

    def __init__(self, groups: list[list[float]]):
        self.groups, self.position, self.calls = groups, 0, []

    def __call__(self, n: int, index: int) -> ro.Rollout:
        self.calls.append((n, index))
        chunk = self.groups[self.position:self.position + n]
        out = fake_rollout(chunk, self.position)
        self.position += n
        return out


FLAT, MIXED = [2.0, 2.0, 2.0, 2.0], [2.0, 27.0, 2.0, 2.0]


def test_informative_groups_are_those_whose_rewards_differ():
    r = fake_rollout([FLAT, MIXED, [0.0, 0.0, 0.0, 1e-12], [-15.0, 2.0, 2.0, 2.0]], 0)
    assert ro.informative(r).tolist() == [False, True, False, True]


def test_gather_replaces_flat_groups_within_the_extra_budget():
    stream = Stream([FLAT, MIXED, FLAT, FLAT, MIXED, MIXED, MIXED])
    drawn, kept = ro.gather(stream, groups=2, extra=4)
    # 2 drawn (1 informative) -> 1 more (flat) -> 1 more (flat) -> 1 more (informative)
    assert stream.calls == [(2, 0), (1, 1), (1, 2), (1, 3)]
    assert [e.id for e in drawn.examples] == ["toy-0", "toy-1", "toy-2", "toy-3", "toy-4"]
    assert kept == [1, 4]
    batch = ro.concat([drawn], kept)
    assert [e.id for e in batch.examples] == ["toy-1", "toy-4"]
    assert batch.rewards.tolist() == MIXED + MIXED
    assert [g.text for g in batch.generations][:2] == ["t1.0", "t1.1"]
    assert batch.seconds == 4.0  # every draw's sampling time counts
    rows = ro.sample_rows(drawn, kept)
    assert len(rows) == 20 and sum(r["trained"] for r in rows) == 8
    assert {r["example"] for r in rows if r["trained"]} == {"toy-1", "toy-4"}


def test_gather_tops_up_with_flat_groups_when_the_budget_runs_out():
    stream = Stream([FLAT, FLAT, FLAT, MIXED, MIXED])
    drawn, kept = ro.gather(stream, groups=2, extra=1)
    assert stream.calls == [(2, 0), (1, 1)]
    assert kept == [0, 1]  # nothing informative: the first two, as without the option
    stream = Stream([FLAT, MIXED, FLAT, MIXED])
    drawn, kept = ro.gather(stream, groups=3, extra=1)
    assert stream.calls == [(3, 0), (1, 1)] and kept == [0, 1, 3]


def test_without_extra_draws_gather_is_the_plain_step():
    stream = Stream([FLAT, FLAT, MIXED])
    drawn, kept = ro.gather(stream, groups=3, extra=0)
    assert stream.calls == [(3, 0)] and kept == [0, 1, 2]
    assert ro.sample_rows(drawn)[0] == {"example": "toy-0", "text": "t0.0", "reward": 2.0}


def test_step_seeds_keep_the_old_first_draw_and_differ_after():
    assert ro.step_seed(3, 7) == 3 * 1_000_003 + 7
    seeds = {ro.step_seed(3, 7, d) for d in range(1, 6)} | {ro.step_seed(3, 8, 1)}
    assert len(seeds) == 6 and ro.step_seed(3, 7, 2) == ro.step_seed(3, 7, 2)


def test_the_option_is_validated_and_older_runs_resume_without_it():
    with pytest.raises(ValueError, match="dynamic_sampling must be >= 0"):
        GRPOSection(dynamic_sampling=-1)
    saved = {"grpo": {"beta": 0.04}, "seed": 0}
    assert config_differences(saved, {"grpo": {"beta": 0.04, "dynamic_sampling": 0},
                                      "seed": 0}) == []
    [diff] = config_differences(saved, {"grpo": {"beta": 0.04, "dynamic_sampling": 8},
                                        "seed": 0})
    assert diff == "grpo.dynamic_sampling: 0 (saved) != 8 (now)"


def test_the_yaml_key_is_read_and_a_bad_value_is_a_config_error(tmp_path: Path):
    from bigthoughts.training.config import load_train_config

    path = tmp_path / "c.yaml"
    path.write_text("grpo:\n  dynamic_sampling: 6\n")
    assert load_train_config(path).grpo.dynamic_sampling == 6
    path.write_text("grpo:\n  dynamic_sampling: -2\n")
    with pytest.raises(ConfigError, match="dynamic_sampling"):
        load_train_config(path)


def odd_gold_only(prompts, completions, answer, **kwargs):
    """Toy reward: the lowercase share for odd golds; even golds give every completion 0
    (a group with no signal, as a question the model never solves)."""
    return [0.0 if int(a) % 2 == 0 else sum("a" <= ch <= "z" for ch in c) / max(1, len(c))
            for c, a in zip(completions, answer, strict=True)]


def toy(out: Path, **kw):
    from bigthoughts.training import GRPOTrainer
    from tests.train_toy import toy_setup

    config, examples, loaded = toy_setup(str(out), dynamic_sampling=6, **kw)
    out.mkdir(parents=True, exist_ok=True)
    return GRPOTrainer(config, out, examples=examples, loaded=loaded,
                       reward_fns=[odd_gold_only])


def test_the_trainer_trains_only_on_informative_groups_and_resumes_exactly(tmp_path):
    import jax

    straight = toy(tmp_path / "straight", max_steps=3)
    records = [straight.train_step() for _ in range(3)]
    for rec in records:
        assert len(rec["examples"]) == 2  # prompts_per_step
        assert all(int(e.split("-")[1]) % 2 == 1 for e in rec["examples"]), rec
        assert all(int(e.split("-")[1]) % 2 == 0 for e in rec["skipped"]), rec
        assert rec["groups_drawn"] == 2 + len(rec["skipped"]) <= 2 + 6
        assert rec["groups_informative"] == 2
    assert sum(len(r["skipped"]) for r in records) > 0
    straight.save()
    # one step, a new trainer from the checkpoint, two more: the same weights and draws
    relay = toy(tmp_path / "relay", max_steps=3)
    relay.train_step()
    relay.save()
    relay.close()
    resumed = toy(tmp_path / "relay", max_steps=3)
    assert resumed.step == 1
    later = [resumed.train_step() for _ in range(2)]
    assert [r["examples"] for r in later] == [r["examples"] for r in records[1:]]
    assert [r["skipped"] for r in later] == [r["skipped"] for r in records[1:]]
    for a, b in zip(jax.tree_util.tree_leaves(straight.lora),
                    jax.tree_util.tree_leaves(resumed.lora), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
