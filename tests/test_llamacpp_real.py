"""The llama.cpp engine and our GGUF exports on the real Gemma 3 270M, against our
JAX forward of the same weights (the dequantised Q4_K_M, checked against HF in
test_models_real.py). llama.cpp quantises activations for its Q4_K/Q8_0 dot
products, so agreement is "within quantisation tolerance", measured below."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigthoughts.inference import llama_lib

if not llama_lib.available():
    pytest.skip("needs the llamacpp extra", allow_module_level=True)
pytestmark = pytest.mark.real

from bigthoughts.data import build_prompt  # noqa: E402
from bigthoughts.inference.jax_sampler import Sampler  # noqa: E402
from bigthoughts.inference.llamacpp import LlamaCppEngine  # noqa: E402
from bigthoughts.models.registry import embedded_gguf_path  # noqa: E402

PROMPTS = [
    "Question: Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer:",
    "The capital of France is",
    build_prompt("A farmer has 12 cows and buys 30 more. How many cows?", "fewshot", shots=1),
]
TOP = 10


@pytest.fixture(scope="module")
def base_engine():
    engine = LlamaCppEngine(embedded_gguf_path(), threads=2)
    yield engine
    engine.close()


def jax_last_logits(model, tokenizer, prompt):
    return jax_logits_of_ids(model, tokenizer.encode(prompt, add_bos=True))


def jax_logits_of_ids(model, ids):
    from bigthoughts.models import forward

    n = len(ids)
    hidden, _ = forward.hidden_states(model, jnp.asarray([ids]), jnp.arange(n)[None], None,
                                      jnp.tril(jnp.ones((1, n, n), dtype=bool)))
    return np.asarray(forward.logits(model, hidden[:, -1:]))[0, 0].astype(np.float64)


def assert_top_logits_agree(ours, theirs, *, tol):
    """Same top-1, the top-k sets mostly shared, and the top-k logits within ``tol``."""
    top = np.argsort(-ours)[:TOP]
    assert int(np.argmax(theirs)) == int(top[0])
    assert len(set(top) & set(np.argsort(-theirs)[:TOP])) >= TOP - 2
    assert np.abs(ours[top] - theirs[top]).max() < tol


def greedy_agree(engine, sampler, model, tokenizer, n_tokens=24, tie=0.5):
    """Greedy continuations of PROMPTS by both engines. Returns the number of leading
    tokens they share per prompt; where they part, llama.cpp's pick must be a near tie
    for our JAX forward (within ``tie`` of its best logit): quantisation noise."""
    a = engine.generate(PROMPTS, temperatures=0.0, max_new_tokens=n_tokens)
    b = sampler.generate(PROMPTS, temperatures=0.0, max_new_tokens=n_tokens)
    shared = []
    for prompt, x, y in zip(PROMPTS, a, b, strict=True):
        n = 0
        while n < min(x.num_tokens, y.num_tokens) and x.token_ids[n] == y.token_ids[n]:
            n += 1
        shared.append(n)
        if n < min(x.num_tokens, y.num_tokens):
            ids = tokenizer.encode(prompt, add_bos=True) + list(x.token_ids[:n])
            logits = jax_logits_of_ids(model, ids)
            assert logits.max() - logits[x.token_ids[n]] < tie, (prompt, n)
    return shared, a, b


def test_q4_k_m_engine_agrees_with_our_jax_forward(real_model, base_engine):
    tok = real_model.tokenizer
    for prompt in PROMPTS:
        assert base_engine.tokenize(prompt, add_bos=True) == tok.encode(prompt, add_bos=True)
        assert_top_logits_agree(jax_last_logits(real_model.model, tok, prompt),
                                base_engine.prompt_logits(prompt), tol=1.0)
    shared, a, b = greedy_agree(base_engine, Sampler(real_model.model, tok), real_model.model,
                                tok)
    # where the two greedy paths part, greedy_agree has checked that it is a near tie (CPUs
    # with other float kernels part at other ties: 4 shared tokens on one AMD EPYC); most
    # of the way they agree
    assert sum(shared) >= 24 and max(shared) >= 16, shared
    for x, y, n in zip(a, b, shared, strict=True):  # log-probs of the shared greedy tokens
        np.testing.assert_allclose(x.logprobs[:min(8, n)], y.logprobs[:min(8, n)], atol=0.25)


@pytest.fixture(scope="module")
def lora_case(real_model, tmp_path_factory):
    """The 270M with a random nonzero rank-8 LoRA on every target, exported both ways."""
    from bigthoughts.models.export import merge_lora
    from bigthoughts.models.gguf import open_gguf
    from bigthoughts.models.gguf_export import write_lora_adapter, write_model_gguf
    from tests.test_gguf_export import with_lora

    tmp = tmp_path_factory.mktemp("lora")
    model = with_lora(real_model.model, rank=8, alpha=16.0, scale=0.02)
    base = open_gguf(embedded_gguf_path())
    adapter = write_lora_adapter(tmp / "adapter.gguf", model, alpha=16.0, base=base)
    merged = write_model_gguf(tmp / "merged-q8_0.gguf", merge_lora(model, alpha=16.0, rank=8),
                              model.config, base=base, ftype="q8_0")
    return model, adapter, merged


def test_lora_adapter_on_the_unchanged_q4_k_m_base(real_model, lora_case):
    model, adapter, _ = lora_case
    tok = real_model.tokenizer
    engine = LlamaCppEngine(embedded_gguf_path(), lora=adapter, threads=2)
    try:
        moved = 0.0
        for prompt in PROMPTS:
            ours = jax_last_logits(model, tok, prompt)
            moved = max(moved, np.abs(ours - jax_last_logits(real_model.model, tok, prompt)).max())
            assert_top_logits_agree(ours, engine.prompt_logits(prompt), tol=1.0)
        assert moved > 2.0  # the LoRA really changes the model, beyond the tolerance
        shared, _, _ = greedy_agree(engine, Sampler(model, tok), model, tok)
        assert min(shared) >= 1 and sorted(shared)[1] >= 8, shared
    finally:
        engine.close()


def test_merged_q8_0_gguf(real_model, lora_case):
    model, _, merged = lora_case
    tok = real_model.tokenizer
    engine = LlamaCppEngine(merged, threads=2)
    try:
        for prompt in PROMPTS:
            assert_top_logits_agree(jax_last_logits(model, tok, prompt),
                                    engine.prompt_logits(prompt), tol=1.0)
        shared, _, _ = greedy_agree(engine, Sampler(model, tok), model, tok)
        # measured [3, 24, 3]: two prompts part at a near tie (checked in greedy_agree)
        assert min(shared) >= 1 and max(shared) >= 8, shared
    finally:
        engine.close()


def test_calculator_fills_in_gsm8k_annotations(base_engine, monkeypatch):
    """Mid-generation insertion: every annotation the model opens gets the stand-in's
    result, and rows without the calculator differ only where it acted."""
    calls = []

    def calculate(expr):
        calls.append(expr)
        return "99"  # a value the model would not write itself

    monkeypatch.setattr("bigthoughts.arithmetic.calculate", calculate)
    prompt = ("Question: Natalia sold 48 clips in April and half as many in May. How many "
              "in total?\nAnswer: In May she sold 48/2 = <<48/2=24>>24 clips. In total "
              "<<48+24=72>>72.\n\nQuestion: Weng earns $12 an hour and works 5 hours. How much "
              "does she earn?\nAnswer: She earns 12*5 = <<")
    [out] = base_engine.generate([prompt], temperatures=0.0, max_new_tokens=24, calculator=True,
                                 stop=["\nQuestion:"])
    assert calls, out.text
    assert out.text.count("=99>>") == len(calls)
    [plain] = base_engine.generate([prompt], temperatures=0.0, max_new_tokens=24)
    cut = out.text.index("=99>>") + 1
    assert plain.text[:cut] == out.text[:cut]  # identical up to the inserted result
    assert jax.device_count() >= 1


def test_ask_on_llamacpp_takes_the_safetensors_adapter(tmp_path, monkeypatch, capsys):
    """`ask --engine llama.cpp --adapter X.safetensors`: the adapter is converted once to a
    GGUF LoRA (cached by its hash) and the trained model answers in the taught format."""
    import json
    from pathlib import Path

    from bigthoughts.cli import main

    monkeypatch.setenv("BIGTHOUGHTS_CACHE", str(tmp_path))
    adapter = Path(__file__).resolve().parents[1] / "adapters" / "gemma3-270m-sft.safetensors"
    question = "A baker sells 12 loaves a day for $3 each. How much does he earn in 5 days?"
    common = ["ask", question, "--model", "gemma3-270m-base", "--engine", "llama.cpp",
              "--threads", "2", "--votes", "1", "--style", "zeroshot", "--max-new-tokens", "24",
              "--traces", "--json"]  # the raw base, not the shipped adapter
    assert main(common) == 0
    base = capsys.readouterr().out
    assert main([*common, "--adapter", str(adapter)]) == 0
    tuned = capsys.readouterr().out
    assert "<reasoning>" in tuned and "<reasoning>" not in base
    model = json.loads(tuned)["model"]
    assert "+ gemma3-270m-sft.safetensors#sha256=" in model
    assert model.endswith("; llama.cpp engine)")
    assert len(list(tmp_path.glob("lora-*.gguf"))) == 1
    assert main([*common, "--adapter", str(adapter), "--lora", "x.gguf"]) == 2
    assert "give the adapter once" in capsys.readouterr().err


def test_grpo_rollouts_follow_each_update_of_the_lora(real_model, lora_case, tmp_path):
    """grpo.rollout_engine=llama.cpp: after each sync the engine samples with the LoRA
    the trainer holds (random LoRA, then all zeros = the bare base), on one loaded model."""
    from flax import nnx

    from bigthoughts.training.llamacpp_rollouts import LlamaCppRollouts

    model, _, _ = lora_case
    tok = real_model.tokenizer
    lora = nnx.state(model, nnx.LoRAParam)
    rollouts = LlamaCppRollouts(embedded_gguf_path(), alpha=16.0, work_dir=tmp_path)
    try:
        rollouts.sync(lora)
        for prompt in PROMPTS:
            assert_top_logits_agree(jax_last_logits(model, tok, prompt),
                                    rollouts.engine.prompt_logits(prompt), tol=1.0)
        rollouts.sync(jax.tree_util.tree_map(jnp.zeros_like, lora))
        for prompt in PROMPTS:
            assert_top_logits_agree(jax_last_logits(real_model.model, tok, prompt),
                                    rollouts.engine.prompt_logits(prompt), tol=1.0)
    finally:
        rollouts.close()


def test_calculator_tokens_are_flagged_as_inserted(base_engine):
    """What GRPO masks out of its loss: the tokens the calculator wrote, not the model."""
    prompt = "Question: What is 12 times 7?\nAnswer: 12*7 = <<12*7="
    [gen] = base_engine.generate([prompt], temperatures=0.0, max_new_tokens=6, calculator=True)
    assert gen.text.startswith("84>>")
    n = len(gen.inserted)
    assert n == gen.num_tokens and any(gen.inserted) and not all(gen.inserted)
    assert all(lp == 0.0 for lp, ins in zip(gen.logprobs, gen.inserted, strict=True) if ins)
    first_sampled = gen.inserted.index(False)
    inserted = b"".join(base_engine.piece(t) for t in gen.token_ids[:first_sampled])
    assert inserted.decode() == "84>>"


def test_calculator_replaces_a_token_that_joins_the_equals_to_a_sign(base_engine):
    """Gemma has one token for "=-": the model picks it (and then a wrong number) where
    the result is negative. The calculator replaces that token, as the JAX sampler does,
    instead of leaving the model's own arithmetic in place."""
    prompt = ("Question: What is 3 minus 5?\nAnswer: 3-5 = <<3-5=-2>>-2\n\n"
              "Question: What is 2 minus 7?\nAnswer: 2-7 = <<2-7=-5>>-5\n\n"
              "Question: What is 4 minus 9?\nAnswer: 4-9 = <<4-9")
    [plain] = base_engine.generate([prompt], temperatures=0.0, max_new_tokens=4)
    assert base_engine.piece(plain.token_ids[0]) == b"=-"  # the joined token is sampled
    assert plain.text.startswith("=-3>>")  # and the model's own sum is wrong
    [calc] = base_engine.generate([prompt], temperatures=0.0, max_new_tokens=8,
                                  calculator=True)
    assert calc.text.startswith("=-5>>")
    inserted = b"".join(base_engine.piece(t) for t, ins in
                        zip(calc.token_ids, calc.inserted, strict=True) if ins)
    assert inserted == b"=-5>>" and calc.inserted[:3] == (True, True, True)


def test_llamacpp_draws_carry_their_log_probs_near_the_trainers(real_model, base_engine):
    """The llama.cpp engine's log-probs of its own draws at T = 0.7 against the float32
    JAX trainer's for the same tokens: finite, not identical (quantised kernels), close
    (the mismatch the GRPO step logs)."""
    from bigthoughts.training import grpo_loss
    from bigthoughts.training.rollout import pad_left, pad_right

    prompt = build_prompt("Tom has 3 apples and buys 4 more. How many apples?", "zeroshot", 0)
    gens = base_engine.generate([prompt], temperatures=0.7, num_samples=2, max_new_tokens=12,
                                seed=5)
    tok = real_model.tokenizer
    p_tok, p_valid = pad_left([tok.encode(prompt, add_bos=True)], 16, tok.pad_id())
    c_tok, mask = pad_right([g.token_ids for g in gens], 12, tok.pad_id())
    sampler = np.zeros(c_tok.shape, np.float32)
    for row, g in enumerate(gens):
        assert len(g.sample_logprobs) == g.num_tokens
        sampler[row, : g.num_tokens] = g.sample_logprobs
    trainer = grpo_loss.completion_logps(real_model.model, jnp.asarray(p_tok),
                                         jnp.asarray(p_valid), jnp.asarray(c_tok), 2,
                                         temperature=0.7)
    got = {k: float(v) for k, v in grpo_loss.mismatch_metrics(
        trainer, jnp.asarray(sampler), jnp.asarray(mask), float(mask.sum())).items()}
    assert all(np.isfinite(v) for v in got.values())
    assert 0.0 < got["mismatch/abs_mean"] < 0.2 and got["mismatch/abs_max"] < 2.0, got
