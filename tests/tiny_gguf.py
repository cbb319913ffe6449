"""Tiny Gemma 3 GGUF files for llama.cpp tests: a byte-level vocabulary, random weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from bigthoughts.models.build import build_model, random_params
from tests.tiny import SPECIALS, byte_tokenizer, tiny_config

# GGUF / SentencePiece piece types: 1 normal, 2 unknown, 3 control, 6 byte
_TYPES = [3, 3, 3, 2] + [6] * 256


def tiny_llamacpp_config():
    """tests.tiny's Gemma 3 with a window longer than any test sequence (both
    implementations then attend to everything, whatever their window convention)."""
    return dataclasses.replace(tiny_config("gemma3"), sliding_window_size=256)


def write_tokenizer_gguf(path: Path, config) -> Path:
    """A GGUF holding only metadata: tests.tiny's byte vocabulary and the rope/norm keys
    that ``write_model_gguf`` copies from a base."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_name("tiny")
    writer.add_context_length(1024)
    writer.add_rope_freq_base(float(config.global_base_frequency))
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(list(SPECIALS) + [f"<0x{b:02X}>" for b in range(256)])
    writer.add_token_scores([0.0] * 260)
    writer.add_token_types(_TYPES)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_model_and_gguf(tmp: Path, *, seed: int = 0, scale: float = 0.5, ftype: str = "f32"):
    """(tunix model, byte tokenizer, base reader, gguf path) for the same random weights."""
    from bigthoughts.models.gguf import open_gguf
    from bigthoughts.models.gguf_export import write_model_gguf

    config = tiny_llamacpp_config()
    params = random_params("gemma3", config, seed=seed, scale=scale)
    base = open_gguf(write_tokenizer_gguf(tmp / "tokenizer.gguf", config))
    path = write_model_gguf(tmp / f"tiny-{ftype}.gguf", params, config, base=base, ftype=ftype)
    params = {k: np.asarray(v) for k, v in params.items()}
    return build_model("gemma3", config, params), byte_tokenizer(), base, path
