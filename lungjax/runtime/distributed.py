"""Runs on several processes through JAX's own multi-controller runtime, and what changes with them.

One process per host drives all of its local devices; ``jax.distributed.initialize`` joins the
processes so that ``jax.devices()`` (and with it the mesh) spans every device of every process.
It must run before anything touches a device, so ``lungjax.main`` calls ``initialize`` first.

Which rows of the data each process reads is :mod:`lungjax.data.sampling`'s concern.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TypeVar

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

T = TypeVar("T")

# A peer that sends no heartbeat for this long is declared dead and every process stops (JAX's
# default is 100 s); a survivor then exits with an error instead of waiting in a collective.
HEARTBEAT_TIMEOUT_S = 60
INITIALIZATION_TIMEOUT_S = 300
# How long a finishing process waits for the others at exit: process 0 may still be writing the
# evaluation's plots and Grad-CAM grids after the others are done.
SHUTDOWN_TIMEOUT_S = 300


def launched_as_several() -> bool:
    """Whether SLURM (``srun``) or Open MPI (``mpirun``) started this process as one of several.

    SLURM's step variable, not ``SLURM_NTASKS``: a batch script's own shell has the job's task count
    but is a single process.
    """
    for variable in ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE"):
        if int(os.environ.get(variable, "1")) > 1:
            return True
    return False


def initialize(
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
    heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S,
    initialization_timeout_s: int = INITIALIZATION_TIMEOUT_S,
    shutdown_timeout_s: int = SHUTDOWN_TIMEOUT_S,
) -> bool:
    """Joins the other processes of this run; returns whether the run is distributed.

    Explicit when any of ``coordinator_address``, ``num_processes``, ``process_id`` is given;
    automatic (JAX reads the launcher's environment) under SLURM or Open MPI with several tasks;
    otherwise a single-process run and a no-op. Cross-process collectives on CPU go through gloo,
    so the same code runs (and is tested) on a CPU-only machine.
    """
    explicit = any(value is not None for value in (coordinator_address, num_processes, process_id))
    if not explicit and not launched_as_several():
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address,
        num_processes,
        process_id,
        local_device_ids=local_device_ids,
        initialization_timeout=initialization_timeout_s,
        heartbeat_timeout_seconds=heartbeat_timeout_s,
        shutdown_timeout_seconds=shutdown_timeout_s,
    )
    logging.info(
        "process %d of %d: %d local of %d devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def process_zero_first(fn: Callable[[], T]) -> T:
    """``fn()`` on process 0, then on the others: for work that fills a shared directory once
    (building the dataset) and that the other processes then only read."""
    if jax.process_count() == 1:
        return fn()
    result = fn() if jax.process_index() == 0 else None
    barrier("lungjax.process_zero_first")
    return result if jax.process_index() == 0 else fn()


def everywhere(flag: bool) -> bool:
    """Whether ``flag`` holds on every process. A choice that changes what each process does next
    (which checkpoint step to restore) must be the same everywhere: a step that one process cannot
    read is damaged for all of them."""
    if jax.process_count() == 1:
        return flag
    return bool(np.all(multihost_utils.process_allgather(np.bool_(flag))))


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (a no-op in a single-process run)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
