"""One mesh over every device of every process, and the two shardings the engine uses.

The ``data`` axis spans all devices: batches are split along it, parameters and optimizer state
are replicated. Batches arrive per process and become global arrays here.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices.reshape(-1), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def process_batch_size(global_batch_size: int) -> int:
    """This process's rows of a global batch (every process reads as many)."""
    return global_batch_size // jax.process_count()


def check_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """The per-process batch size; the global batch must split evenly over devices."""
    devices = mesh.devices.size
    if global_batch_size % devices:
        raise ValueError(
            f"batch_size {global_batch_size} is not divisible by the {devices} devices; use a multiple of {devices}"
        )
    return process_batch_size(global_batch_size)


def local_copy(tree):
    """A replicated tree of global arrays -> the same values on this process's first device.

    For work one process does alone (process 0 writing Grad-CAM grids): a computation on global
    arrays would wait for the other processes to join it.
    """
    return jax.tree.map(lambda x: x.addressable_data(0), tree)


def to_global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Process-local numpy batch -> global jax arrays sharded along the batch axis."""
    return {key: jax.make_array_from_process_local_data(sharding, value) for key, value in batch.items()}


def prefetch_to_device(
    items: Iterator[tuple[dict[str, np.ndarray], object]], sharding: NamedSharding, size: int = 2
) -> Iterator[tuple[dict[str, jax.Array], object]]:
    """Transfers ``size`` batches ahead in a background thread so the step never waits on a copy.

    Items are ``(batch, tag)`` pairs; the tag (e.g. the data iterator's state after that batch)
    travels with its batch, so a checkpoint records what was consumed, not what was prefetched.
    """
    buffer: queue.Queue = queue.Queue(maxsize=size)
    done = object()

    def produce():
        try:
            for batch, tag in items:
                buffer.put((to_global(batch, sharding), tag))
        except BaseException as err:  # re-raised in the consumer, where it can be seen
            buffer.put(err)
        buffer.put(done)

    threading.Thread(target=produce, daemon=True).start()
    while (item := buffer.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item
