"""A second load of a GGUF model reads only the cache: parameters, tokenizer and the
header (the model's shape and name), never the GGUF's vocabulary, which takes seconds
to parse for the real 262k-token model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bigthoughts.models import gguf as gguf_io
from bigthoughts.models.build import flat_params
from bigthoughts.models.registry import load_model
from tests.tiny_gguf import tiny_model_and_gguf


@pytest.fixture()
def tiny_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGTHOUGHTS_CACHE", str(tmp_path / "cache"))
    _, _, _, path = tiny_model_and_gguf(tmp_path)
    return path


def test_the_second_load_does_not_open_the_gguf(tiny_gguf, tmp_path, monkeypatch):
    first = load_model(tiny_gguf)
    cache = tmp_path / "cache"
    assert len(list(cache.glob("header-*.json"))) == 1
    assert len(list(cache.glob("params-*.safetensors"))) == 1

    def refuse(path):
        raise AssertionError("the GGUF was parsed although its cache is complete")

    monkeypatch.setattr(gguf_io, "open_gguf", refuse)
    second = load_model(tiny_gguf)
    assert second.model.config == first.model.config
    assert second.spec == first.spec and second.source == first.source
    a, b = flat_params(first.model), flat_params(second.model)
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))
    text = "Tom has 3 apples."
    assert second.tokenizer.encode(text) == first.tokenizer.encode(text)


def test_a_changed_file_is_hashed_and_converted_again(tiny_gguf, tmp_path):
    first = load_model(tiny_gguf)
    digests = json.loads((tmp_path / "cache" / "digests.json").read_text())
    assert list(digests.values()) == [first.source.split("#sha256=")[1]]
    data = bytearray(tiny_gguf.read_bytes())
    data[-1] ^= 0x40  # one weight changes
    tiny_gguf.write_bytes(bytes(data))
    second = load_model(tiny_gguf)
    assert second.source != first.source  # a new hash, so a new cache entry
    assert len(list((tmp_path / "cache").glob("params-*.safetensors"))) == 2
