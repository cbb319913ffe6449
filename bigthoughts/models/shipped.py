"""The model `ask`, `eval`, `generate` and `serve` use when no model is named.

bigthoughts ships one trained LoRA adapter inside the package (``bigthoughts/shipped/``):
the embedded Gemma 3 270M base plus that adapter is the default model. Its manifest
(``gemma3-270m-gsm8k.json``) names the adapter file, its SHA-256, the prompt style and
calculator setting it was trained and evaluated with, and the evaluation that justified
shipping it. ``--model gemma3-270m`` (alias ``gemma3-270m-base``) is the raw base.

    >>> shipped = shipped_default()          # None when no adapter is shipped
    >>> shipped.adapter_path(), shipped.style, shipped.calculator   # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bigthoughts.models.spec import ModelLoadError

__all__ = ["BASE_ALIAS", "SHIPPED_DIR", "ShippedModel", "shipped_default"]

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "shipped"
MANIFEST = "gemma3-270m-gsm8k.json"
BASE_ALIAS = "gemma3-270m-base"  # the raw embedded base, without the shipped adapter


@dataclass(frozen=True)
class ShippedModel:
    """A LoRA adapter shipped in the package, and how it is meant to be prompted."""

    name: str
    base: str
    adapter: str
    sha256: str
    style: str
    calculator: bool
    summary: dict[str, Any] = field(default_factory=dict)
    root: Path = SHIPPED_DIR

    def adapter_path(self) -> Path:
        """The adapter file, checked against the manifest's SHA-256 (a damaged or
        replaced file is refused rather than answering as the shipped model)."""
        from bigthoughts.files import file_sha256

        path = self.root / self.adapter
        if not path.is_file():
            raise ModelLoadError(f"the shipped adapter {self.adapter} is missing from the "
                                 f"package; reinstall bigthoughts or pass --model {self.base}")
        if file_sha256(path) != self.sha256:
            raise ModelLoadError(f"the shipped adapter {self.adapter} does not match its "
                                 f"manifest's SHA-256; reinstall bigthoughts or pass "
                                 f"--model {self.base}")
        return path


def shipped_default(directory: Path | None = None) -> ShippedModel | None:
    """The shipped default model, or None when the package ships no adapter."""
    root = directory or SHIPPED_DIR
    manifest = root / MANIFEST
    if not manifest.is_file():
        return None
    try:
        raw = json.loads(manifest.read_text(encoding="utf-8"))
        return ShippedModel(name=raw["name"], base=raw["base"], adapter=raw["adapter"],
                            sha256=raw["sha256"], style=raw["style"],
                            calculator=bool(raw["calculator"]), summary=raw.get("summary", {}),
                            root=root)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(f"the shipped model's manifest {MANIFEST} is unreadable "
                             f"({err}); reinstall bigthoughts") from err
