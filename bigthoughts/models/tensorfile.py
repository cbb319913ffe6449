"""Writes safetensors files one tensor at a time; reads them with one-line errors.

``safetensors.numpy.save_file`` turns every tensor into ``bytes`` before it writes the
first one, so saving a 1 GB model holds a second 1 GB copy for the whole write: at
the end of a GRPO run that copy was the process's peak (``benchmarks/grpo_memory.py``).
:func:`write_safetensors` computes the header from shapes alone, then writes each
tensor's bytes straight from the array, so the extra memory is one tensor at a time
(and none for tensors that are already contiguous in the file's dtype). Arrays may
be views (transposes, reshapes): each is laid out when its turn comes.

The file format (public, https://github.com/huggingface/safetensors): an 8-byte
little-endian header length, a JSON header naming each tensor's dtype, shape and byte
range in the data that follows, and an optional ``__metadata__`` string map. Files
written here are read by ``safetensors`` itself (tested).

Example::

    write_safetensors(out / "model.safetensors", {"w": weight.T}, metadata={"step": "3"})
"""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bigthoughts.files import atomic_output

__all__ = ["open_safetensors", "read_safetensors", "write_safetensors"]

_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64",
           "int8": "I8", "int16": "I16", "int32": "I32", "int64": "I64", "uint8": "U8",
           "uint16": "U16", "uint32": "U32", "uint64": "U64", "bool": "BOOL"}


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file. A damaged, truncated or unreadable file is a
    ``ModelLoadError`` naming it (a user's checkpoint; a cache file is rebuilt by its
    caller instead)."""
    from safetensors.numpy import load_file

    with _one_line_errors(path):
        return load_file(str(path))


def open_safetensors(path: str | Path):
    """``safetensors.safe_open`` (numpy) of a file, for reading tensor by tensor; a
    damaged one is a ``ModelLoadError`` naming it, as in :func:`read_safetensors`."""
    from safetensors import safe_open

    with _one_line_errors(path):
        return safe_open(str(path), framework="numpy")


@contextlib.contextmanager
def _one_line_errors(path: str | Path):
    from safetensors import SafetensorError

    from bigthoughts.models.spec import ModelLoadError

    try:
        yield
    except (SafetensorError, OSError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelLoadError(f"{path} is not a readable safetensors file ({reason}); "
                             "it may be truncated or damaged: write or copy it again") from None


def _code(array: np.ndarray) -> str:
    try:
        return _DTYPES[array.dtype.name]
    except KeyError:
        raise TypeError(f"safetensors has no dtype for numpy {array.dtype}") from None


def write_safetensors(path: str | Path, tensors: Mapping[str, np.ndarray], *,
                      metadata: Mapping[str, str] | None = None,
                      dtype: np.dtype | str | None = None) -> Path:
    """Writes ``tensors`` (name → array or view) to ``path`` atomically.

    ``dtype`` converts every tensor on the way (one at a time); by default each keeps
    its own. Little-endian, as the format requires.
    """
    target = np.dtype(dtype) if dtype is not None else None
    header: dict[str, object] = {}
    if metadata:
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise TypeError(f"safetensors metadata must map str to str; not so for {bad}")
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, array in tensors.items():
        dt = target or np.asarray(array).dtype
        probe = np.empty(0, dtype=dt)
        size = int(np.prod(np.shape(array), dtype=np.int64)) * dt.itemsize
        header[name] = {"dtype": _code(probe), "shape": list(np.shape(array)),
                        "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    out = Path(path)
    with atomic_output(out) as tmp, open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for array in tensors.values():
            dt = (target or np.asarray(array).dtype).newbyteorder("<")
            data = np.ascontiguousarray(array, dtype=dt)
            fh.write(data.reshape(-1).view(np.uint8).data)
            del data
    return out
