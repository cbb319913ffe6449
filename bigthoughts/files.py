"""File helpers shared by every module that writes: atomic writes, JSON lines, hashes.

* :func:`atomic_write_text` / :func:`atomic_write_bytes` / :func:`atomic_write_json`
  and the context manager :func:`atomic_output` (for writers that want a path, such
  as ``safetensors.save_file``): the data goes to a temporary file in the target's
  directory, is fsynced, then ``os.replace``-d over the target, so a reader (or a
  process killed mid-write) sees the old file or the new one, never half of one.
* :func:`read_jsonl`: the records of a JSON-lines file, tolerant of a torn last line
  (a kill during an append), optionally cutting it from the file (``repair=True``);
  :func:`append_jsonl` appends records and fsyncs them.
* :func:`file_sha256`: a file's content hash.

Example::

    atomic_write_json(run_dir / "summary.json", summary, indent=2)
    records = read_jsonl(run_dir / "results.jsonl", repair=True)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "JsonlError",
    "append_jsonl",
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "file_sha256",
    "read_jsonl",
]


class JsonlError(ValueError):
    """A JSON-lines file with a corrupt line that is not the (torn) last one."""


_DIGESTS: dict[tuple, str] = {}  # this process's hashes, by file identity and version


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks.

    Remembered for the life of the process by (device, inode, size, mtime, ctime), so
    one command that checks the same adapter in several places reads it once; a file
    that is rewritten or replaced changes that key and is hashed anew.
    """
    stat = Path(path).stat()
    key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with Path(path).open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def _fsync_dir(directory: Path) -> None:
    """Makes a rename in ``directory`` durable (best effort: not every OS allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; on success it replaces ``path``.

    The writer fills the temporary file; it is then fsynced and renamed over
    ``path``. On an exception the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yields an empty temporary directory beside ``path``; on success its files are
    fsynced and it is renamed to ``path`` (replacing an old one), so readers see the old
    directory or the whole new one, never a part. On an exception it is removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for file in tmp.iterdir():
            with file.open("rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(target.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (temporary file + fsync + ``os.replace``)."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str, *, encoding: str = "utf-8") -> None:
    """Writes ``text`` to ``path`` atomically (temporary file + fsync + ``os.replace``)."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | Path, obj: Any, **json_kwargs: Any) -> None:
    """Writes ``json.dumps(obj, **json_kwargs)`` plus a newline to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, **json_kwargs) + "\n")


def read_jsonl(path: str | Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, one per non-empty line.

    A torn last line (no newline and not valid JSON: a kill during an append) is
    ignored; with ``repair=True`` it is also cut from the file, and a whole last
    record that lost its newline gets one back, so the next append starts on a fresh
    line. Any other bad line (invalid JSON or not an object) raises
    :class:`JsonlError` naming the file and line. ``OSError`` passes through.
    """
    path = Path(path)
    data = path.read_bytes()
    records: list[dict[str, Any]] = []
    good_end, pos, lineno = 0, 0, 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl + 1
        lineno += 1
        chunk = data[pos:end]
        if chunk.strip():
            try:
                record = json.loads(chunk)
                if not isinstance(record, dict):
                    raise ValueError(f"expected a JSON object, got {type(record).__name__}")
            except ValueError as err:
                if nl >= 0:
                    raise JsonlError(f"{path}: line {lineno} is corrupt ({err})") from err
                break  # torn last line
            records.append(record)
        good_end = pos = end
    if repair and data and (good_end < len(data) or not data.endswith(b"\n")):
        _cut(path, data, good_end)
    return records


def _cut(path: Path, data: bytes, good_end: int) -> None:
    """Truncates ``path`` to ``good_end`` bytes and ends it with a newline."""
    with path.open("r+b") as fh:
        fh.truncate(good_end)
        if good_end and not data[:good_end].endswith(b"\n"):
            fh.seek(good_end)  # a whole last record that lost its newline
            fh.write(b"\n")
        fh.flush()
        os.fsync(fh.fileno())


def append_jsonl(fh: IO[str], records: Iterable[Any]) -> None:
    """Appends ``records`` as JSON lines to the open text file ``fh`` and fsyncs it.

    One ``write`` call for the whole batch, so a kill leaves at most one torn line.
    """
    fh.write("".join(json.dumps(r) + "\n" for r in records))
    fh.flush()
    os.fsync(fh.fileno())
