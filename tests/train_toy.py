"""A toy GRPO task on a tiny random Gemma, shared by the training tests and their
subprocesses: reward = share of the completion's characters that are lowercase ASCII
letters (about 10% for the random byte-level model at the start)."""

from __future__ import annotations

from bigthoughts.data import Example
from bigthoughts.models.lora import LoraSection
from bigthoughts.models.registry import LoadedModel, ModelSpec
from bigthoughts.training.config import (
    DataSection,
    GRPOSection,
    OptimSection,
    TrainConfig,
)
from tests.tiny import tiny_model


def lowercase_share(prompts, completions, answer, **kwargs):
    """Fraction of lowercase ASCII letters among each completion's characters (0..1)."""
    return [sum("a" <= ch <= "z" for ch in c) / max(1, len(c)) for c in completions]


def toy_setup(out_dir: str, *, max_steps: int = 4, seed: int = 0, lr: float = 3e-2,
              generations: int = 4, mesh_fsdp: int = 1, iterations: int = 1,
              warmup: int = 1, dynamic_sampling: int = 0):
    loaded = toy_loaded(seed)
    examples = [Example(id=f"toy-{i}", question=f"say a {i}", answer=f"#### {i}", gold=str(i))
                for i in range(12)]
    config = TrainConfig(
        grpo=GRPOSection(num_generations=generations, max_new_tokens=12, beta=0.04,
                         num_iterations=iterations, dynamic_sampling=dynamic_sampling),
        data=DataSection(style="zeroshot", shots=0), lora=LoraSection(rank=4, alpha=8.0),
        optim=OptimSection(learning_rate=lr, warmup_steps=warmup), prompts_per_step=2,
        max_steps=max_steps, save_every=2, seed=seed, out_dir=out_dir, mesh_fsdp=mesh_fsdp)
    return config, examples, loaded


def run_toy(out_dir: str, *, max_steps: int, horizon: int | None = None, **kw):
    """Trains ``max_steps`` steps of a run whose schedule spans ``horizon`` steps."""
    from bigthoughts.training import train

    config, examples, loaded = toy_setup(out_dir, max_steps=horizon or max_steps, **kw)
    return train(config, max_steps=max_steps, examples=examples, loaded=loaded,
                 reward_fns=[lowercase_share])


def toy_loaded(seed: int = 0) -> LoadedModel:
    """The tiny random Gemma with its byte tokenizer, as ``load_model`` returns models."""
    model, tok = tiny_model(seed=seed, scale=0.3)
    return LoadedModel(model=model, tokenizer=tok, source="tiny",
                       spec=ModelSpec(name="tiny", family="gemma3", instruction_tuned=False))
