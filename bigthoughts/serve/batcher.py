"""Micro-batching: concurrent requests share one engine call (and, for an engine with
``open_batch``, continuous batching: :class:`ContinuousBatcher`).

One worker thread owns the engine (JAX is driven from a single thread). Request
handlers submit :class:`Job` s to a bounded queue and wait on a future. Whenever the
engine is free the worker waits while requests keep arriving (each within
``batch_wait_s`` of the previous one, at most ``MAX_GATHER_ROUNDS`` waits), then takes
the oldest job plus every queued job with the same :class:`GenerationSettings` (stop
strings, max tokens, seed, sampling filters, calculator) while the rows fit
``max_batch_rows``, and runs them as ONE ``engine.generate`` call. Requests that
arrive while a batch decodes wait for the next batch.

Jobs that want the same number of samples per prompt keep the engine's shared
prefill (``num_samples=k``); a batch mixing k's is flattened to one row per sample.

Full queue: :meth:`Batcher.submit` raises :class:`QueueFull` (the server answers 503
with Retry-After); nothing piles up unbounded. A cancelled job (its client hung up)
that has not started is removed and never generated. Once its batch has started, an
engine whose ``generate`` takes ``cancelled`` (the JAX sampler) is told which rows
belong to a vanished client: they end at the next chunk boundary and stop costing
work while the other rows go on; an engine without it runs the call to its end and
the vanished client's rows are discarded.

``pad_to_pow2`` (for JAX engines, which compile one program per batch shape) repeats
the last prompt until the prompt count is a power of two (or the row cap), so a
server compiles at most ~log2(max_batch_rows) + 1 batch shapes per prompt length
instead of one per batch size; the dummy rows' outputs are dropped.

Seeds: the sampler keys each row by its row index in the call, so a sampled request
is reproducible from its seed when it runs in a batch of its own (greedy rows,
temperature 0, never depend on batching).
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Protocol

MAX_GATHER_ROUNDS = 50  # at most this many batch_wait_s waits before a batch starts


def takes_keyword(fn, name: str) -> bool:
    """Whether ``fn`` accepts the keyword argument ``name`` (or any keyword)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD
                                 for p in params.values())


class Engine(Protocol):
    """What the server needs of an engine (``bigthoughts.inference.jax_sampler.Sampler`` is one).

    ``generate`` returns prompt-major rows of ``bigthoughts.inference.jax_sampler.Generation``;
    engines that take ``calculator=True`` get it only for requests that ask for it.
    """

    def generate(self, prompts: list[str], *, temperatures: float | list[float],
                 num_samples: int, max_new_tokens: int, stop: list[str],
                 stop_inclusive: list[str], seed: int, top_k: int | None,
                 top_p: float | None) -> list: ...


class QueueFull(Exception):
    """The request queue is at capacity; retry later."""


class Cancelled(Exception):
    """The job's client went away before its batch started."""


@dataclass(frozen=True, kw_only=True)
class GenerationSettings:
    """Everything a batch must share (the engine takes these once per call)."""

    max_new_tokens: int
    stop: tuple[str, ...] = ()
    stop_inclusive: tuple[str, ...] = ()
    seed: int = 0
    top_k: int | None = None
    top_p: float | None = None
    calculator: bool = False

    def engine_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(
            max_new_tokens=self.max_new_tokens, stop=list(self.stop),
            stop_inclusive=list(self.stop_inclusive), seed=self.seed, top_k=self.top_k,
            top_p=self.top_p)
        if self.calculator:  # only then: engines without the keyword serve everything else
            kwargs["calculator"] = True
        return kwargs


@dataclass(eq=False, kw_only=True)
class Job:
    """``num_samples`` rows for each prompt, prompt-major, one temperature per row."""

    prompts: tuple[str, ...]
    temperatures: tuple[float, ...]
    num_samples: int
    settings: GenerationSettings
    cancelled: threading.Event = field(default_factory=threading.Event)
    future: Future = field(default_factory=Future)

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.num_samples

    def fail(self, exc: BaseException) -> None:
        """Ends the job with ``exc``, unless it has already ended (a cancel from the
        handler's thread can end it while the worker is still admitting it)."""
        with contextlib.suppress(InvalidStateError):
            self.future.set_exception(exc)

    def finish(self, result) -> None:
        with contextlib.suppress(InvalidStateError):
            self.future.set_result(result)


@dataclass
class BatchStats:
    """Counters for /health and the tests: engine calls vs jobs served."""

    engine_calls: int = 0
    jobs: int = 0
    rows: int = 0
    dropped: int = 0
    largest_batch: int = 0


class Batcher:
    """Owns the engine; see the module docstring."""

    def __init__(self, engine: Engine, *, max_batch_rows: int = 32, queue_size: int = 64,
                 batch_wait_s: float = 0.05, pad_to_pow2: bool = False):
        if max_batch_rows < 1 or queue_size < 1 or batch_wait_s < 0:
            raise ValueError("max_batch_rows and queue_size must be >= 1, batch_wait_s >= 0")
        self.engine = engine
        self.max_batch_rows = max_batch_rows
        self.queue_size = queue_size
        self.batch_wait_s = batch_wait_s
        self.pad_to_pow2 = pad_to_pow2
        self.stats = BatchStats()
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            for job in self._pending:
                job.fail(Cancelled("server shutting down"))
            self._pending.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._pending)

    # --- handlers' side -----------------------------------------------------------
    def submit(self, prompts: Sequence[str], *, temperatures: Sequence[float],
               num_samples: int, settings: GenerationSettings,
               cancelled: threading.Event | None = None) -> Job:
        """Queues a job; raises QueueFull (retry later) or ValueError (too many rows)."""
        job = Job(prompts=tuple(prompts), temperatures=tuple(float(t) for t in temperatures),
                  num_samples=num_samples, settings=settings,
                  cancelled=cancelled or threading.Event())
        if job.rows > self.max_batch_rows:
            raise ValueError(f"{job.rows} rows exceed max_batch_rows={self.max_batch_rows}")
        if len(job.temperatures) != job.rows:
            raise ValueError(f"need {job.rows} temperatures, got {len(job.temperatures)}")
        with self._cond:
            if self._stopping:
                raise Cancelled("server shutting down")
            if job.cancelled.is_set():  # the client left before its job was queued
                self.stats.dropped += 1
                raise Cancelled("client disconnected")
            if len(self._pending) >= self.queue_size:
                raise QueueFull(f"{len(self._pending)} requests are queued")
            self._pending.append(job)
            self._cond.notify_all()
        return job

    def cancel(self, job: Job) -> None:
        """Marks the job cancelled; removes it at once if its batch has not started."""
        job.cancelled.set()
        with self._cond:
            if job in self._pending:
                self._pending.remove(job)
                self.stats.dropped += 1
                job.fail(Cancelled("client disconnected"))

    # --- worker side --------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                self._gather()
            batch = self._take_batch()
            if batch:
                self._execute(batch)

    def _gather(self) -> None:
        """Waits (lock held) while requests keep arriving, ``batch_wait_s`` apart at most.

        A burst sent together joins one batch; bounded by ``MAX_GATHER_ROUNDS`` waits.
        """
        for _ in range(MAX_GATHER_ROUNDS if self.batch_wait_s else 0):
            seen = len(self._pending)
            if sum(j.rows for j in self._pending) >= self.max_batch_rows:
                return
            deadline = time.monotonic() + self.batch_wait_s
            while len(self._pending) == seen and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(timeout=left)
            if self._stopping:
                return

    def _take_batch(self) -> list[Job]:
        with self._cond:
            live = [j for j in self._pending if not j.cancelled.is_set()]
            for job in self._pending:
                if job.cancelled.is_set():
                    self.stats.dropped += 1
                    job.fail(Cancelled("client disconnected"))
            if not live:
                self._pending.clear()
                return []
            first, rows, batch = live[0], 0, []
            for job in live:
                if job.settings == first.settings and rows + job.rows <= self.max_batch_rows:
                    batch.append(job)
                    rows += job.rows
            self._pending = deque(j for j in live if j not in batch)
            return batch

    def _padding(self, prompts: int, num_samples: int) -> int:
        """Dummy prompts that round ``prompts`` up to a power of two (within the row cap)."""
        if not self.pad_to_pow2:
            return 0
        target = min(1 << (prompts - 1).bit_length(), self.max_batch_rows // num_samples)
        return max(0, target - prompts)

    def _execute(self, batch: list[Job]) -> None:
        if len({j.num_samples for j in batch}) == 1:
            prompts = [p for j in batch for p in j.prompts]
            num_samples = batch[0].num_samples
        else:  # mixed k: one row per sample, prompt-major order unchanged
            prompts = [p for j in batch for p in j.prompts for _ in range(j.num_samples)]
            num_samples = 1
        temps = [t for j in batch for t in j.temperatures]
        pad = self._padding(len(prompts), num_samples)
        owners = [job for job in batch for _ in range(job.rows)]  # output row -> its job
        extra: dict[str, Any] = {}
        if takes_keyword(self.engine.generate, "cancelled"):  # free a vanished client's rows
            extra["cancelled"] = lambda row: row < len(owners) and owners[row].cancelled.is_set()
        try:
            gens = self.engine.generate(
                prompts + prompts[-1:] * pad, temperatures=temps + temps[-num_samples:] * pad,
                num_samples=num_samples, **batch[0].settings.engine_kwargs(), **extra)
            if len(gens) != len(temps) + pad * num_samples:
                raise RuntimeError(f"engine returned {len(gens)} rows for {len(temps)}")
        except Exception as exc:  # noqa: BLE001 - every job learns; the worker lives on
            for job in batch:
                job.fail(exc)
            return
        finally:
            self.stats.engine_calls += 1
            self.stats.jobs += len(batch)
            self.stats.rows += len(temps)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        start = 0
        for job in batch:
            job.finish(list(gens[start:start + job.rows]))
            start += job.rows


class ContinuousBatcher(Batcher):
    """Continuous batching, for an engine with ``open_batch`` (llama.cpp): the worker
    keeps one running batch; between two decode steps it admits every queued job that
    fits (oldest first, each with its own settings: no waiting for a batch to finish
    or for jobs alike), and answers each job as soon as its rows are done. A job whose
    client vanished is dropped from the batch at the next step, its rows freed."""

    def __init__(self, engine: Engine, *, kv_cells: int = 16384, **kwargs):
        super().__init__(engine, **kwargs)
        self.kv_cells = kv_cells

    def _run(self) -> None:
        running = self.engine.open_batch(n_seq=self.max_batch_rows, n_ctx=self.kv_cells)
        active: dict[Any, Job] = {}
        try:
            while True:
                with self._cond:
                    while not self._pending and not active and not self._stopping:
                        self._cond.wait()
                    if self._stopping:
                        for job in active.values():
                            job.fail(Cancelled("server shutting down"))
                        return
                    waiting = list(self._pending)
                self._admit(running, waiting, active)
                self._step(running, active)
        finally:
            running.close()

    def _admit(self, running, waiting: list[Job], active: dict) -> None:
        """Adds queued jobs to the running batch, oldest first, until one does not fit."""
        for job in waiting:
            if job.cancelled.is_set():
                self._forget(job)
                self.stats.dropped += 1
                job.fail(Cancelled("client disconnected"))
                continue
            try:
                ticket = running.add(list(job.prompts), temperatures=list(job.temperatures),
                                     num_samples=job.num_samples,
                                     **job.settings.engine_kwargs())
            except Exception as exc:  # noqa: BLE001 - this job fails, the others go on
                self._forget(job)
                job.fail(exc)
                continue
            if ticket is None:  # no room until rows finish: keep the order
                return
            if job.future.done():  # cancelled while its prompt was prefilled
                running.drop(ticket)
                continue
            self._forget(job)
            active[ticket] = job
            self.stats.jobs += 1
            self.stats.rows += job.rows
            self.stats.largest_batch = max(self.stats.largest_batch, len(active))

    def _forget(self, job: Job) -> None:
        with self._cond:
            if job in self._pending:
                self._pending.remove(job)

    def _step(self, running, active: dict) -> None:
        for ticket, job in list(active.items()):
            if job.cancelled.is_set():  # its client left: stop spending steps on it
                running.drop(ticket)
                del active[ticket]
                self.stats.dropped += 1
                job.fail(Cancelled("client disconnected"))
        if not active:
            return
        try:
            finished = running.step()
            self.stats.engine_calls += 1
        except Exception as exc:  # noqa: BLE001 - every running job learns; the worker lives on
            for ticket, job in active.items():
                running.drop(ticket)
                job.fail(exc)
            active.clear()
            return
        for ticket, gens in finished:
            active.pop(ticket).finish(gens)


def make_batcher(engine: Engine, **kwargs) -> Batcher:
    """Continuous batching for an engine that supports it, else micro-batching."""
    if hasattr(engine, "open_batch"):
        kwargs.pop("pad_to_pow2", None)
        return ContinuousBatcher(engine, **kwargs)
    return Batcher(engine, **kwargs)
