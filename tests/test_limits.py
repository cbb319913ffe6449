"""bigthoughts.models.limits: context and memory bounds of a generation call."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bigthoughts.models.limits import (
    MAX_ROWS,
    GenerationLimitError,
    check_before_load,
    check_context,
    check_memory,
    check_prompt_tokens,
    estimate_prompt_tokens,
    generation_bytes,
    param_bytes,
    spec_model_config,
)
from bigthoughts.models.registry import REGISTRY
from bigthoughts.models.spec import ModelSpec

CFG = SimpleNamespace(num_layers=2, num_kv_heads=1, head_dim=16, num_embed=100, embed_dim=32,
                      num_heads=2, hidden_dim=64)
SPEC = ModelSpec(name="toy", family="gemma3", instruction_tuned=False, context_length=1000)


def test_generation_bytes_by_hand() -> None:
    # cache: prompt 70 -> bucket 128, 20 new -> 32; 160 slots x (2 x 2 layers x 1 x 16 x 4 B)
    # counted twice, plus 6 float32 vocabulary vectors per row; per prompt the prefill's
    # attention: 3 float32 copies of 2 heads x 128 queries x 160 slots
    per_row = 2 * 160 * (2 * 2 * 1 * 16 * 4) + 6 * 100 * 4
    attention = 3 * 2 * 128 * 160 * 4
    assert generation_bytes(CFG, rows=3, prompt_tokens=70, max_new_tokens=20) == 3 * (
        per_row + attention)
    assert generation_bytes(CFG, rows=3, prompt_tokens=70, max_new_tokens=20, prompts=1) == (
        3 * per_row + attention)
    assert param_bytes(CFG) == 4 * (100 * 32 + 2 * (32 * 16 * (2 * 2 + 2 * 1) + 3 * 32 * 64))


def test_the_real_270m_config_and_the_1000_vote_case() -> None:
    config = spec_model_config(REGISTRY["gemma3-270m"])
    assert (config.num_layers, config.num_kv_heads, config.head_dim, config.num_embed) == (
        18, 1, 256, 262144)
    # 1000 rows of one 300-token prompt (bucket 320) + 8 new (chunk 16): ~31 GB
    per_row = 2 * 336 * (2 * 18 * 256 * 4) + 6 * 262144 * 4
    attention = 3 * 4 * 320 * 336 * 4
    assert generation_bytes(config, rows=1000, prompt_tokens=300, max_new_tokens=8,
                            prompts=1) == 1000 * per_row + attention == 31_069_224_960
    with pytest.raises(GenerationLimitError, match=f"limit of {MAX_ROWS}"):
        check_before_load(REGISTRY["gemma3-270m"], ["Q"], rows=1000 + MAX_ROWS, max_new_tokens=8)
    with pytest.raises(GenerationLimitError, match=r"need about 31\.1 GB .* at most 257 "):
        check_memory(config, rows=1000, prompt_tokens=300, max_new_tokens=8,
                     available=10_000_000_000, prompts=1)


def test_memory_refusal_says_the_limit_and_fitting_calls_pass() -> None:
    need = generation_bytes(CFG, rows=10, prompt_tokens=10, max_new_tokens=10)
    check_memory(CFG, rows=10, prompt_tokens=10, max_new_tokens=10, available=int(need / 0.8) + 1)
    with pytest.raises(GenerationLimitError, match="at most 5 sequences fit") as err:
        check_memory(CFG, rows=10, prompt_tokens=10, max_new_tokens=10,
                     available=int(need / 2 / 0.8) + 1)
    assert "\n" not in str(err.value)
    # before the load the weights count too
    with pytest.raises(GenerationLimitError):
        check_memory(CFG, rows=10, prompt_tokens=10, max_new_tokens=10, loaded=False,
                     available=int(need / 0.8) + 1)


def test_context_is_refused_not_capped() -> None:
    check_context(SPEC, 200, 800)
    check_context(SPEC, None, 999)
    with pytest.raises(GenerationLimitError, match="=1000 exceeds toy's context of 1000 tokens"):
        check_context(SPEC, None, 1000)
    with pytest.raises(GenerationLimitError, match="toy's context of 1000 tokens; use at most 799"):
        check_context(SPEC, 201, 800)
    assert REGISTRY["gemma3-270m"].max_context == 32768
    assert REGISTRY["gemma3-4b-it"].max_context == 131072
    assert REGISTRY["gemma2-2b"].max_context == 8192
    with pytest.raises(GenerationLimitError, match="context of 32768"):
        check_before_load(REGISTRY["gemma3-270m"], ["Q"], rows=1, max_new_tokens=100_000)


def test_prompt_estimate_errs_large() -> None:
    assert estimate_prompt_tokens("") == 1
    assert estimate_prompt_tokens("abcdefg") == 4  # ceil(7 / 3) + BOS
    assert estimate_prompt_tokens("\udcff") == 2  # a lone surrogate still counts


def test_a_prompt_too_long_for_the_memory_says_how_long_fits() -> None:
    """The attention of a chunked prefill is linear in the prompt: a 30,000-token prompt
    on the 270M needs ~3 GB a row, and the refusal names the
    longest prompt that fits, which then passes."""
    config = spec_model_config(REGISTRY["gemma3-270m"])
    need = generation_bytes(config, rows=1, prompt_tokens=30_000, max_new_tokens=256)
    assert 2.8e9 < need < 3.2e9  # 2.2 GB of cache (f32, counted twice), 0.7 GB of scores
    with pytest.raises(GenerationLimitError, match=r"a 30000-token prompt .* at most (\d+) "
                       r"prompt tokens fit") as err:
        check_memory(config, rows=1, prompt_tokens=30_000, max_new_tokens=256,
                     available=2_000_000_000)
    longest = int(str(err.value).split("at most ")[1].split()[0])
    assert 10_000 < longest < 30_000
    check_memory(config, rows=1, prompt_tokens=longest, max_new_tokens=256,
                 available=2_000_000_000)
    with pytest.raises(GenerationLimitError):
        check_memory(config, rows=1, prompt_tokens=longest + 64, max_new_tokens=256,
                     available=2_000_000_000)


def test_the_prompt_limit_names_itself_and_the_context() -> None:
    check_prompt_tokens(8192, 8192, 32768)
    with pytest.raises(GenerationLimitError, match="8193 tokens, more than the 8192 accepted "
                       r"here.*--max-prompt-tokens \(at most the model's context, 32768\)"):
        check_prompt_tokens(8193, 8192, 32768)


def test_the_memory_budget_can_be_set(monkeypatch) -> None:
    from bigthoughts.models.limits import available_memory

    monkeypatch.setenv("BIGTHOUGHTS_MEMORY_GB", "1.5")
    assert available_memory() == 1_500_000_000
    config = spec_model_config(REGISTRY["gemma3-270m"])
    with pytest.raises(GenerationLimitError, match="more than the 1.2 GB free"):
        check_memory(config, rows=1, prompt_tokens=30_000, max_new_tokens=256)
    for bad in ("lots", "0", "-2", "nan"):
        monkeypatch.setenv("BIGTHOUGHTS_MEMORY_GB", bad)
        with pytest.raises(GenerationLimitError, match="must be a positive number of GB"):
            available_memory()


def test_a_call_prefills_at_most_one_prompt_per_row() -> None:
    """``eval`` names every question of the run while ``rows`` is one batch's: the
    attention is counted for at most ``rows`` prompts (it once counted 1,319)."""
    config = spec_model_config(REGISTRY["gemma3-270m"])
    one_batch = generation_bytes(config, rows=8, prompt_tokens=960, max_new_tokens=256,
                                 prompts=8)
    assert generation_bytes(config, rows=8, prompt_tokens=960, max_new_tokens=256,
                            prompts=1319) == one_batch < 1.1e9  # not ~40 GB


def test_the_sampler_checks_memory_unless_told_not_to(monkeypatch) -> None:
    """``ask``/``eval``/``serve`` samplers refuse a call that cannot fit; the trainers'
    samplers (``memory_check=False``) do not read free memory mid-run."""
    from bigthoughts.inference.jax_sampler import Sampler
    from tests.tiny import tiny_model

    model, tok = tiny_model()
    monkeypatch.setattr("bigthoughts.models.limits.available_memory", lambda: 1000)
    with pytest.raises(GenerationLimitError, match="free for"):
        Sampler(model, tok).generate(["2+2="], max_new_tokens=4)
    [out] = Sampler(model, tok, memory_check=False).generate(["2+2="], max_new_tokens=4)
    assert out.num_tokens == 4 or out.finish_reason == "stop"
