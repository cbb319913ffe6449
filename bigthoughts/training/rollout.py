"""Rollout: prompts -> generations -> rewards -> advantages -> a training batch.

Every piece but the sampling is a pure function of its inputs. The order of
questions is an endless seeded permutation per epoch (``DataOrder``), and the
sampling seed is derived from ``(seed, step)``, so a resumed run draws exactly what
an uninterrupted one would.

Advantages are Tunix's "grpo" estimator (DeepSeekMath eq. 3): within each group of
G completions of one prompt, Â_i = (r_i - mean(r)) / (std(r) + 1e-6), std with
Bessel's correction.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from bigthoughts import grpo as grpo_loss
from bigthoughts.answers import answers_equal, extract_answer
from bigthoughts.data import Example, PromptFormat
from bigthoughts.generate import Generation, Sampler, left_pad
from bigthoughts.grpo import RolloutBatch
from bigthoughts.rewards import is_exact_format
from bigthoughts.training.config import GRPOSection

PROMPT_BUCKET = 32  # prompts are left-padded to a multiple of this (fewer recompiles)


class DataOrder:
    """An endless seeded order over the examples: epoch e is permutation(seed + e)."""

    def __init__(self, size: int, seed: int, position: int = 0):
        if size < 1:
            raise ValueError("no training examples")
        self.size, self.seed, self.position = size, seed, position

    def take(self, n: int) -> list[int]:
        out = []
        for _ in range(n):
            epoch, offset = divmod(self.position, self.size)
            perm = np.random.default_rng(self.seed + epoch).permutation(self.size)
            out.append(int(perm[offset]))
            self.position += 1
        return out


def pad_right(rows: Sequence[Sequence[int]], length: int, pad: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Rows cut/padded on the right to ``length``: (tokens int32, mask float32)."""
    tokens = np.full((len(rows), length), pad, dtype=np.int32)
    mask = np.zeros((len(rows), length), dtype=np.float32)
    for i, r in enumerate(rows):
        r = list(r)[:length]
        tokens[i, : len(r)] = r
        mask[i, : len(r)] = 1.0
    return tokens, mask


def pad_left(rows: Sequence[Sequence[int]], multiple: int, pad: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """Rows left-padded to a common length, a multiple of ``multiple``: (tokens, valid)."""
    length = max(multiple, -(-max(len(r) for r in rows) // multiple) * multiple)
    return left_pad(rows, length, pad)


RewardFn = Callable[..., Sequence[float]]


def score(reward_fns: Sequence[RewardFn], prompts: Sequence[str], texts: Sequence[str],
          golds: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(total reward per completion, each function's rewards by name)."""
    per_fn = {fn.__name__: np.asarray(fn(list(prompts), list(texts), list(golds)),
                                      dtype=np.float64) for fn in reward_fns}
    total = np.sum(list(per_fn.values()), axis=0) if per_fn else np.zeros(len(texts))
    return total, per_fn


@dataclass(frozen=True)
class Rollout:
    """One step's questions, G completions each (prompt-major), and their scores."""

    examples: tuple[Example, ...]
    prompts: tuple[str, ...]
    generations: tuple[Generation, ...]
    rewards: np.ndarray
    per_fn: dict[str, np.ndarray]
    advantages: np.ndarray
    seconds: float

    @property
    def group(self) -> int:
        return len(self.generations) // len(self.prompts)

    @property
    def golds(self) -> list[str]:
        return [e.gold for e in self.examples for _ in range(self.group)]


def collect(sampler: Sampler, examples: Sequence[Example], grpo: GRPOSection, *,
            fmt: PromptFormat, reward_fns: Sequence[RewardFn], seed: int) -> Rollout:
    """Samples G completions per question with the sampler's current weights and scores
    them."""
    t0 = time.perf_counter()
    prompts = [fmt.prompt(e.question) for e in examples]
    gens = sampler.generate(
        prompts, temperatures=grpo.temperature, num_samples=grpo.num_generations,
        max_new_tokens=grpo.max_new_tokens, stop=fmt.stop, stop_inclusive=fmt.stop_inclusive,
        seed=seed, top_k=grpo.top_k, **({"calculator": True} if grpo.calculator else {}))
    texts = [g.text for g in gens]
    golds = [e.gold for e in examples for _ in range(grpo.num_generations)]
    rep_prompts = [p for p in prompts for _ in range(grpo.num_generations)]
    rewards, per_fn = score(reward_fns, rep_prompts, texts, golds)
    return Rollout(examples=tuple(examples), prompts=tuple(prompts), generations=tuple(gens),
                   rewards=rewards, per_fn=per_fn,
                   advantages=grpo_loss.group_advantages(
                       rewards, grpo.num_generations,
                       scale_by_std=grpo.scale_advantages_by_std),
                   seconds=time.perf_counter() - t0)


def to_batch(rollout: Rollout, tokenizer, max_new_tokens: int, *,
             overlong_filter: bool = False) -> RolloutBatch:
    """Token arrays of a rollout (no log-probs yet: the trainer fills them).

    Tokens the calculator inserted stay in the completion (the model conditions on
    them) but get mask 0: the policy did not choose them, so they count in neither the
    policy loss nor the KL. ``overlong_filter`` (DAPO) zeroes the rows cut by
    ``max_new_tokens``."""
    prompt_ids = [tokenizer.encode(p, add_bos=True) for p in rollout.prompts]
    p_tok, p_valid = pad_left(prompt_ids, PROMPT_BUCKET, tokenizer.pad_id())
    c_tok, c_mask = pad_right([g.token_ids for g in rollout.generations], max_new_tokens,
                              tokenizer.pad_id())
    for row, g in enumerate(rollout.generations):
        inserted = np.asarray(g.inserted[:max_new_tokens], dtype=bool)
        c_mask[row, : len(inserted)][inserted] = 0.0
    if overlong_filter:
        c_mask *= grpo_loss.overlong_weights([g.finish_reason for g in rollout.generations]
                                             )[:, None]
    return RolloutBatch(prompt_tokens=jnp.asarray(p_tok), prompt_valid=jnp.asarray(p_valid),
                        completion_tokens=jnp.asarray(c_tok),
                        completion_mask=jnp.asarray(c_mask),
                        advantages=jnp.asarray(rollout.advantages, dtype=jnp.float32))


def rollout_stats(rollout: Rollout) -> dict[str, float]:
    """Reward, format compliance, accuracy (strict extraction) and length of a rollout."""
    texts = [g.text for g in rollout.generations]
    n_tokens = sum(g.num_tokens for g in rollout.generations)
    return {
        "reward_mean": float(rollout.rewards.mean()),
        **{f"reward/{k}": float(v.mean()) for k, v in rollout.per_fn.items()},
        "format_compliance": float(np.mean([is_exact_format(t) for t in texts])),
        "accuracy": float(np.mean([answers_equal(extract_answer(t, strict=True), gold)
                                   for t, gold in zip(texts, rollout.golds, strict=True)])),
        "completion_length": n_tokens / len(texts),
        "rollout_seconds": rollout.seconds,
        "tokens_per_second": n_tokens / max(rollout.seconds, 1e-9),
    }


def sample_rows(rollout: Rollout) -> list[dict]:
    """One ``{"example", "text", "reward"}`` row per completion (for samples.jsonl)."""
    ids = [e.id for e in rollout.examples for _ in range(rollout.group)]
    return [{"example": i, "text": g.text, "reward": float(r)}
            for i, g, r in zip(ids, rollout.generations, rollout.rewards, strict=True)]
