"""The project's own binding to llama.cpp's C API (``llama.h``), the one layer the
llama.cpp engine calls.

    lib = llama_lib.load()            # the library, its functions typed, its structs
    params = lib.llama_context_default_params()

Which library: ``$BIGTHOUGHTS_LLAMA_LIB`` if set; else the build for this CPU that
``bigthoughts build-llamacpp`` made under the user's cache dir (``native_dir()``) unless
``BIGTHOUGHTS_LLAMA_NATIVE=0``; else the one shared library of the pinned ``xllamacpp``
wheel (the ``llamacpp`` extra: an abi3 manylinux wheel built for AVX2/FMA that installs
in seconds and exports the whole C API). All three are llama.cpp ``LLAMA_BUILD``, and
every struct and signature below is taken from that build's ``include/llama.h`` (it is
in the xllamacpp sdist). llama.h's structs change between builds, and a struct read with
another build's layout corrupts memory: a version bump must re-read the header
(``tests/test_llama_lib.py`` checks the structs' defaults and a batched decode, so a
layout that no longer fits fails loudly).
"""

from __future__ import annotations

import ctypes
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_bool,
    c_char_p,
    c_float,
    c_int,
    c_int8,
    c_int32,
    c_size_t,
    c_uint32,
    c_void_p,
)
from pathlib import Path

from bigthoughts.llama_install import (  # noqa: F401 (re-exported)
    LLAMA_BUILD,
    XLLAMACPP_VERSION,
    available,
    library_choice,
    native_dir,
    wheel_library,
)

llama_token = c_int32
llama_pos = c_int32
llama_seq_id = c_int32
llama_adapter_lora_p_ctypes = c_void_p
# void (*ggml_log_callback)(enum ggml_log_level level, const char * text, void * user_data)
llama_log_callback = CFUNCTYPE(None, c_int, c_char_p, c_void_p)


class LlamaLibError(RuntimeError):
    """No usable llama.cpp library (not installed, or not loadable here)."""


class llama_model_params(Structure):  # noqa: N801 (llama.h's names)
    _fields_ = [
        ("devices", c_void_p),
        ("tensor_buft_overrides", c_void_p),
        ("n_gpu_layers", c_int32),
        ("split_mode", c_int),
        ("load_mode", c_int),
        ("lazy_mode", c_int),
        ("main_gpu", c_int32),
        ("tensor_split", POINTER(c_float)),
        ("progress_callback", c_void_p),
        ("progress_callback_user_data", c_void_p),
        ("kv_overrides", c_void_p),
        ("vocab_only", c_bool),
        ("check_tensors", c_bool),
        ("use_extra_bufts", c_bool),
        ("no_host", c_bool),
        ("no_alloc", c_bool),
        ("load_mtp", c_bool),
    ]


class llama_context_params(Structure):  # noqa: N801
    _fields_ = [
        ("n_ctx", c_uint32),
        ("n_batch", c_uint32),
        ("n_ubatch", c_uint32),
        ("n_seq_max", c_uint32),
        ("n_rs_seq", c_uint32),
        ("n_outputs_max", c_uint32),
        ("n_outputs_max_per_seq", c_uint32),
        ("n_threads", c_int32),
        ("n_threads_batch", c_int32),
        ("ctx_type", c_int),
        ("rope_scaling_type", c_int),
        ("pooling_type", c_int),
        ("attention_type", c_int),
        ("flash_attn_type", c_int),
        ("rope_freq_base", c_float),
        ("rope_freq_scale", c_float),
        ("yarn_ext_factor", c_float),
        ("yarn_attn_factor", c_float),
        ("yarn_beta_fast", c_float),
        ("yarn_beta_slow", c_float),
        ("yarn_orig_ctx", c_uint32),
        ("defrag_thold", c_float),
        ("cb_eval", c_void_p),
        ("cb_eval_user_data", c_void_p),
        ("type_k", c_int),
        ("type_v", c_int),
        ("moe_cache_size", c_size_t),
        ("abort_callback", c_void_p),
        ("abort_callback_data", c_void_p),
        ("embeddings", c_bool),
        ("offload_kqv", c_bool),
        ("no_perf", c_bool),
        ("op_offload", c_bool),
        ("swa_full", c_bool),
        ("kv_unified", c_bool),
        ("samplers", c_void_p),
        ("n_samplers", c_size_t),
        ("ctx_other", c_void_p),
    ]


class llama_batch(Structure):  # noqa: N801
    _fields_ = [
        ("n_tokens", c_int32),
        ("token", POINTER(llama_token)),
        ("embd", POINTER(c_float)),
        ("pos", POINTER(llama_pos)),
        ("n_seq_id", POINTER(c_int32)),
        ("seq_id", POINTER(POINTER(llama_seq_id))),
        ("logits", POINTER(c_int8)),
    ]


class llama_sampler_chain_params(Structure):  # noqa: N801
    _fields_ = [("no_perf", c_bool)]


_P = c_void_p  # every opaque pointer: model, vocab, context, memory, adapter, sampler
# name: (result type, argument types), as llama.h declares them
SIGNATURES: dict[str, tuple] = {
    "llama_backend_init": (None, []),
    "llama_print_system_info": (c_char_p, []),
    "llama_model_default_params": (llama_model_params, []),
    "llama_context_default_params": (llama_context_params, []),
    "llama_sampler_chain_default_params": (llama_sampler_chain_params, []),
    "llama_model_load_from_file": (_P, [c_char_p, llama_model_params]),
    "llama_model_free": (None, [_P]),
    "llama_model_get_vocab": (_P, [_P]),
    "llama_vocab_n_tokens": (c_int32, [_P]),
    "llama_vocab_eos": (llama_token, [_P]),
    "llama_init_from_model": (_P, [_P, llama_context_params]),
    "llama_free": (None, [_P]),
    "llama_get_memory": (_P, [_P]),
    "llama_memory_clear": (None, [_P, c_bool]),
    "llama_memory_seq_cp": (None, [_P, llama_seq_id, llama_seq_id, llama_pos, llama_pos]),
    "llama_memory_seq_rm": (c_bool, [_P, llama_seq_id, llama_pos, llama_pos]),
    "llama_adapter_lora_init": (_P, [_P, c_char_p]),
    "llama_adapter_lora_free": (None, [_P]),
    "llama_set_adapters_lora": (c_int32, [_P, POINTER(_P), c_size_t, POINTER(c_float)]),
    "llama_tokenize": (c_int32, [_P, c_char_p, c_int32, POINTER(llama_token), c_int32,
                                 c_bool, c_bool]),
    "llama_token_to_piece": (c_int32, [_P, llama_token, c_char_p, c_int32, c_int32, c_bool]),
    "llama_batch_init": (llama_batch, [c_int32, c_int32, c_int32]),
    "llama_batch_free": (None, [llama_batch]),
    "llama_decode": (c_int32, [_P, llama_batch]),
    "llama_get_logits": (POINTER(c_float), [_P]),
    "llama_sampler_chain_init": (_P, [llama_sampler_chain_params]),
    "llama_sampler_chain_add": (None, [_P, _P]),
    "llama_sampler_init_greedy": (_P, []),
    "llama_sampler_init_dist": (_P, [c_uint32]),
    "llama_sampler_init_top_k": (_P, [c_int32]),
    "llama_sampler_init_top_p": (_P, [c_float, c_size_t]),
    "llama_sampler_init_temp": (_P, [c_float]),
    "llama_sampler_sample": (llama_token, [_P, _P, c_int32]),
    "llama_sampler_free": (None, [_P]),
    "llama_log_set": (None, [llama_log_callback, c_void_p]),
}


class LlamaLib:
    """The library at ``path`` with llama.h's functions typed (attributes named as in
    llama.h) and its types (``llama_batch``, ``llama_token``, ...)."""

    llama_token = llama_token
    llama_adapter_lora_p_ctypes = llama_adapter_lora_p_ctypes
    llama_log_callback = llama_log_callback
    llama_batch = llama_batch

    def __init__(self, path: Path, kind: str):
        self.path, self.kind = Path(path), kind
        try:
            self._dll = ctypes.CDLL(str(self.path))
        except OSError as err:
            raise LlamaLibError(f"could not load llama.cpp from {self.path}: {err}") from err
        for name, (restype, argtypes) in SIGNATURES.items():
            try:
                fn = getattr(self._dll, name)
            except AttributeError as err:
                raise LlamaLibError(f"{self.path} has no {name}: not llama.cpp "
                                    f"{LLAMA_BUILD}?") from err
            fn.restype, fn.argtypes = restype, argtypes
            setattr(self, name, fn)


_loaded: dict[Path, LlamaLib] = {}


def load() -> LlamaLib:
    """The chosen library, loaded once per process; LlamaLibError when there is none."""
    choice = library_choice()
    if choice is None:
        raise LlamaLibError("the llama.cpp engine needs the optional extra: pip install -c "
                            "requirements.lock -e '.[llamacpp]' (or use --engine jax)")
    path, kind = choice
    if path not in _loaded:
        if not path.is_file():
            raise LlamaLibError(f"llama.cpp library not found: {path} "
                                f"(BIGTHOUGHTS_LLAMA_LIB)")
        _loaded[path] = LlamaLib(path, kind)
    return _loaded[path]
