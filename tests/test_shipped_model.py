"""The shipped default model: manifest checks and how the CLI settles which model answers."""

from __future__ import annotations

import hashlib
import json

import pytest

from bigthoughts import cli
from bigthoughts.models import shipped as shipped_mod
from bigthoughts.models.registry import DEFAULT_MODEL
from bigthoughts.models.resolve import ModelChoice, settle
from bigthoughts.models.shipped import BASE_ALIAS, MANIFEST, shipped_default
from bigthoughts.models.spec import ModelLoadError


def _ship(root, *, data=b"adapter bytes", sha=None, **fields):
    (root / "a.safetensors").write_bytes(data)
    manifest = {"name": "gemma3-270m-gsm8k", "base": DEFAULT_MODEL, "adapter": "a.safetensors",
                "sha256": sha or hashlib.sha256(data).hexdigest(), "style": "zeroshot",
                "calculator": True, "summary": {"accuracy": 0.05}, **fields}
    (root / MANIFEST).write_text(json.dumps(manifest))
    return root


@pytest.fixture
def shipped_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(shipped_mod, "SHIPPED_DIR", _ship(tmp_path))
    return tmp_path


def _args(**kw):
    return ModelChoice(**kw)


def test_no_manifest_means_no_shipped_model(tmp_path):
    assert shipped_default(tmp_path) is None


def test_manifest_is_read_and_the_adapter_checked(tmp_path):
    ship = shipped_default(_ship(tmp_path))
    assert (ship.name, ship.style, ship.calculator) == ("gemma3-270m-gsm8k", "zeroshot", True)
    assert ship.adapter_path() == tmp_path / "a.safetensors"
    (tmp_path / "a.safetensors").write_bytes(b"another file")
    with pytest.raises(ModelLoadError, match="does not match its manifest"):
        ship.adapter_path()
    (tmp_path / "a.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="missing from the package"):
        ship.adapter_path()


@pytest.mark.parametrize("text", ["{not json", json.dumps({"name": "x"}), "[]"])
def test_a_broken_manifest_is_one_clear_error(tmp_path, text):
    (tmp_path / MANIFEST).write_text(text)
    with pytest.raises(ModelLoadError, match="manifest .* is unreadable"):
        shipped_default(tmp_path)


def test_no_model_named_gives_the_shipped_adapter_with_its_settings(shipped_dir):
    args = _args()
    args = settle(args)
    assert args.adapter == str(shipped_dir / "a.safetensors")
    assert (args.model, args.shipped, args.style, args.calculator) == (
        None, "gemma3-270m-gsm8k", "zeroshot", True)


def test_flags_still_win_over_the_shipped_settings(shipped_dir):
    args = _args(style="fewshot", calculator=False)
    args = settle(args)
    assert args.adapter is not None
    assert (args.style, args.calculator) == ("fewshot", False)


def test_the_shipped_name_selects_it_explicitly(shipped_dir):
    args = _args(model="gemma3-270m-gsm8k")
    args = settle(args)
    assert args.model is None and args.shipped == "gemma3-270m-gsm8k"
    with pytest.raises(ModelLoadError, match=BASE_ALIAS):
        settle(_args(model="gemma3-270m-gsm8k", adapter="x.safetensors"))


@pytest.mark.parametrize("kw", [{"model": BASE_ALIAS}, {"model": DEFAULT_MODEL},
                                {"adapter": "mine.safetensors"}, {"lora": "mine.gguf"},
                                {"checkpoint": "runs/x/export"}, {"model": "other.gguf"}])
def test_naming_anything_else_leaves_the_shipped_adapter_out(shipped_dir, kw):
    args = _args(**kw)
    args = settle(args)
    assert args.shipped is None
    assert args.adapter == kw.get("adapter")
    assert args.style is None and args.calculator is False
    if kw.get("model") == BASE_ALIAS:
        assert args.model == DEFAULT_MODEL


def test_without_a_shipped_adapter_the_default_is_the_base(tmp_path, monkeypatch):
    monkeypatch.setattr(shipped_mod, "SHIPPED_DIR", tmp_path)
    args = _args()
    args = settle(args)
    assert (args.model, args.adapter, args.shipped, args.calculator) == (None, None, None, False)


def test_a_damaged_shipped_adapter_is_a_one_line_cli_error(shipped_dir, capsys):
    (shipped_dir / "a.safetensors").write_bytes(b"tampered")
    code = cli.main(["ask", "What is 2 + 2?"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE
    assert err.startswith("error: the shipped adapter a.safetensors does not match")
    assert f"--model {DEFAULT_MODEL}" in err


def test_the_committed_shipped_model_matches_its_adapter_and_its_evaluations():
    """The package ships the stage-4 adapter: the manifest's hash is the file's, and each
    evaluation it cites is a committed run whose numbers and paired test it restates."""
    from pathlib import Path

    from bigthoughts.evaluation.metrics import mcnemar

    root = Path(cli.__file__).resolve().parents[1]
    found = shipped_default()
    assert found is not None and found.name == "gemma3-270m-gsm8k"
    data = found.adapter_path().read_bytes()
    manifest = json.loads((shipped_mod.SHIPPED_DIR / MANIFEST).read_text())
    assert hashlib.sha256(data).hexdigest() == manifest["sha256"]
    assert (root / manifest["trained_from"]).read_bytes() == data
    evaluations = manifest["summary"]["evaluations"]
    assert {e["calculator"] for e in evaluations} == {True, False}

    def outcomes(run: str) -> dict[str, bool]:
        lines = (root / run / "results.jsonl").read_text().splitlines()
        return {r["id"]: bool(r["correct"]) for r in map(json.loads, lines)}

    for e in evaluations:
        summary = json.loads((root / e["run"] / "summary.json").read_text())
        assert (summary["n"], summary["correct"]) == (e["questions"], e["correct"]) == \
            (1319, sum(outcomes(e["run"]).values()))
        test = mcnemar(outcomes(e["vs_base"]["base_run"]), outcomes(e["run"]))
        assert (test.b01, test.b10) == (e["vs_base"]["only_this_right"],
                                        e["vs_base"]["only_base_right"])
        assert test.p_value == pytest.approx(e["vs_base"]["mcnemar_p"])
