"""Calculator tokens in GRPO: they stay in the context but leave the loss and the KL."""

import dataclasses

import jax.numpy as jnp
import numpy as np

from bigthoughts.data import Example
from bigthoughts.inference.contract import Generation
from bigthoughts.training import grpo_loss as grpo
from bigthoughts.training import rollout as ro
from tests.train_toy import toy_loaded


def gen(tokens, inserted):
    return Generation(text="t", token_ids=tuple(tokens), logprobs=(0.0,) * len(tokens),
                      finish_reason="stop", prompt_tokens=3, temperature=1.0,
                      inserted=tuple(inserted))


def toy_rollout():
    examples = (Example(id="a", question="q", answer="#### 1", gold="1"),)
    gens = (gen([70, 71, 72, 73, 74], [False, True, True, False, False]),
            gen([75, 76, 77], [False, False, False]))
    return ro.Rollout(examples=examples, prompts=("prompt a",), generations=gens,
                      rewards=np.array([1.0, 0.0]), per_fn={},
                      advantages=np.array([0.7, -0.7]), seconds=0.0)


def test_inserted_tokens_are_masked_in_the_batch():
    lm = toy_loaded()
    batch = ro.to_batch(toy_rollout(), lm.tokenizer, max_new_tokens=6)
    np.testing.assert_array_equal(np.asarray(batch.completion_mask),
                                  [[1, 0, 0, 1, 1, 0], [1, 1, 1, 0, 0, 0]])
    assert np.asarray(batch.completion_tokens)[0, :5].tolist() == [70, 71, 72, 73, 74]


def test_loss_and_kl_ignore_inserted_positions():
    lm = toy_loaded()
    batch = ro.to_batch(toy_rollout(), lm.tokenizer, max_new_tokens=6)
    ref = jnp.zeros(batch.completion_tokens.shape) - 3.0
    loss_a, aux_a = grpo.grpo_loss(lm.model, dataclasses.replace(batch, ref_logps=ref),
                                   group=2, beta=0.04, epsilon=0.2)
    # a reference that disagrees wildly, but only where the calculator wrote
    moved = ref.at[0, 1:3].set(5.0)
    loss_b, aux_b = grpo.grpo_loss(lm.model, dataclasses.replace(batch, ref_logps=moved),
                                   group=2, beta=0.04, epsilon=0.2)
    np.testing.assert_allclose(float(loss_a), float(loss_b), rtol=1e-6)
    np.testing.assert_allclose(float(aux_a["kl"]), float(aux_b["kl"]), rtol=1e-6)
    # ... whereas the same change at a sampled position does move the KL
    sampled = ref.at[0, 3].set(5.0)
    _, aux_c = grpo.grpo_loss(lm.model, dataclasses.replace(batch, ref_logps=sampled),
                              group=2, beta=0.04, epsilon=0.2)
    assert abs(float(aux_c["kl"]) - float(aux_a["kl"])) > 1e-3
