"""A run directory's identity: what a rerun must share with the run it resumes.

Training (``config.json``) and evaluation (``run.json``) record what was asked when a
run starts; a rerun into the same directory compares its own record with the stored
one and is refused, naming each differing key with both values, unless they agree.

    >>> differences({"grpo": {"beta": 0.04}, "seed": 0}, {"grpo": {"beta": 0.0}, "seed": 0})
    ['grpo.beta: 0.04 (saved) != 0.0 (now)']
"""

from __future__ import annotations

import json
from collections.abc import Mapping

ABSENT = "(absent)"
WHOLE = ("rewards.weights",)  # mappings compared as one value, not key by key


def flatten(data: Mapping, prefix: str = "") -> dict:
    """``{"grpo": {"beta": 0.04}}`` -> ``{"grpo.beta": 0.04}`` (empty mappings and those
    named in ``WHOLE`` stay whole)."""
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and not name.startswith(WHOLE):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def differences(saved: Mapping, now: Mapping, *, defaults: Mapping = {}) -> list[str]:  # noqa: B006
    """``"key: saved (saved) != now (now)"`` for each flattened key whose values differ; a
    key one side lacks compares as its ``defaults`` value, else as ``"(absent)"``."""
    a, b = flatten(saved), flatten(now)

    def value(config: dict, key: str):
        return config.get(key, defaults.get(key, ABSENT))

    return [f"{k}: {json.dumps(value(a, k))} (saved) != {json.dumps(value(b, k))} (now)"
            for k in sorted(set(a) | set(b)) if value(a, k) != value(b, k)]
