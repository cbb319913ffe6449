"""A run directory's identity and its logs.

``config.json`` names the recipe a directory belongs to; a rerun with a different
recipe is refused, naming each differing key with both values. ``metrics.jsonl``
(one record per step or evaluation), ``samples.jsonl`` (every completion with its
reward) and the trackers' copies (TensorBoard, W&B: ``trackers``) are appended as the
run goes; on resume they are cut
back to the checkpoint's step (atomically), so redone steps appear once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import bigthoughts.training.hosts as hosts
from bigthoughts.config import ConfigError, to_dict
from bigthoughts.files import atomic_write_json, atomic_write_text, read_jsonl
from bigthoughts.rundir import differences, flatten
from bigthoughts.training.trackers import TensorBoard, Tracker, open_trackers

# Keys that change no recipe: where metrics are reported, a memory knob (a relay run may
# resume on a machine with less memory), the no-signal guards, how often to save and
# evaluate, and which engine samples the rollouts (a relay may move between a CPU with
# llama.cpp and an accelerator; the draws differ, the recipe does not). A run may resume
# with them changed, and runs saved before a key existed resume as if it had its default.
RESUMABLE_CHANGES: tuple[str, ...] = ("grpo.remat_layers", "grpo.rollout_engine",
                                      "grpo.micro_batch_prompts", "grpo.guard_truncated",
                                      "grpo.guard_patience", "save_every",
                                      "keep_checkpoints", "eval_every", "eval_examples",
                                      "report.to", "report.samples_every",
                                      "report.wandb_project")
# Keys added after runs were saved, with the value that reproduces what those runs did:
# a saved config without the key compares as if it had this value.
ADDED_KEYS: dict[str, object] = {"grpo.dynamic_sampling": 0, "data.dev_ids_file": None,
                                  "eval_max_new_tokens": None,
                                  "grpo.sampler_correction": None,
                                  "grpo.sampler_correction_cap": 2.0}


def run_identity(config: Mapping, resumable_changes=RESUMABLE_CHANGES) -> dict:
    """The config's keys (flattened, ``grpo.beta``) that make a run directory's identity."""
    flat = flatten({k: v for k, v in config.items() if k != "out_dir"})
    return {k: v for k, v in flat.items() if k not in resumable_changes}


def config_differences(saved: Mapping, now: Mapping, resumable_changes=RESUMABLE_CHANGES
                       ) -> list[str]:
    """``["grpo.beta: 0.04 (saved) != 0.0 (now)", ...]`` for each differing key."""
    return differences(run_identity(saved, resumable_changes),
                       run_identity(now, resumable_changes), defaults=ADDED_KEYS)


def check_run_dir(out: Path, config_dict: Mapping, *,
                  resumable_changes: Sequence[str] = RESUMABLE_CHANGES) -> None:
    """Raises ConfigError when ``out`` cannot hold this run: it is a file, its
    ``config.json`` is unreadable, or it names a different recipe. Writes nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory; use another --out")
    path = out / "config.json"
    if not path.exists():
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path} is unreadable ({err}); use another --out") from err
    diff = config_differences(saved, config_dict, resumable_changes)
    if diff:
        raise ConfigError(f"{out} holds a different run ({'; '.join(diff)}); use another --out")


def prepare_run_dir(out: Path, config_dict: Mapping, *,
                    resumable_changes: Sequence[str] = RESUMABLE_CHANGES) -> None:
    """Creates ``out`` with ``config.json`` (atomically), or checks that it holds the
    same recipe (``check_run_dir``)."""
    out = Path(out)
    check_run_dir(out, config_dict, resumable_changes=resumable_changes)
    if not (out / "config.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "config.json", dict(config_dict), indent=1)


class MetricsLog:
    """Appends step records to ``metrics.jsonl`` and completions to ``samples.jsonl``,
    and passes both to the run's trackers (``trackers``: TensorBoard, W&B; default
    TensorBoard); on a process other than the run's writer (``hosts.writer``), writes
    nothing."""

    def __init__(self, out: Path, *, trackers: Sequence[Tracker] | None = None,
                 enabled: bool | None = None):
        self.out = Path(out)
        self.metrics_path = self.out / "metrics.jsonl"
        self.samples_path = self.out / "samples.jsonl"
        self.enabled = hosts.writer() if enabled is None else enabled
        self.trackers = [] if not self.enabled else (
            [TensorBoard(self.out)] if trackers is None else list(trackers))

    @classmethod
    def for_run(cls, out: Path, config) -> MetricsLog:
        """The log of a stage run by ``config`` (its ``report`` section picks trackers)."""
        enabled = hosts.writer()
        trackers = open_trackers(Path(out), to_dict(config), config.report) if enabled else []
        return cls(out, trackers=trackers, enabled=enabled)

    def append(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        values = {k: v for k, v in record.items()
                  if isinstance(v, float | int) and not isinstance(v, bool) and k != "step"}
        for tracker in self.trackers:
            tracker.scalars(record["step"], values)

    def append_samples(self, step: int, rows: Sequence[dict]) -> None:
        if not self.enabled:
            return
        with open(self.samples_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": step, "completions": list(rows)}) + "\n")
        for tracker in self.trackers:
            tracker.samples(step, rows)

    def truncate_after(self, step: int) -> None:
        """Drops the lines of steps after ``step`` (they will be redone), atomically."""
        if not self.enabled:
            return
        for path in (self.metrics_path, self.samples_path):
            if path.exists():
                keep = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
                atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
