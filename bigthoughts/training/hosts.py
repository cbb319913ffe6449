"""One run over several processes (a TPU pod slice, GPU hosts): ``jax.distributed``.

    settings = hosts.settings("10.0.0.1:1234", 2, 0)   # or from JAX_COORDINATOR_ADDRESS,
    hosts.start(settings)                              # JAX_NUM_PROCESSES, JAX_PROCESS_ID
    hosts.writer()        # True on process 0, the one that writes the run directory
    hosts.host_copy(x)    # a numpy copy of a (possibly sharded) array, on every process
    hosts.host_tree(t)    # the same for a pytree (t itself with one process)
    hosts.agree(flag)     # process 0's decision, on every process
    hosts.barrier("saved")

Every process runs the same program on the same data (rollouts are seeded by step, so
they agree), and the mesh spans all processes' devices. Only process 0 writes files:
``config.json``, metrics, samples, evaluations, checkpoints and the export; every
process reads the same run directory on resume, so it must be on a filesystem they all
see (on one machine, any directory). Decisions that must not diverge (stop for the
deadline) are taken by process 0 and broadcast. With one process every function here
is a plain single-process no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import jax
import numpy as np

__all__ = ["Distributed", "agree", "barrier", "count", "host_copy", "host_tree", "settings",
           "start", "writer"]

ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


@dataclass(frozen=True)
class Distributed:
    """Where the coordinator listens, how many processes take part, and which one this is."""

    coordinator: str
    num_processes: int
    process_id: int

    def __post_init__(self) -> None:
        host, _, port = self.coordinator.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"the coordinator must be HOST:PORT, got {self.coordinator!r}")
        if self.num_processes < 1:
            raise ValueError(f"the number of processes must be >= 1, got {self.num_processes}")
        if not 0 <= self.process_id < self.num_processes:
            raise ValueError(f"the process id must be in 0..{self.num_processes - 1}, "
                             f"got {self.process_id}")


def settings(coordinator: str | None = None, num_processes: int | None = None,
             process_id: int | None = None, environ=os.environ) -> Distributed | None:
    """The distributed settings from the arguments, else from ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``; None when no coordinator is named
    (one process). ``ValueError`` names what is missing or malformed."""
    coordinator = coordinator or environ.get(ENV[0]) or None
    if coordinator is None:
        if num_processes is not None or process_id is not None:
            raise ValueError("--num-processes / --process-id need a coordinator "
                             "(--coordinator HOST:PORT or JAX_COORDINATOR_ADDRESS)")
        return None
    values = []
    for given, name in ((num_processes, ENV[1]), (process_id, ENV[2])):
        if given is None:
            raw = environ.get(name)
            if raw is None or not raw.strip().lstrip("-").isdigit():
                flag = "--num-processes" if name == ENV[1] else "--process-id"
                raise ValueError(f"a coordinator is set but {flag} (or {name}) is "
                                 f"{'missing' if raw is None else repr(raw)}")
            given = int(raw)
        values.append(given)
    return Distributed(coordinator, values[0], values[1])


def start(config: Distributed | None) -> None:
    """Joins the run's processes (``jax.distributed.initialize``); before JAX computes
    anything. On CPU the cross-process collectives go through gloo."""
    if config is None or config.num_processes == 1:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(config.coordinator, num_processes=config.num_processes,
                               process_id=config.process_id)


def count() -> int:
    return jax.process_count()


def writer() -> bool:
    """True on the process that writes the run directory (process 0)."""
    return jax.process_index() == 0


def host_copy(x) -> np.ndarray:
    """``x`` as a numpy array on this host. A sharded array some of whose shards live on
    other processes is gathered, which every process must call in the same order."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def host_tree(tree):
    """``tree`` itself with one process; with several, host copies of its leaves (the
    shards gathered: every process calls this, in the same order)."""
    return tree if count() == 1 else jax.tree_util.tree_map(host_copy, tree)


def agree(flag: bool) -> bool:
    """Process 0's ``flag`` on every process (one process: ``flag``)."""
    if count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))


def barrier(name: str) -> None:
    """Waits until every process has reached the barrier ``name``."""
    if count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
