"""bigthoughts.files: atomic writes, JSON lines with a torn tail, hashes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from bigthoughts.files import (
    JsonlError,
    append_jsonl,
    atomic_output,
    atomic_write_json,
    atomic_write_text,
    file_sha256,
    read_jsonl,
)


def test_atomic_writes_replace_and_leave_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    atomic_write_text(target, "näw\n")
    assert target.read_bytes() == "näw\n".encode()
    atomic_write_json(tmp_path / "b.json", {"x": [1, 2]}, indent=1)
    assert (tmp_path / "b.json").read_text() == '{\n "x": [\n  1,\n  2\n ]\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "keep.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"v": object()})  # not JSON-serialisable
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]


def test_read_jsonl_ignores_and_repairs_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    good = '{"id": 1}\n{"id": 2}\n'
    path.write_text(good + '{"id": 3, "te')
    assert read_jsonl(path) == [{"id": 1}, {"id": 2}]
    assert path.read_text().endswith('"te')  # untouched without repair
    assert read_jsonl(path, repair=True) == [{"id": 1}, {"id": 2}]
    assert path.read_text() == good
    with path.open("a") as fh:  # the next append starts on a fresh line
        append_jsonl(fh, [{"id": 3}])
    assert read_jsonl(path) == [{"id": 1}, {"id": 2}, {"id": 3}]


def test_read_jsonl_restores_a_lost_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": 1}\n{"id": 2}')
    assert read_jsonl(path, repair=True) == [{"id": 1}, {"id": 2}]
    assert path.read_text() == '{"id": 1}\n{"id": 2}\n'


def test_read_jsonl_refuses_a_corrupt_middle_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": 1}\ngarbage\n{"id": 3}\n')
    with pytest.raises(JsonlError, match="line 2 is corrupt"):
        read_jsonl(path)
    path.write_text('[1, 2]\n{"id": 3}\n')
    with pytest.raises(JsonlError, match="expected a JSON object"):
        read_jsonl(path)
    path.write_text("")
    assert read_jsonl(path, repair=True) == [] and path.read_text() == ""


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # crosses the 1 MiB block boundary
    (tmp_path / "blob").write_bytes(data)
    assert file_sha256(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


def test_file_sha256_reads_a_file_once_and_sees_a_rewrite(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "adapter.safetensors"
    path.write_bytes(b"a" * 1000)
    opened = []
    real_open = Path.open

    def counting_open(self, mode="r", *args, **kwargs):
        if mode == "rb":
            opened.append(self)
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counting_open)
    first = file_sha256(path)
    assert file_sha256(path) == first and len(opened) == 1  # the second call is remembered
    path.write_bytes(b"b" * 1000)  # same size, new content: a tampered file
    assert file_sha256(path) == hashlib.sha256(b"b" * 1000).hexdigest() != first
    assert len(opened) == 2
