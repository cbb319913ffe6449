"""The streaming safetensors writer: files it writes are read back exactly by safetensors."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from bigthoughts.models.tensorfile import write_safetensors


def test_round_trip_of_views_dtypes_and_metadata(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((6, 4)).astype(np.float32)
    tensors = {
        "transposed": base.T,                       # a non-contiguous view
        "reshaped": base.reshape(3, 8),
        "strided": base[::2, 1:],
        "ints": np.arange(7, dtype=np.int64),
        "bf16": base.astype(ml_dtypes.bfloat16),
        "scalar": np.float32(2.5) * np.ones((), np.float32),
        "empty": np.zeros((0, 3), np.float32),
        "flags": np.array([True, False, True]),
    }
    path = write_safetensors(tmp_path / "t.safetensors", tensors, metadata={"step": "7"})
    back = load_file(path)
    assert set(back) == set(tensors)
    for name, value in tensors.items():
        assert back[name].shape == value.shape, name
        assert back[name].dtype == value.dtype, name
        np.testing.assert_array_equal(back[name], value)
    with safe_open(str(path), "np") as fh:
        assert fh.metadata() == {"step": "7"}


def test_dtype_converts_each_tensor(tmp_path):
    tensors = {"a": np.arange(6, dtype=np.float64).reshape(2, 3).T, "b": np.ones(4, np.float16)}
    back = load_file(write_safetensors(tmp_path / "c.safetensors", tensors, dtype=np.float32))
    assert {k: v.dtype for k, v in back.items()} == {"a": np.float32, "b": np.float32}
    np.testing.assert_array_equal(back["a"], tensors["a"].astype(np.float32))


def test_same_bytes_as_the_library_tensor_for_tensor(tmp_path):
    from safetensors.numpy import save_file

    tensors = {"x": np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4),
               "y": np.arange(5, dtype=np.int32)}
    ours = load_file(write_safetensors(tmp_path / "ours.safetensors", tensors))
    save_file(tensors, str(tmp_path / "lib.safetensors"))
    theirs = load_file(tmp_path / "lib.safetensors")
    for name in tensors:
        assert ours[name].tobytes() == theirs[name].tobytes()


def test_bad_input_is_refused_and_the_old_file_survives(tmp_path):
    path = tmp_path / "keep.safetensors"
    write_safetensors(path, {"a": np.ones(3, np.float32)})
    before = path.read_bytes()
    with pytest.raises(TypeError, match="no dtype"):
        write_safetensors(path, {"a": np.ones(2, np.complex64)})
    with pytest.raises(TypeError, match="str to str"):
        write_safetensors(path, {"a": np.ones(2, np.float32)}, metadata={"n": 3})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.safetensors"]
