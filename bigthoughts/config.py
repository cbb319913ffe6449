"""Typed configuration: frozen keyword-only dataclasses, YAML recipes and CLI overrides.

A recipe is a YAML file whose keys mirror a config dataclass; nested dataclass
fields are nested mappings. Command-line overrides are ``"a.b=value"`` strings whose
values are parsed as YAML (``vote.votes=8``, ``vote.temperatures=[0.3,0.7]``), then
everything is coerced to the annotated field types and validated by each class's
``__post_init__``. Unknown keys are errors, never silently ignored: a typo in a
recipe should stop a run before it spends an hour of accelerator time.

Example::

    cfg = load_yaml(VoteConfig, "recipe.yaml", ["votes=8", "strategy=adaptive"])

The helpers (:func:`from_dict`, :func:`load_yaml`, :func:`to_dict`) work for any
dataclass, so training and evaluation configs reuse them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bigthoughts.rewards import DEFAULT_WEIGHTS, check_weights

__all__ = [
    "ConfigError",
    "RewardConfig",
    "apply_overrides",
    "from_dict",
    "load_yaml",
    "to_dict",
]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file, mapping or override is invalid."""


@dataclass(frozen=True, kw_only=True)
class RewardConfig:
    """Weights of the GRPO reward terms (names from ``rewards.REWARD_FUNCTIONS``).

    The scalar reward r_i of completion o_i is ``sum(weight[name] * term[name](o_i))``;
    GRPO normalises r_i within each group of G completions into the advantage Â_i.
    """

    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    min_reasoning_words: int = 20

    def __post_init__(self) -> None:
        check_weights(self.weights)
        if self.min_reasoning_words < 0:
            raise ValueError(f"min_reasoning_words must be >= 0, got {self.min_reasoning_words}")
        # A private copy: later changes to the caller's dict cannot leak into the config.
        object.__setattr__(self, "weights", dict(self.weights))


_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0"})


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _fail(path: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")


def _coerce_scalar(tp: type, value: Any, path: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        word = value.strip().lower() if isinstance(value, str) else None
        if word in _TRUE_WORDS or word in _FALSE_WORDS:
            return word in _TRUE_WORDS
        raise _fail(path, tp, value)
    if isinstance(value, bool):
        raise _fail(path, tp, value)
    if tp is int:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                pass
        raise _fail(path, tp, value)
    if tp is float:
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise _fail(path, tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float):
            return str(value)
        raise _fail(path, tp, value)
    if tp is Path:
        if isinstance(value, str | Path):
            return Path(value)
        raise _fail(path, tp, value)
    return value


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """``value`` converted to the annotated type ``tp``; ConfigError naming ``path`` if not."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _fail(path, tp, value)
        return _from_dict(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(option, value, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: no type fits {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{path}: expected one of {list(args)}, got {value!r}")
    if origin is tuple:
        items = list(value) if isinstance(value, list | tuple) else [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(items))
        if args and len(args) != len(items):
            raise ConfigError(f"{path}: expected {len(args)} items, got {value!r}")
        if not args:
            return tuple(items)
        pairs = enumerate(zip(args, items, strict=True))
        return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in pairs)
    if origin is list:
        items = list(value) if isinstance(value, list | tuple) else [value]
        inner = args[0] if args else Any
        return [_coerce(inner, v, f"{path}[{i}]") for i, v in enumerate(items)]
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise _fail(path, "mapping", value)
        key_tp, val_tp = args if len(args) == 2 else (Any, Any)
        return {
            _coerce(key_tp, k, f"{path}.{k}"): _coerce(val_tp, v, f"{path}.{k}")
            for k, v in value.items()
        }
    if isinstance(tp, type):
        return _coerce_scalar(tp, value, path)
    return value


def _from_dict(cls: type[T], data: Mapping[str, Any], prefix: str) -> T:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or cls.__name__}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # unresolvable annotations: fall back to the raw ones
        hints = {name: f.type for name, f in fields.items()}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise ConfigError(
                f"unknown key {path!r} for {cls.__name__}; valid keys: {', '.join(fields)}"
            )
        kwargs[key] = _coerce(hints.get(key, Any), value, path)
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        where = f" in {prefix!r}" if prefix else ""
        raise ConfigError(f"missing required key(s) {', '.join(missing)}{where} for {cls.__name__}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"invalid {prefix or cls.__name__}: {err}") from err


def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build dataclass ``cls`` from a (nested) mapping, coercing values to field types.

    Coerces int/float/bool/str/Path scalars (``"3"`` -> 3, ``2`` -> 2.0, ``"yes"`` ->
    True), lists to tuples, nested mappings to nested dataclasses. Raises ConfigError
    for unknown keys (naming the key and the valid ones), missing required keys,
    values of the wrong type and values ``__post_init__`` rejects.
    """
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"from_dict needs a dataclass type, got {cls!r}")
    return _from_dict(cls, data, "")


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with ``"a.b=value"`` overrides applied (values parsed as YAML)."""
    result: dict[str, Any] = _deep_copy(data)
    for override in overrides:
        key, sep, raw = override.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"bad override {override!r}; expected key.path=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"bad value in override {override!r}: {err}") from err
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"override {override!r}: {where!r} is not a section")
            node = child
        node[parts[-1]] = value
    return result


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def _deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = _deep_copy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = _deep_copy(value) if isinstance(value, Mapping) else value
    return merged


def _defaults(cls: type) -> dict[str, Any]:
    """The default value of every field of ``cls`` that has one, as plain data."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            values[f.name] = to_dict(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = to_dict(f.default_factory())
    return values


def load_yaml(cls: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """Build ``cls`` from a YAML file (None: defaults only) plus ``"a.b=value"`` overrides.

    The file and the overrides are merged over the defaults at every depth, mappings
    included: ``weights.partial_format=1`` adds a reward term and keeps the default
    ones (set a weight to 0 to disable a term). :func:`from_dict` on its own is literal.
    """
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"load_yaml needs a dataclass type, got {cls!r}")
    data: Any = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as err:
            raise ConfigError(f"could not read config {path}: {err}") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"invalid YAML in {path}: {err}") from err
        if data is None:  # an empty file would silently run every default
            raise ConfigError(f"{path} is empty: a recipe needs at least one key (see "
                              f"configs/ for examples)")
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: the top level must be a mapping, got {data!r}")
    return from_dict(cls, apply_overrides(_deep_merge(_defaults(cls), data), overrides))


def to_dict(obj: Any) -> Any:
    """Plain YAML/JSON-ready data: dataclasses and mappings to dicts, tuples to lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
