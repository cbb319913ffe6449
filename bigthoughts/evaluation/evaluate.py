"""GSM8K evaluation: modes, resumable results, and a summary with confidence intervals.

Three modes, one code path (:class:`bigthoughts.inference.solve.Solver`):

* ``zero-shot``: the untrained-model baseline, one greedy pass (temperature 0) with
  the model's task prompt. For a base model that prompt is the few-shot completion
  prompt (a base model continues a pattern, it does not follow instructions), and
  the summary's ``prompt_note`` says so; ``shots=0`` makes it a true zero-shot
  instruction prompt. It runs exactly like ``single``; the mode names the intent.
* ``single``: one greedy pass.
* ``vote``: ``votes`` samples on the temperature ladder, then a vote
  (majority | weighted | adaptive).

A run directory holds ``run.json`` (what was asked: config, model, a hash of the
question ids), ``results.jsonl`` (one line per finished question, written a batch at
a time and fsynced) and ``summary.json`` (written at the end). Rerunning the same
command resumes after the last finished question: a torn last line is cut away and
finished ids are skipped. Batch boundaries are fixed by position in the question
list and each batch has its own seed, so an interrupted-and-resumed run gives the
same answers as an uninterrupted one.

Example::

    summary = run_eval(load_model(), load_gsm8k("test", limit=50),
                       EvalConfig(mode="vote", votes=5), Path("runs/vote"))
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bigthoughts.answers import FAILURE_BUCKETS, answers_equal, extract, failure_bucket
from bigthoughts.config import ConfigError
from bigthoughts.data import PROMPT_STYLES, Example, PromptFormat, check_shots
from bigthoughts.evaluation.metrics import percentiles, wilson_interval
from bigthoughts.files import JsonlError, append_jsonl, atomic_write_json, read_jsonl
from bigthoughts.inference.voting import MAX_VOTES, STRATEGIES, VoteConfig
from bigthoughts.models.resolve import prompt_format_for
from bigthoughts.models.spec import portable_source
from bigthoughts.rewards import is_exact_format, reasoning_steps
from bigthoughts.rundir import differences, lock_run_dir

if TYPE_CHECKING:
    from bigthoughts.inference.jax_sampler import Sampler
    from bigthoughts.inference.solve import Solution, Solver
    from bigthoughts.models.registry import LoadedModel

__all__ = [
    "MODES",
    "EvalConfig",
    "RunDirError",
    "prompt_note",
    "read_results",
    "run_eval",
    "summarize",
]

MODES = ("zero-shot", "single", "vote")
RESULTS, RUN, SUMMARY = "results.jsonl", "run.json", "summary.json"


class RunDirError(ConfigError):
    """A run directory that cannot be used: another run's files, or unreadable ones."""


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """What to evaluate and how.

    ``votes`` is the number of samples k per question in ``vote`` mode (ignored by the
    greedy modes), drawn on ``voting.temperature_schedule(k)``. ``style=None`` takes
    the model's own prompt style (``fewshot`` for base models, ``chat`` for
    instruction-tuned ones); ``shots``
    worked examples go into few-shot prompts. ``batch_size`` questions share one
    generation call.
    """

    mode: Literal["zero-shot", "single", "vote"] = "single"
    split: str = "test"
    limit: int | None = None
    votes: int = 5
    strategy: str = "majority"
    batch_size: int = 8
    max_new_tokens: int = 256
    style: str | None = None
    shots: int = 2
    seed: int = 0
    calculator: bool = False  # GSM8K's <<expr=result>> calculator inside the decode
    ids_file: str | None = None  # the id list the questions were chosen from (a record)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown eval mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if not isinstance(self.split, str) or not self.split:
            raise ValueError(f"split must be a non-empty string, got {self.split!r}")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {self.limit}")
        if not 1 <= self.votes <= MAX_VOTES:
            raise ValueError(f"votes must be between 1 and {MAX_VOTES}, got {self.votes}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown vote strategy {self.strategy!r}; "
                             f"valid: {', '.join(STRATEGIES)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.style is not None and self.style not in PROMPT_STYLES:
            raise ValueError(f"unknown prompt style {self.style!r}; "
                             f"choose one of {', '.join(PROMPT_STYLES)} or None (the model's own)")
        check_shots(self.shots)

    def vote_config(self) -> VoteConfig:
        """The solver's vote settings: one greedy sample unless ``mode == "vote"``."""
        if self.mode != "vote":
            return VoteConfig(votes=1, strategy="majority", max_new_tokens=self.max_new_tokens)
        return VoteConfig(votes=self.votes, strategy=self.strategy,
                          max_new_tokens=self.max_new_tokens)

    @property
    def samples_per_question(self) -> int:
        """k in ``vote`` mode, 1 in the greedy modes."""
        return self.votes if self.mode == "vote" else 1


def adapted_kind(kind: str) -> str:
    """How a prompt note names a model kind once it runs with an adapter:
    "base model" -> "fine-tuned base"."""
    return f"fine-tuned {kind.removesuffix(' model')}"


def prompt_note(style: str, shots: int, instruction_tuned: bool, adapted: bool = False) -> str:
    """A short human description of the prompt a run used (``adapted``: the model ran
    with a fine-tuned adapter or checkpoint, so it is no longer the base model)."""
    kind = "instruction-tuned model" if instruction_tuned else "base model"
    if adapted:
        kind = adapted_kind(kind)
    if style == "chat":
        return f"{kind}: chat prompt, instructions only (zero-shot)"
    if style == "zeroshot" or shots == 0:
        return f"{kind}: zero-shot instruction prompt (no worked examples)"
    return f"{kind}: {shots}-shot completion prompt"


# --- results file ------------------------------------------------------------------
def read_results(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """The records of a ``results.jsonl`` (:func:`bigthoughts.files.read_jsonl`).

    A torn last line (a kill during a write) is ignored; with ``repair=True`` it is
    also cut from the file. Any other unreadable line, or a record without an
    ``id``, raises :class:`RunDirError`.
    """
    try:
        records = read_jsonl(path, repair=repair)
    except (OSError, JsonlError) as err:
        raise RunDirError(f"cannot read results ({err}); fix or delete the file") from err
    for lineno, record in enumerate(records, start=1):
        if "id" not in record:
            raise RunDirError(f"{path}: record {lineno} has no 'id'; fix or delete the file")
    return records


def _run_source(source: str, out_dir: Path) -> str:
    """``LoadedModel.source`` as recorded in a run: package sources as they are, paths
    relative to the run directory (never this machine's absolute path). An engine
    prefix (``llama.cpp:``) and adapters (``BASE + NAME#sha256=...``) are kept as
    they are; only the base model's path is rewritten."""
    engine = "llama.cpp:" if source.startswith("llama.cpp:") else ""
    base, plus, adapters = source[len(engine):].partition(" + ")
    if not base.startswith("pypi:"):
        path, sep, digest = base.partition("#")
        base = portable_source(path, base=out_dir) + sep + digest
    return engine + base + plus + adapters


def _fingerprint(lm: LoadedModel, examples: Sequence[Example], config: EvalConfig,
                 out_dir: Path) -> dict:
    ids = "\n".join(e.id for e in examples).encode()
    return {
        "config": dataclasses.asdict(config),
        "model": {"name": lm.spec.name, "source": _run_source(lm.source, out_dir)},
        "examples": {"n": len(examples), "ids_sha256": hashlib.sha256(ids).hexdigest()},
    }


_EXTENSIBLE = ("config.limit: ", "examples.n: ", "examples.ids_sha256: ")


def _extends(stored: Mapping, fingerprint: Mapping, diff: list[str],
             done: Sequence[Mapping[str, Any]], ids: set[str]) -> bool:
    """Whether the new run is the stored one with more questions (a larger or no
    ``--limit``): only the limit and the question list differ, and every finished
    question (``done``) is among the new ones. Its results then stay and the rest are
    added."""
    if not all(d.startswith(_EXTENSIBLE) for d in diff):
        return False
    old_n = (stored.get("examples") or {}).get("n")
    if not isinstance(old_n, int) or old_n > fingerprint["examples"]["n"]:
        return False
    return all(r.get("id") in ids for r in done)


def _open_run(out_dir: Path, fingerprint: dict, ids: set[str]) -> list[dict[str, Any]]:
    """Checks (or creates) ``run.json``; returns the records already finished."""
    out_dir.mkdir(parents=True, exist_ok=True)
    run_path, results = out_dir / RUN, out_dir / RESULTS
    records: list[dict[str, Any]] = []
    if run_path.exists():
        records = read_results(results, repair=True) if results.exists() else []
        try:
            stored = json.loads(run_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise RunDirError(f"{run_path} is unreadable ({err}); use another --out") from err
        diff = differences({k: stored.get(k) for k in fingerprint}, fingerprint)
        if diff and _extends(stored, fingerprint, diff, records, ids):
            atomic_write_json(run_path, fingerprint, indent=2)  # a larger --limit: same run
            diff = []
        if diff:
            raise RunDirError(
                f"{out_dir} holds a different run ({'; '.join(diff)}); use another --out "
                "directory, or delete this one to start over")
    elif results.exists() and results.stat().st_size > 0:
        raise RunDirError(f"{results} exists but {run_path} does not, so it cannot be "
                          "resumed safely; use another --out directory")
    else:
        atomic_write_json(run_path, fingerprint, indent=2)
    seen: set[str] = set()
    for r in records:
        if r["id"] in seen or r["id"] not in ids:
            raise RunDirError(f"{results}: unexpected or duplicate id {r['id']!r}; "
                              "use another --out directory")
        seen.add(r["id"])
    return records


# --- one question ------------------------------------------------------------------
def _record(example: Example, solution: Solution, style: str) -> dict[str, Any]:
    traces = []
    for gen in solution.generations:
        found = extract(gen.text)
        traces.append({
            "temperature": gen.temperature, "text": gen.text, "answer": found.value,
            "strict_answer": found.value if found.mode == "strict" else None,
            "format_strict": is_exact_format(gen.text), "format_lenient": found.value is not None,
            "failure_bucket": failure_bucket(gen.text), "tokens": gen.num_tokens,
            "logprob": gen.logprob, "finish_reason": gen.finish_reason,
            **_step_fields(gen.text),
        })
    vote = solution.vote
    return {
        "id": example.id, "question": example.question, "gold": example.gold,
        "prompt_style": style, "traces": traces,
        "vote": {"answer": vote.answer, "agreement": vote.agreement, "counts": vote.counts,
                 "samples_used": vote.votes_used},
        "prediction": vote.answer, "correct": answers_equal(vote.answer, example.gold),
        "seconds": solution.seconds,
    }


def _step_fields(text: str) -> dict[str, int]:
    """Per-trace counts of the reasoning's arithmetic steps (:mod:`bigthoughts.steps`)."""
    report = reasoning_steps(text)
    return {"steps_checked": report.checked, "steps_wrong": report.wrong}


# --- summary -----------------------------------------------------------------------
def _step_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``right_answer_wrong_steps``: the share of questions answered right by a trace
    with at least one wrong step (the first trace holding the voted answer; in the
    greedy modes, the only one), plus step totals. None for runs recorded before
    traces had step counts."""
    traces = [t for r in records for t in r["traces"]]
    if not records or any("steps_wrong" not in t for t in traces):
        return {"right_answer_wrong_steps": None, "steps": None}
    lucky = 0
    for r in records:
        winner = r["vote"]["answer"]
        chosen = next((t for t in r["traces"] if answers_equal(t["answer"], winner)), None)
        lucky += bool(r["correct"] and chosen is not None and chosen["steps_wrong"])
    return {"right_answer_wrong_steps": lucky / len(records),
            "steps": {"checked": sum(int(t["steps_checked"]) for t in traces),
                      "wrong": sum(int(t["steps_wrong"]) for t in traces)}}


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _finite(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else x


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The numbers of a run, computed from its result records alone."""
    n = len(records)
    k = sum(bool(r["correct"]) for r in records)
    traces = [t for r in records for t in r["traces"]]
    firsts = [r["traces"][0] for r in records if r["traces"]]
    seconds = [float(r["seconds"]) for r in records]
    tokens = sum(int(t["tokens"]) for t in traces)
    p50, p95 = percentiles(seconds, (50, 95))
    buckets = Counter(t["failure_bucket"] for t in traces if t["failure_bucket"])
    return {
        "n": n,
        "correct": k,
        "accuracy": k / n if n else None,
        "accuracy_ci95": list(wilson_interval(k, n)),
        "format_strict": _mean([bool(t["format_strict"]) for t in traces]),
        "format_lenient": _mean([bool(t["format_lenient"]) for t in traces]),
        "format_strict_first": _mean([bool(t["format_strict"]) for t in firsts]),
        "format_lenient_first": _mean([bool(t["format_lenient"]) for t in firsts]),
        "failure_buckets": {b: buckets.get(b, 0) for b in FAILURE_BUCKETS},
        "seconds_per_question": {"mean": _mean(seconds), "p50": _finite(p50),
                                 "p95": _finite(p95)},
        "generated_tokens": tokens,
        "tokens_per_second": tokens / sum(seconds) if sum(seconds) > 0 else None,
        "samples_per_question": _mean([len(r["traces"]) for r in records]),
        "agreement": _mean([float(r["vote"]["agreement"]) for r in records]),
        **_step_summary(records),
    }


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _environment() -> dict[str, Any]:
    import jax

    from bigthoughts import __version__

    return {
        "versions": {"bigthoughts": __version__, "jax": jax.__version__,
                     "tunix": _version("google-tunix"), "python": platform.python_version()},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "hardware": {"processor": platform.processor() or platform.machine(),
                     "cpu_count": os.cpu_count(), "platform": jax.devices()[0].platform},
    }


def _previous_total(out_dir: Path) -> float:
    """Wall seconds of the earlier invocations of this run (0 for a fresh run)."""
    try:
        old = json.loads((out_dir / SUMMARY).read_text(encoding="utf-8"))
        return float(old.get("wall_seconds_total", old.get("wall_seconds", 0.0)))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0.0


# --- the loop ----------------------------------------------------------------------
def _batch_seed(seed: int, start: int) -> int:
    """A distinct seed per batch, fixed by the batch's position (resume-proof)."""
    return (seed * 1_000_003 + start) % (2**31 - 1)


def _check_fits(lm: LoadedModel, examples: Sequence[Example], config: EvalConfig,
                fmt: PromptFormat) -> None:
    """Refuses (before anything is written) a batch that overflows context or memory."""
    from bigthoughts.models.limits import check_loaded

    rows = min(config.batch_size, len(examples)) * config.samples_per_question
    check_loaded(lm, [fmt.prompt(e.question) for e in examples], rows=rows,
                 max_new_tokens=config.max_new_tokens)


def _solve_missing(solver: Solver, examples: Sequence[Example], config: EvalConfig,
                   results: Path, done: dict[str, dict], *, progress: bool,
                   after_batch: Callable[[int], None] | None) -> None:
    """Solves the unfinished batches, appending each batch's records to ``results``."""
    from tqdm import tqdm

    correct = sum(bool(r["correct"]) for r in done.values())
    bar = tqdm(total=len(examples), initial=len(done), disable=not progress, file=sys.stderr,
               unit="q", desc=f"eval {config.mode}", dynamic_ncols=True)
    if done:
        bar.set_postfix(acc=f"{correct / len(done):.1%}")
    try:
        with results.open("a", encoding="utf-8") as fh:
            for start in range(0, len(examples), config.batch_size):
                batch = examples[start:start + config.batch_size]
                if all(e.id in done for e in batch):
                    continue
                # The whole aligned batch is solved so its samples match an
                # uninterrupted run; only the missing questions are written.
                solutions = solver.solve([e.question for e in batch],
                                         seed=_batch_seed(config.seed, start))
                new = [_record(e, s, solver.style) for e, s in zip(batch, solutions, strict=True)
                       if e.id not in done]
                append_jsonl(fh, new)
                for r in new:
                    done[r["id"]] = r
                    correct += bool(r["correct"])
                bar.update(len(new))
                bar.set_postfix(acc=f"{correct / len(done):.1%}")
                if after_batch is not None:
                    after_batch(len(done))
    finally:
        bar.close()


def run_eval(
    lm: LoadedModel,
    examples: list[Example],
    config: EvalConfig,
    out_dir: Path,
    *,
    progress: bool = True,
    sampler: Sampler | None = None,
    after_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Evaluates ``lm`` on ``examples``; resumes a run in ``out_dir``; returns the summary.

    ``sampler`` replaces the default ``Sampler(lm.model, lm.tokenizer)`` (anything
    with the same ``generate`` method). ``after_batch(n_done)`` is called after each
    batch is on disk, with the number of questions finished so far. Raises
    :class:`RunDirError` when ``out_dir`` holds a run with another configuration and
    :class:`~bigthoughts.models.limits.GenerationLimitError` (nothing written) when a
    batch cannot fit the model's context or the memory.
    """
    from bigthoughts.inference.solve import Solver

    out_dir = Path(out_dir)
    fmt = prompt_format_for(config.style, lm.spec, config.shots)
    by_id = {e.id: e for e in examples}
    if len(by_id) != len(examples):
        raise ValueError("examples have duplicate ids")
    if sampler is None:
        from bigthoughts.inference.jax_sampler import Sampler

        _check_fits(lm, examples, config, fmt)
        sampler = Sampler(lm.model, lm.tokenizer)
    fingerprint = _fingerprint(lm, examples, config, out_dir)
    solver = Solver(sampler, format=fmt, vote=config.vote_config(), seed=config.seed,
                    calculator=config.calculator)
    with lock_run_dir(out_dir):  # one writer: a second eval into out_dir is refused
        done = {r["id"]: r for r in _open_run(out_dir, fingerprint, set(by_id))}
        resumed = len(done)
        started = time.perf_counter()
        _solve_missing(solver, examples, config, out_dir / RESULTS, done, progress=progress,
                       after_batch=after_batch)
        elapsed = time.perf_counter() - started
        return _finish(lm, examples, config, out_dir, fingerprint, fmt, done, resumed, elapsed)


def _finish(lm, examples, config, out_dir, fingerprint, fmt, done, resumed, elapsed) -> dict:
    """Writes and returns the run's ``summary.json``."""
    summary = {
        **summarize([done[e.id] for e in examples]),
        "mode": config.mode,
        "model": fingerprint["model"],
        "config": dataclasses.asdict(config),
        "prompt_style": fmt.style,
        "prompt_note": prompt_note(fmt.style, config.shots, lm.spec.instruction_tuned,
                                   adapted=" + " in lm.source),
        "resumed_questions": resumed,
        "wall_seconds": elapsed,  # this invocation
        # summed over the invocations that finished (a rerun of a done run adds ~0)
        "wall_seconds_total": _previous_total(out_dir) + elapsed,
        **_environment(),
    }
    atomic_write_json(out_dir / SUMMARY, summary, indent=2)
    return summary
