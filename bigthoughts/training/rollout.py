"""Rollout: prompts -> generations -> rewards -> advantages -> a training batch.

Every piece but the sampling is a pure function of its inputs. The order of
questions is an endless seeded permutation per epoch (``DataOrder``), and the
sampling seed is derived from ``(seed, step)``, so a resumed run draws exactly what
an uninterrupted one would.

With ``grpo.dynamic_sampling`` (DAPO), ``gather`` replaces groups whose rewards are all
equal (zero advantages) by groups of further prompts, up to a number of extra draws.

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

import bigthoughts.training.grpo_loss as grpo_loss
from bigthoughts.answers import answers_equal, extract_answer
from bigthoughts.data import Example, PromptFormat
from bigthoughts.inference.contract import Engine, Generation
from bigthoughts.inference.jax_sampler import left_pad
from bigthoughts.rewards import is_exact_format
from bigthoughts.training.config import GRPOSection
from bigthoughts.training.grpo_loss import RolloutBatch

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


def collect(sampler: Engine, examples: Sequence[Example], grpo: GRPOSection, *,
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


def step_seed(seed: int, step: int, draw: int = 0) -> int:
    """The sampling seed of a step's ``draw``-th rollout (0: the step's first, whose seed
    is what runs used before dynamic sampling existed)."""
    if draw == 0:
        return seed * 1_000_003 + step
    return int(np.random.SeedSequence([seed, step, draw]).generate_state(1)[0])


def informative(rollout: Rollout) -> np.ndarray:
    """Per group, whether its rewards differ (a group of equal rewards has Â = 0)."""
    rewards = rollout.rewards.reshape(len(rollout.prompts), rollout.group)
    return rewards.max(axis=1) - rewards.min(axis=1) > 1e-9


def signal_warnings(rollout: Rollout, *, truncated_limit: float) -> tuple[list[str], bool]:
    """(warning lines, whether the step carries no policy gradient) for the groups a step
    trains on: no group with reward spread, more than ``truncated_limit`` of the
    completions cut at ``max_new_tokens``, or every completion the same text."""
    warnings = []
    spread = int(informative(rollout).sum())
    texts = [g.text for g in rollout.generations]
    identical = len(texts) > 1 and len(set(texts)) == 1
    if spread == 0:
        warnings.append(f"no group has reward spread (all {len(rollout.prompts)} groups "
                        "have equal rewards): this step's policy gradient is zero")
    cut = float(np.mean([g.finish_reason == "length" for g in rollout.generations]))
    if cut > truncated_limit:
        warnings.append(f"{cut:.0%} of the completions hit max_new_tokens "
                        f"(above grpo.guard_truncated = {truncated_limit:.0%})")
    if identical:
        warnings.append(f"all {len(texts)} completions are the same text (the policy "
                        "has collapsed, or the temperature is 0)")
    return warnings, spread == 0 or identical


def concat(rollouts: Sequence[Rollout], groups: Sequence[int] | None = None) -> Rollout:
    """The rollouts as one, prompt-major; with ``groups``, only those groups (indices
    into the concatenation), in that order."""
    if not rollouts or len({r.group for r in rollouts}) != 1:
        raise ValueError("rollouts to join need the same group size")
    size = rollouts[0].group
    examples = [e for r in rollouts for e in r.examples]
    prompts = [p for r in rollouts for p in r.prompts]
    gens = [g for r in rollouts for g in r.generations]
    rows = np.concatenate([r.rewards for r in rollouts])
    per_fn = {k: np.concatenate([r.per_fn[k] for r in rollouts]) for k in rollouts[0].per_fn}
    adv = np.concatenate([r.advantages for r in rollouts])
    pick = list(range(len(prompts))) if groups is None else list(groups)
    take = [g * size + i for g in pick for i in range(size)]
    return Rollout(examples=tuple(examples[g] for g in pick),
                   prompts=tuple(prompts[g] for g in pick),
                   generations=tuple(gens[i] for i in take), rewards=rows[take],
                   per_fn={k: v[take] for k, v in per_fn.items()}, advantages=adv[take],
                   seconds=sum(r.seconds for r in rollouts))


def gather(draw: Callable[[int, int], Rollout], groups: int, extra: int
           ) -> tuple[Rollout, list[int]]:
    """DAPO's dynamic sampling over ``draw(n_prompts, draw_index) -> Rollout``.

    Draws ``groups`` prompts; while fewer than ``groups`` of the groups drawn are
    informative and fewer than ``extra`` extra prompts have been drawn, draws as many
    more as are missing. Returns (everything drawn, the groups to train on). These are
    ``groups`` indices: the informative groups in the order drawn, topped up with the
    first uninformative ones when the extra draws ran out (they add only the KL term);
    ``concat([everything], kept)`` is the batch."""
    drawn = [draw(groups, 0)]
    missing, spent = groups - int(informative(drawn[0]).sum()), 0
    while missing > 0 and spent < extra:
        n = min(missing, extra - spent)
        spent += n
        drawn.append(draw(n, len(drawn)))
        missing -= int(informative(drawn[-1]).sum())
    everything = concat(drawn)
    useful = informative(everything)
    keep = list(np.flatnonzero(useful)[:groups])
    keep += list(np.flatnonzero(~useful)[: groups - len(keep)])
    return everything, sorted(int(i) for i in keep)


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
    sampled = None  # the engine's log-probs of its draws, where every row has them
    if all(len(g.sample_logprobs) == len(g.token_ids) for g in rollout.generations):
        sampled = np.zeros(c_tok.shape, np.float32)
        for row, g in enumerate(rollout.generations):
            values = g.sample_logprobs[:max_new_tokens]
            sampled[row, : len(values)] = values
    return RolloutBatch(prompt_tokens=jnp.asarray(p_tok), prompt_valid=jnp.asarray(p_valid),
                        completion_tokens=jnp.asarray(c_tok),
                        completion_mask=jnp.asarray(c_mask),
                        advantages=jnp.asarray(rollout.advantages, dtype=jnp.float32),
                        sampler_logps=None if sampled is None else jnp.asarray(sampled))


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


def sample_rows(rollout: Rollout, trained: Sequence[int] | None = None) -> list[dict]:
    """One ``{"example", "text", "reward"}`` row per completion (for samples.jsonl); with
    ``trained`` (the groups a dynamic-sampling step trained on), also ``"trained"``."""
    rows = []
    for row, (g, r) in enumerate(zip(rollout.generations, rollout.rewards, strict=True)):
        group = row // rollout.group
        rows.append({"example": rollout.examples[group].id, "text": g.text, "reward": float(r),
                     **({} if trained is None else {"trained": group in trained})})
    return rows
