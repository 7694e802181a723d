"""Runs on several processes through JAX's own multi-controller runtime, and what changes with them.

One process per host drives all of its local devices; ``jax.distributed.initialize`` joins the
processes so that ``jax.devices()`` (and with it the mesh) spans every device of every process.
It must run before anything touches a device, so ``lungjax.main`` calls ``initialize`` first.

The training data is one global shuffled stream, read in global batches: process p of P reads
rows p*L .. p*L + L - 1 of each (``ProcessBatchSampler``, L the local batch), so the global array
``make_array_from_process_local_data`` assembles is, row for row, the batch one process would
read, and a data position means the same thing for any process count. ``data_state_for_process``
turns the iterator state a checkpoint holds (process 0's) into this process's state, for the
process count and worker count of the resuming run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

import jax
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


def initialize(*, coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids: Sequence[int] | None = None,
               heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S,
               initialization_timeout_s: int = INITIALIZATION_TIMEOUT_S,
               shutdown_timeout_s: int = SHUTDOWN_TIMEOUT_S) -> bool:
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
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               local_device_ids=local_device_ids,
                               initialization_timeout=initialization_timeout_s,
                               heartbeat_timeout_seconds=heartbeat_timeout_s,
                               shutdown_timeout_seconds=shutdown_timeout_s)
    logging.info("process %d of %d: %d local of %d devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())
    return True


def _next_positions(state: dict, process_count: int) -> list[int]:
    """Per grain worker of process 0: how many records of its slice of the stream it has read.

    Inverts grain's ``last_seen = p - G + w * P + next * G`` (``G = P * workers``) at ``p = 0``.
    """
    workers = max(state["worker_count"], 1)
    stride = process_count * workers
    return [(state["last_seen_indices"][str(w)] + stride - w * process_count) // stride
            for w in range(workers)]


def _last_seen(next_positions: list[int], process_count: int, process_index: int) -> dict[str, int]:
    stride = process_count * len(next_positions)
    return {str(w): process_index - stride + w * process_count + n * stride for w, n in enumerate(next_positions)}


def data_state_for_process(saved: bytes, *, saved_process_count: int, worker_count: int, global_batch_size: int,
                           num_records: int) -> bytes:
    """Process 0's saved train-loader state -> this process's state in the resuming run.

    Exact (the resumed run reads the records the saved one would have read next) when the process
    and worker counts are unchanged, and when only the process count changed and there are no
    grain workers. Otherwise each worker batches its own slice of the stream, so a position inside
    an epoch cannot be carried over: the run resumes at the first global batch that starts in the
    next epoch, and says so.
    """
    state = json.loads(saved)
    done = _next_positions(state, saved_process_count)
    count, index = jax.process_count(), jax.process_index()
    consumed = saved_process_count * sum(done)  # records of the global stream read so far
    local_batch = global_batch_size // count
    if saved_process_count == count and state["worker_count"] == worker_count:
        positions = done
    elif state["worker_count"] == worker_count == 0 and consumed % global_batch_size == 0:
        positions = [consumed // count]
        logging.info("resuming a %d-process data stream on %d processes at record %d", saved_process_count,
                     count, consumed)
    else:
        epoch = math.ceil(consumed / num_records)
        first_batch = math.ceil(epoch * num_records / global_batch_size)
        start = first_batch * local_batch  # this process's records before it (ProcessBatchSampler)
        workers = max(worker_count, 1)
        positions = [math.ceil((start - w) / workers) for w in range(workers)]
        state["last_worker_index"] = -1
        logging.warning(
            "the checkpoint's data position was written by %d process(es) with %d grain worker(s) each and "
            "cannot be mapped onto %d process(es) with %d worker(s): resuming at the start of epoch %d "
            "(global record %d; records %d to %d are skipped)", saved_process_count, state["worker_count"],
            count, worker_count, epoch + 1, first_batch * global_batch_size, consumed,
            first_batch * global_batch_size - 1)
    state["worker_count"] = worker_count
    state["last_seen_indices"] = _last_seen(positions, count, index)
    return json.dumps(state).encode()


def process_zero_first(fn: Callable[[], T]) -> T:
    """``fn()`` on process 0, then on the others: for work that fills a shared directory once
    (building the dataset) and that the other processes then only read."""
    if jax.process_count() == 1:
        return fn()
    result = fn() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices("lungjax.process_zero_first")
    return result if jax.process_index() == 0 else fn()


class ProcessBatchSampler:
    """Wraps an unsharded grain sampler so that process p's local batches are rows p*L .. p*L + L - 1
    of the global batches one process would read.

    grain's ``DataLoader`` sharded by process asks process p for loader indices p, p + P, p + 2P, ...;
    its j-th record (loader index j*P + p) is mapped here to global position
    ``(j // L) * P * L + p * L + j % L``. Row order matters, not only the batch's content: dropout
    masks are drawn per row of the global batch. The repr leaves out P and L (only the global batch
    size is in it), so grain accepts a saved state after a change of the process count.
    """

    def __init__(self, sampler, *, local_batch_size: int, process_count: int):
        self._sampler, self._local, self._count = sampler, local_batch_size, process_count

    def __len__(self) -> int:
        return len(self._sampler)

    def __getitem__(self, index: int):
        record, process = divmod(index, self._count)
        batch, row = divmod(record, self._local)
        return self._sampler[(batch * self._count + process) * self._local + row]

    def __repr__(self) -> str:
        return f"ProcessBatchSampler({self._sampler!r}, global_batch_size={self._local * self._count})"
