"""Our binding to llama.cpp's C API (``bigthoughts.inference.llama_lib``): the structs
read back the pinned build's defaults (a layout from another build would not), a
batched multi-sequence decode through the raw functions equals one sequence at a time,
a copied sequence continues like a fresh one, and the library choice follows the
environment and the opt-in native build."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from bigthoughts.inference import llama_lib

if not llama_lib.available():
    pytest.skip("needs the llamacpp extra", allow_module_level=True)


@pytest.fixture(scope="module")
def lib():
    return llama_lib.load()


def test_the_structs_read_the_pinned_builds_defaults(lib):
    """llama.cpp b11549's llama_context_default_params / llama_model_default_params:
    fields on both sides of every pointer, enum and size_t, so a shifted layout fails
    (load_mode -1 = LLAMA_LOAD_MODE_AUTO, lazy_mode 1 = LLAMA_LAZY_MODE_AUTO)."""
    ctx = lib.llama_context_default_params()
    assert (ctx.n_ctx, ctx.n_batch, ctx.n_ubatch, ctx.n_seq_max, ctx.n_rs_seq,
            ctx.n_outputs_max, ctx.n_outputs_max_per_seq) == (512, 2048, 512, 1, 0, 0, 1)
    assert (ctx.ctx_type, ctx.rope_scaling_type, ctx.pooling_type, ctx.attention_type,
            ctx.flash_attn_type) == (0, -1, -1, -1, -1)
    assert (ctx.rope_freq_base, ctx.rope_freq_scale, ctx.yarn_ext_factor,
            ctx.yarn_attn_factor, ctx.yarn_beta_fast, ctx.yarn_beta_slow, ctx.yarn_orig_ctx,
            ctx.defrag_thold) == (0.0, 0.0, -1.0, -1.0, -1.0, -1.0, 0, -1.0)
    assert (ctx.cb_eval, ctx.type_k, ctx.type_v, ctx.moe_cache_size, ctx.abort_callback) == \
        (None, 1, 1, 0, None)  # GGML_TYPE_F16 = 1
    assert (ctx.embeddings, ctx.offload_kqv, ctx.no_perf, ctx.op_offload, ctx.swa_full,
            ctx.kv_unified) == (False, True, True, True, True, False)
    assert (ctx.samplers, ctx.n_samplers, ctx.ctx_other) == (None, 0, None)
    model = lib.llama_model_default_params()
    assert (model.devices, model.n_gpu_layers, model.split_mode, model.load_mode,
            model.lazy_mode, model.main_gpu, model.kv_overrides) == (None, -1, 1, -1, 1, 0, None)
    assert (model.vocab_only, model.check_tensors, model.use_extra_bufts, model.no_host,
            model.no_alloc, model.load_mtp) == (False, False, True, False, False, False)
    assert lib.llama_sampler_chain_default_params().no_perf is True


def _decode(lib, ctx, batch, feeds):
    """``feeds``: (seq, first position, tokens); logits for each feed's last token."""
    n = 0
    for seq, pos, tokens in feeds:
        for j, tok in enumerate(tokens):
            batch.token[n], batch.pos[n], batch.n_seq_id[n] = tok, pos + j, 1
            batch.seq_id[n][0] = seq
            batch.logits[n] = j == len(tokens) - 1
            n += 1
    batch.n_tokens = n
    assert lib.llama_decode(ctx, batch) == 0
    vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(lib.model))
    return np.ctypeslib.as_array(lib.llama_get_logits(ctx), shape=(len(feeds), vocab)).copy()


def test_batched_sequences_and_a_copied_one_match_single_decodes(lib, tmp_path):
    from tests.tiny_gguf import tiny_model_and_gguf

    _, _, _, path = tiny_model_and_gguf(tmp_path)
    params = lib.llama_model_default_params()
    params.use_extra_bufts = False
    lib.llama_backend_init()
    lib.model = lib.llama_model_load_from_file(str(path).encode(), params)
    assert lib.model
    prompts = [[1, 20, 21, 22], [1, 30, 31], [1, 40, 41, 42, 43], [1, 50]]

    def context(n_seq):
        cp = lib.llama_context_default_params()
        cp.n_ctx, cp.n_seq_max, cp.kv_unified = 256, n_seq, True
        cp.n_threads = cp.n_threads_batch = 1
        ctx = lib.llama_init_from_model(lib.model, cp)
        assert ctx
        return ctx

    batch = lib.llama_batch_init(64, 0, 1)
    try:
        alone = []
        for tokens in prompts:  # each prompt, then its greedy next token, on its own
            ctx = context(1)
            first = _decode(lib, ctx, batch, [(0, 0, tokens)])[0]
            nxt = int(first.argmax())
            alone.append((first, _decode(lib, ctx, batch, [(0, len(tokens), [nxt])])[0]))
            lib.llama_free(ctx)
        ctx = context(len(prompts) + 1)
        firsts = _decode(lib, ctx, batch, [(s, 0, t) for s, t in enumerate(prompts)])
        steps = [(s, len(t), [int(firsts[s].argmax())]) for s, t in enumerate(prompts)]
        # sequence 4 is a copy of sequence 2's cache: it must continue exactly like it
        lib.llama_memory_seq_cp(lib.llama_get_memory(ctx), 2, 4, -1, -1)
        seconds = _decode(lib, ctx, batch, [*steps, (4, *steps[2][1:])])
        lib.llama_free(ctx)
        for s, (first, second) in enumerate(alone):
            np.testing.assert_allclose(firsts[s], first, atol=1e-4)
            np.testing.assert_allclose(seconds[s], second, atol=1e-4)
        np.testing.assert_allclose(seconds[4], alone[2][1], atol=1e-4)
        assert len({int(x.argmax()) for x in firsts}) > 1  # the prompts are told apart
    finally:
        lib.llama_batch_free(batch)
        lib.llama_model_free(lib.model)


def test_the_library_choice(monkeypatch, tmp_path):
    from bigthoughts.inference.llamacpp import LlamaCppEngine, LlamaCppError

    wheel = llama_lib.wheel_library()
    monkeypatch.setenv("BIGTHOUGHTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BIGTHOUGHTS_LLAMA_LIB", raising=False)
    monkeypatch.delenv("BIGTHOUGHTS_LLAMA_NATIVE", raising=False)
    assert llama_lib.library_choice() == (wheel, "wheel")
    native = llama_lib.native_dir() / "lib" / "libllama.so"
    native.parent.mkdir(parents=True)
    shutil.copy(wheel, native)  # stands in for a build-llamacpp product
    assert llama_lib.library_choice() == (native, "native")
    monkeypatch.setenv("BIGTHOUGHTS_LLAMA_NATIVE", "0")
    assert llama_lib.library_choice() == (wheel, "wheel")
    monkeypatch.setenv("BIGTHOUGHTS_LLAMA_LIB", str(tmp_path / "missing.so"))
    with pytest.raises(LlamaCppError, match="library not found: .*missing.so"):
        LlamaCppEngine(tmp_path / "any.gguf")
    not_a_library = tmp_path / "libllama.so"
    not_a_library.write_text("not a shared library")
    monkeypatch.setenv("BIGTHOUGHTS_LLAMA_LIB", str(not_a_library))
    with pytest.raises(llama_lib.LlamaLibError, match="could not load llama.cpp from"):
        llama_lib.load()
