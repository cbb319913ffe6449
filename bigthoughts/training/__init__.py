"""GRPO fine-tuning of a Gemma policy with LoRA; the package's files are the stages.

    config     the recipe (sections documented with the paper's G, μ, β, ε)
    rollout    prompts -> generations -> rewards -> advantages -> batch
    state      LoRA, optimizer, device mesh
    grpo_trainer  the GRPO stage: log-probs, μ updates, checkpoints, evaluation, export
    loop       the relay loop over any stage (deadline, saves, evaluation, export)
    relay      time budgets and atomic checkpoints
    rundir     run-directory identity (config.json) and logs (metrics/samples.jsonl)
    progress   the line per step a user watches

The loss itself is ``bigthoughts.training.grpo_loss``. Example::

    bigthoughts train --config configs/gemma3-270m-cpu.yaml --max-steps 2
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from pathlib import Path

import bigthoughts.training.hosts as hosts
from bigthoughts.config import ConfigError, to_dict
from bigthoughts.data import Example, load_gsm8k, read_ids
from bigthoughts.models.lora import LoraSection
from bigthoughts.models.registry import LoadedModel
from bigthoughts.rewards import make_reward_fns
from bigthoughts.rundir import lock_run_dir
from bigthoughts.training.adapter import check_adapter_path, load_starting_model
from bigthoughts.training.config import TrainConfig, load_train_config
from bigthoughts.training.grpo_trainer import GRPOTrainer
from bigthoughts.training.loop import OutOfMemory, StageResult, is_out_of_memory, run_stage
from bigthoughts.training.progress import Progress
from bigthoughts.training.relay import EXIT_NO_SIGNAL, EXIT_RELAY, Deadline
from bigthoughts.training.rundir import check_run_dir, prepare_run_dir
from bigthoughts.training.sft import SFTStage, prepare_data
from bigthoughts.training.sft_config import SFTConfig, load_sft_config
from bigthoughts.training.state import lean_cpu_scheduler
from bigthoughts.training.trackers import check_trackers

__all__ = ["EXIT_NO_SIGNAL", "EXIT_RELAY", "GRPOTrainer", "OutOfMemory", "SFTConfig", "StageResult",
           "TrainConfig", "load_sft_config", "load_train_config", "sft", "train"]


def _deadline(time_budget: str | float | None) -> Deadline:
    try:
        return Deadline.from_budget(time_budget)
    except ValueError as err:
        raise ConfigError(f"--time-budget: {err}") from err


def _data(config: TrainConfig, examples: Sequence[Example] | None
          ) -> tuple[list[Example], list[Example]]:
    """Training questions and (when evaluating periodically) the held-out ones: the
    first ``eval_examples`` of ``data.dev_ids_file`` (which never train), else of test."""
    data = config.data
    dev_ids = read_ids(data.dev_ids_file) if data.dev_ids_file else None
    train_set = list(examples) if examples is not None else load_gsm8k(
        data.split, data.path, limit=data.limit,
        ids=read_ids(data.ids_file) if data.ids_file else None)
    if dev_ids is not None:
        dev = set(dev_ids)
        train_set = [e for e in train_set if e.id not in dev]
    held = [] if not config.eval_every else (
        load_gsm8k(data.split, data.path, ids=dev_ids)[: config.eval_examples]
        if dev_ids is not None else load_gsm8k("test", data.path, limit=config.eval_examples))
    if not train_set:
        raise ConfigError("no training examples")
    return train_set, held


def _run_record(config: TrainConfig | SFTConfig) -> dict:
    """The config as the run directory records it; with ``data.ids_file``, also the
    SHA-256 of the id list, so a rerun with an edited list is refused, not resumed."""
    record = to_dict(config)
    for key in ("ids_file", "dev_ids_file"):
        ids_file = getattr(config.data, key, None)
        if ids_file:
            listed = "\n".join(read_ids(ids_file)).encode()
            record["data"][key.replace("file", "sha256")] = hashlib.sha256(listed).hexdigest()
    return record


def _one_writer(out: Path):
    """The run directory's writer lock, held by the process that writes it (process 0
    of a multi-process run, ``hosts``); the others write nothing there."""
    return lock_run_dir(out) if hosts.writer() else contextlib.nullcontext()


def _prepare(out: Path, record: dict) -> None:
    """``prepare_run_dir`` by the writer; the other processes wait until it is done."""
    if hosts.writer():
        prepare_run_dir(out, record)
    hosts.barrier("run directory ready")


def _checked_start(config: TrainConfig | SFTConfig, max_steps: int | None,
                   time_budget: str | float | None, out_dir: str | Path | None
                   ) -> tuple[int, Path, Deadline]:
    """(step limit, run directory, deadline) once the limit, the budget, the run
    directory and the adapter path are known to be usable; nothing is written."""
    limit = config.max_steps if max_steps is None else max_steps
    if limit < 0:
        raise ConfigError(f"--max-steps must be >= 0, got {limit}")
    out = Path(out_dir or config.out_dir)
    deadline = _deadline(time_budget)
    check_run_dir(out, _run_record(config))
    check_adapter_path(config.model, _trained_lora(config))
    check_trackers(config.report)
    if isinstance(config, TrainConfig):
        _check_completion_length(config)
    return limit, out, deadline


def _check_completion_length(config: TrainConfig) -> None:
    """``grpo.max_new_tokens`` must leave room for a prompt in the model's context."""
    from bigthoughts.models.registry import REGISTRY

    spec = REGISTRY.get(config.model.name)
    if spec is not None and config.grpo.max_new_tokens >= spec.max_context:
        raise ConfigError(
            f"grpo.max_new_tokens={config.grpo.max_new_tokens} leaves no room for a prompt in "
            f"{spec.name}'s context of {spec.max_context} tokens; use fewer new tokens")


def _trained_lora(config: TrainConfig | SFTConfig) -> LoraSection | None:
    """The stage's LoRA section; None when it trains every weight."""
    return None if getattr(config, "full_finetune", False) else config.lora


def train(config: TrainConfig, *, max_steps: int | None = None,
          time_budget: str | float | None = None, out_dir: str | Path | None = None,
          examples: Sequence[Example] | None = None, loaded: LoadedModel | None = None,
          reward_fns=None, progress: Progress | None = None) -> StageResult:
    """Runs (or resumes) a GRPO run; returns where it stopped and each step's record.

    Everything a user can get wrong (the limit, the budget, the data, a different run
    in ``out_dir``) is checked before the model loads and before anything is written.
    ``examples``/``loaded``/``reward_fns`` let tests inject a toy task and a tiny model.
    """
    lean_cpu_scheduler()  # before the model load starts JAX: see training.state
    limit, out, deadline = _checked_start(config, max_steps, time_budget, out_dir)
    train_set, held = _data(config, examples)
    fns = reward_fns or make_reward_fns(config.rewards.weights,
                                        min_words=config.rewards.min_reasoning_words)
    if config.grpo.rollout_engine == "llama.cpp":
        from bigthoughts.training.llamacpp_rollouts import rollout_gguf

        rollout_gguf(config)  # refused before the model loads
    with _one_writer(out):  # a second run into out is refused
        try:
            lm, init = (loaded, None) if loaded else load_starting_model(config.model,
                                                                         config.lora)
            _prepare(out, _run_record(config))
            stage = GRPOTrainer(config, out, examples=train_set, loaded=lm, reward_fns=fns,
                                held_out=held, lora_init=init)
        except (MemoryError, RuntimeError) as exc:
            if is_out_of_memory(exc):
                raise OutOfMemory(f"out of memory while loading the model; use a smaller "
                                  f"model.dtype or lower {GRPOTrainer.memory_knobs}") from exc
            raise
        del lm, loaded  # the stage holds the LoRA-wrapped copy: free the original (~1 GB)
        return run_stage(stage, limit=limit, save_every=config.save_every,
                         eval_every=config.eval_every, deadline=deadline,
                         progress=progress or Progress(), export_dir=out / "export")


def sft(config: SFTConfig, *, max_steps: int | None = None,
        time_budget: str | float | None = None, out_dir: str | Path | None = None,
        examples: Sequence[Example] | None = None, loaded: LoadedModel | None = None,
        progress: Progress | None = None) -> StageResult:
    """Runs (or resumes) a supervised warm start; same relay and checks as :func:`train`."""
    lean_cpu_scheduler()
    limit, out, deadline = _checked_start(config, max_steps, time_budget, out_dir)
    if examples is None:
        examples = load_gsm8k("train", config.data.path, limit=config.data.limit)
    lm, init = (loaded, None) if loaded else load_starting_model(config.model,
                                                                 _trained_lora(config))
    try:
        pairs, val_pairs, held, dropped = prepare_data(config, lm.tokenizer, examples)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    with _one_writer(out):  # a second run into out is refused
        _prepare(out, _run_record(config))
        shown = progress or Progress()
        stage = _sft_stage(config, out, lm, init, (pairs, val_pairs, held), dropped, shown)
        del lm, loaded  # the stage keeps what it needs: free the original weights (~1 GB)
        return run_stage(stage, limit=limit, save_every=config.save_every,
                         eval_every=config.eval_every, deadline=deadline, progress=shown,
                         export_dir=out / "export")


def _sft_stage(config, out, lm, init, data, dropped: int, shown: Progress) -> SFTStage:
    """The supervised stage over ``data`` (train pairs, validation pairs, held-out
    questions), after saying what was skipped."""
    pairs, val_pairs, held = data
    why = f"longer than data.max_length={config.data.max_length}"
    if config.data.loss_on == "results":
        why += " or with no result the calculator agrees with"
    shown.note(f"sft: {len(pairs)} training pairs ({dropped} {why} skipped), "
               f"{len(val_pairs)} held out")
    return SFTStage(config, out, train=pairs, validation=val_pairs, held_out=held, loaded=lm,
                    lora_init=init)
