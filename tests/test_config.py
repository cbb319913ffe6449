"""Tests for bigthoughts.config: validation, from_dict coercion, YAML + overrides, round trip."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from bigthoughts.config import (
    ConfigError,
    RewardConfig,
    apply_overrides,
    from_dict,
    load_yaml,
    to_dict,
)
from bigthoughts.inference.voting import VoteConfig
from bigthoughts.rewards import DEFAULT_WEIGHTS


@dataclass(frozen=True, kw_only=True)
class Inner:
    rate: float = 1e-5
    flag: bool = False
    name: str = "x"
    path: Path | None = None
    mode: Literal["a", "b"] = "a"


@dataclass(frozen=True, kw_only=True)
class Outer:
    steps: int
    inner: Inner = field(default_factory=Inner)
    vote: VoteConfig = field(default_factory=VoteConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    tags: list[str] = field(default_factory=list)
    pair: tuple[int, str] = (1, "a")


# --- the two config classes ------------------------------------------------------------


def test_defaults() -> None:
    reward, vote = RewardConfig(), VoteConfig()
    assert reward.weights == dict(DEFAULT_WEIGHTS) and reward.min_reasoning_words == 20
    assert (vote.votes, vote.temperatures, vote.strategy, vote.max_new_tokens) == (
        5,
        None,
        "majority",
        256,
    )
    with pytest.raises(TypeError):
        RewardConfig({"format": 1.0})  # type: ignore[misc]  # keyword-only
    with pytest.raises(dataclasses.FrozenInstanceError):
        vote.votes = 3  # type: ignore[misc]


def test_reward_config_copies_weights() -> None:
    weights = {"correctness": 25.0}
    cfg = RewardConfig(weights=weights)
    weights["correctness"] = 0.0
    assert cfg.weights == {"correctness": 25.0}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weights": {"formatt": 1.0}}, r"unknown reward name\(s\) 'formatt'; valid names: format"),
        ({"weights": {"format": float("inf")}}, "weights.format must be finite"),
        ({"weights": {"format": "2"}}, "weights.format must be a number"),
        ({"min_reasoning_words": -1}, "min_reasoning_words must be >= 0"),
    ],
)
def test_reward_config_validation(kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RewardConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"votes": 0}, "votes must be between 1 and 64, got 0"),
        ({"votes": 65}, "votes must be between 1 and 64, got 65"),
        ({"temperatures": ()}, "at least one temperature"),
        ({"temperatures": (0.5, -0.1)}, r"finite and >= 0, got \[-0.1\]"),
        ({"strategy": "best"}, "unknown vote strategy 'best'; valid: majority"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
    ],
)
def test_vote_config_validation(kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VoteConfig(**kwargs)


def test_vote_schedule_is_the_ladder_unless_temperatures_are_given() -> None:
    # hand-computed: 0.2 + 0.8 * i / (k - 1)
    assert VoteConfig().schedule() == (0.2, 0.4, 0.6, 0.8, 1.0)
    assert VoteConfig(votes=3).schedule() == (0.2, 0.6, 1.0)
    assert VoteConfig(votes=1).schedule() == (0.0,)
    assert VoteConfig(votes=7).schedule() == pytest.approx(abs=1e-6, expected=
        (0.2, 0.2 + 0.8 / 6, 0.2 + 1.6 / 6, 0.6, 0.2 + 3.2 / 6, 0.2 + 4.0 / 6, 1.0))
    # explicit temperatures are cycled
    assert VoteConfig(votes=2, temperatures=(0.7,)).schedule() == (0.7, 0.7)
    assert VoteConfig(votes=5, temperatures=(0.1, 0.9)).schedule() == (0.1, 0.9, 0.1, 0.9, 0.1)


# --- from_dict ---------------------------------------------------------------------------


def test_from_dict_coerces_nested_values() -> None:
    cfg = from_dict(
        Outer,
        {
            "steps": "10",
            "inner": {"rate": "3e-4", "flag": "yes", "path": "/tmp/x", "mode": "b", "name": 7},
            "vote": {"votes": 3.0, "temperatures": [0.5, 1]},
            "reward": {"weights": {"correctness": 10}},
            "tags": "solo",
            "pair": [2, "b"],
        },
    )
    assert cfg == Outer(
        steps=10,
        inner=Inner(rate=3e-4, flag=True, path=Path("/tmp/x"), mode="b", name="7"),
        vote=VoteConfig(votes=3, temperatures=(0.5, 1.0)),
        reward=RewardConfig(weights={"correctness": 10.0}),
        tags=["solo"],
        pair=(2, "b"),
    )
    assert type(cfg.steps) is int and type(cfg.vote.temperatures[1]) is float
    assert from_dict(Outer, {"steps": 1, "inner": {"path": None}}).inner.path is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"steps": 1, "stpes": 2}, r"unknown key 'stpes' for Outer; valid keys: steps, inner"),
        (
            {"steps": 1, "vote": {"vots": 3}},
            "unknown key 'vote.vots' for VoteConfig; valid keys: votes, temperatures, strategy",
        ),
        ({}, r"missing required key\(s\) steps for Outer"),
        ({"steps": "ten"}, "steps: expected int, got 'ten'"),
        ({"steps": True}, "steps: expected int, got True"),
        ({"steps": 1.5}, "steps: expected int, got 1.5"),
        ({"steps": 1, "inner": {"flag": "maybe"}}, "inner.flag: expected bool, got 'maybe'"),
        ({"steps": 1, "inner": {"rate": "fast"}}, "inner.rate: expected float"),
        ({"steps": 1, "inner": {"name": True}}, "inner.name: expected str"),
        ({"steps": 1, "inner": {"mode": "c"}}, r"inner.mode: expected one of \['a', 'b'\]"),
        ({"steps": 1, "inner": 5}, "inner: expected Inner, got 5"),
        ({"steps": 1, "pair": [1, "a", 3]}, "pair: expected 2 items"),
        (
            {"steps": 1, "vote": {"temperatures": ["hot"]}},
            r"vote.temperatures\[0\]: expected float",
        ),
        ({"steps": 1, "reward": {"weights": [1, 2]}}, "reward.weights: expected mapping"),
        ({"steps": 1, "vote": {"votes": 0}}, "invalid vote: votes must be between 1 and 64"),
    ],
)
def test_from_dict_errors(data, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data)


def test_config_error_is_a_value_error_and_from_dict_needs_a_dataclass() -> None:
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(TypeError, match="dataclass type"):
        from_dict(dict, {})  # type: ignore[type-var]
    with pytest.raises(ConfigError, match="expected a mapping"):
        from_dict(VoteConfig, [("votes", 3)])  # type: ignore[arg-type]


# --- YAML and overrides -------------------------------------------------------------------


def test_apply_overrides() -> None:
    base = {"vote": {"votes": 5}, "steps": 1}
    result = apply_overrides(
        base,
        [
            "vote.votes=7",
            "vote.temperatures=[0.1, 0.9]",
            "inner.flag=true",
            "steps=2",
            "inner.name= spaced ",
        ],
    )
    assert result == {
        "vote": {"votes": 7, "temperatures": [0.1, 0.9]},
        "steps": 2,
        "inner": {"flag": True, "name": "spaced"},
    }
    assert base == {"vote": {"votes": 5}, "steps": 1}  # input untouched


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("novalue", "bad override 'novalue'; expected key.path=value"),
        ("=3", "bad override"),
        ("vote..votes=3", "bad override"),
        ("vote.votes.x=1", "'vote.votes' is not a section"),
        ("steps=[1", "bad value in override"),
    ],
)
def test_apply_overrides_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        apply_overrides({"vote": {"votes": 5}}, [override])


def test_load_yaml_with_overrides(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "steps: 100\n"
        "inner:\n  rate: 3e-4\n  mode: b\n"
        "vote:\n  votes: 8\n  strategy: adaptive\n"
        "reward:\n  weights:\n    correctness: 20\n",
        encoding="utf-8",
    )
    cfg = load_yaml(
        Outer,
        recipe,
        [
            "vote.votes=3",
            "reward.weights.partial_format=1",
            "reward.weights.format=0",
            "inner.flag=yes",
        ],
    )
    assert cfg.steps == 100
    assert cfg.inner == Inner(rate=3e-4, mode="b", flag=True)
    assert cfg.vote == VoteConfig(votes=3, strategy="adaptive")
    # mappings merge over their defaults: untouched default terms stay
    assert cfg.reward.weights == {
        "format": 0.0,
        "correctness": 20.0,
        "broken_tags": -15.0,
        "short_reasoning": -5.0,
        "partial_format": 1.0,
    }


def test_load_yaml_defaults_and_an_empty_file_refused(tmp_path: Path) -> None:
    assert load_yaml(RewardConfig, None) == RewardConfig()
    assert load_yaml(VoteConfig, None, ["votes=9"]) == VoteConfig(votes=9)
    empty = tmp_path / "empty.yaml"
    for text in ("", "# only a comment\n"):  # it would silently run every default
        empty.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError, match="is empty: a recipe needs at least one key"):
            load_yaml(VoteConfig, empty, ["votes=9"])


def test_load_yaml_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="could not read config"):
        load_yaml(VoteConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("votes: [1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_yaml(VoteConfig, bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_yaml(VoteConfig, listed)
    with pytest.raises(ConfigError, match="unknown key 'vots'"):
        load_yaml(VoteConfig, None, ["vots=3"])


def test_to_dict_round_trips_through_yaml() -> None:
    cfg = Outer(
        steps=3,
        inner=Inner(path=Path("/data"), flag=True),
        tags=["a"],
        vote=VoteConfig(votes=2, temperatures=(0.3, 0.9)),
    )
    plain = to_dict(cfg)
    assert plain["inner"]["path"] == "/data"
    assert plain["vote"]["temperatures"] == [0.3, 0.9]
    assert plain["pair"] == [1, "a"]
    assert from_dict(Outer, yaml.safe_load(yaml.safe_dump(plain))) == cfg


@pytest.mark.parametrize("override", ["keep_checkpoints=0", "eval_every=-1", "eval_examples=0"])
@pytest.mark.parametrize("stage", ["sft", "train"])
def test_both_stages_refuse_the_same_run_fields(stage, override):
    from bigthoughts.training import load_sft_config, load_train_config

    load = load_sft_config if stage == "sft" else load_train_config
    with pytest.raises(ConfigError, match="keep_checkpoints >= 1, eval_every >= 0"):
        load(None, [override])
