"""Which record each process and grain worker reads, and where a resumed run picks up.

Training reads one global shuffled stream in global batches: process p of P reads rows
p*L .. p*L + L - 1 of each (``ProcessBatchSampler``, L the local batch), so the global array
``make_array_from_process_local_data`` assembles is, row for row, the batch one process would
read, and a data position means the same thing for any process count. ``data_state_for_process``
turns the iterator state a checkpoint holds (process 0's) into this process's state, for the
process count and worker count of the resuming run. A union of sources (``MixedSampler``) is one
such stream as well: what position i reads follows from the seed and i alone, so all of the above
holds for it unchanged.
"""

from __future__ import annotations

import json
import math
import sys

import grain.python as grain
import jax
import numpy as np
from absl import logging


class EpochPermutations:
    """A new permutation of ``num_records`` records every epoch, drawn from ``(*key, epoch)``; the
    latest epoch's is kept, so a position is a lookup."""

    def __init__(self, num_records: int, key: tuple[int, ...]):
        if num_records <= 0:
            raise ValueError(f"a sampler needs at least one record, got {num_records}")
        self.num_records, self._key = num_records, key
        self._epoch_order: tuple[int, np.ndarray] = (-1, np.zeros(0, np.int64))

    def order(self, epoch: int) -> np.ndarray:
        """The record indices of ``epoch`` in the order they are read."""
        cached_epoch, order = self._epoch_order  # one read: grain may call from several threads
        if cached_epoch != epoch:
            order = np.random.default_rng([*self._key, epoch]).permutation(self.num_records)
            self._epoch_order = (epoch, order)
        return order


def record_metadata(index: int, record_key: int, seed: int) -> grain.RecordMetadata:
    """Position ``index`` of the stream reads ``record_key``, with grain's per-record generator
    ``Philox(key=seed + index)`` for its augmentation draws: a position's draws never depend on what
    was read before it."""
    return grain.RecordMetadata(
        index=index, record_key=record_key, rng=np.random.Generator(np.random.Philox(key=seed + index))
    )


class EpochShuffleSampler:
    """Endless record order for training: a new permutation of the records every epoch, drawn
    from ``(seed, epoch)``, and grain's per-record generator (``Philox(key=seed + index)``) for
    the augmentation draws.

    Stands in for grain's ``IndexSampler(shuffle=True)``, whose per-record index shuffle runs
    through grain's dataset statistics wrappers and cost ~200 us a record, as much as decoding and
    warping it (BENCHMARKS.md). Here an epoch's permutation is drawn once (~0.1 ms for 14,000
    records) and a position is a lookup.
    """

    def __init__(self, num_records: int, seed: int):
        self._permutations, self._seed = EpochPermutations(num_records, (seed,)), seed

    def __len__(self) -> int:
        return sys.maxsize  # endless

    def order(self, epoch: int) -> np.ndarray:
        """The record indices of ``epoch`` in the order they are read."""
        return self._permutations.order(epoch)

    def __getitem__(self, index: int) -> grain.RecordMetadata:
        epoch, position = divmod(index, self._permutations.num_records)
        return record_metadata(index, int(self.order(epoch)[position]), self._seed)

    def __repr__(self) -> str:
        return f"EpochShuffleSampler(num_records={self._permutations.num_records}, seed={self._seed})"


# The longest period of a mix: weights whose exact proportions need more draws are rounded to this many.
MAX_PERIOD = 1000


def period_counts(weights) -> np.ndarray:
    """Draws of each source in one period of a mix: the shortest period (at most ``MAX_PERIOD`` draws)
    whose counts are exactly proportional to ``weights`` (1:2 -> 1, 2; 0.7:0.3 -> 7, 3), else
    ``MAX_PERIOD`` draws shared out by largest remainder (each share within 1/MAX_PERIOD of its weight's)."""
    weights = np.asarray(weights, np.float64)
    if weights.ndim != 1 or not len(weights) or not np.isfinite(weights).all() or (weights <= 0).any():
        raise ValueError(f"mixing weights must be positive numbers, got {weights.tolist()}")
    shares = weights / weights.sum()
    for period in range(1, MAX_PERIOD + 1):
        counts = np.round(shares * period)
        if np.abs(shares * period - counts).max() < 1e-9 and (counts > 0).all():
            return counts.astype(np.int64)
    exact = shares * MAX_PERIOD
    counts = np.floor(exact).astype(np.int64)
    counts[np.argsort(counts - exact, kind="stable")[: MAX_PERIOD - counts.sum()]] += 1
    if (counts == 0).any():
        raise ValueError(
            f"mixing weights {weights.tolist()}: each must be at least 1/{MAX_PERIOD} of their sum to be drawn"
        )
    return counts


def interleaving(counts: np.ndarray) -> np.ndarray:
    """One period's sources in draw order, by smooth weighted round robin: every draw goes to the
    source furthest behind its share (ties to the first), so each source's draws are spread evenly
    over the period rather than bunched (3:1 reads a a b a, not a a a b)."""
    total = int(counts.sum())
    credit, order = np.zeros(len(counts), np.int64), np.empty(total, np.int64)
    for slot in range(total):
        credit += counts
        order[slot] = source = int(np.argmax(credit))
        credit[source] -= total
    return order


class MixedSampler:
    """Endless record order over several sources concatenated (source k's records at
    ``offsets[k] ..``), drawn in proportion to their weights.

    Global position i is computed in O(1), from ``(seed, i)`` alone: its slot in the period
    (``interleaving``) names the source and how many draws of it came before, and that count walks
    the source's own per-epoch permutation (a source's epoch: its draws so far // its size, drawn
    from ``(seed, k, epoch)``), so each source reads each of its records once per its epoch whatever
    the others' sizes. Augmentation draws are ``Philox(key=seed + i)`` as for one source. A position
    thus means the same for any process and worker count, and ``ProcessBatchSampler`` and
    ``data_state_for_process`` apply unchanged.
    """

    def __init__(self, source_sizes, weights, seed: int):
        if len(source_sizes) != len(weights):
            raise ValueError(f"{len(source_sizes)} sources but {len(weights)} mixing weights")
        self._sizes = np.asarray(source_sizes, np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(self._sizes)[:-1]])
        self._counts, self._seed = period_counts(weights), seed
        self._sources = interleaving(self._counts)
        # slot -> draws of its source earlier in the period
        self._earlier = np.array([np.sum(self._sources[:slot] == k) for slot, k in enumerate(self._sources)])
        self._permutations = [EpochPermutations(int(size), (seed, k)) for k, size in enumerate(self._sizes)]

    def __len__(self) -> int:
        return sys.maxsize  # endless

    def source_and_record(self, index: int) -> tuple[int, int]:
        """Global position ``index`` -> (source k, record index within source k)."""
        period, slot = divmod(index, len(self._sources))
        source = int(self._sources[slot])
        draws = period * int(self._counts[source]) + int(self._earlier[slot])
        epoch, position = divmod(draws, int(self._sizes[source]))
        return source, int(self._permutations[source].order(epoch)[position])

    def __getitem__(self, index: int) -> grain.RecordMetadata:
        source, record = self.source_and_record(index)
        return record_metadata(index, int(self._offsets[source]) + record, self._seed)

    def __repr__(self) -> str:
        return (
            f"MixedSampler(source_sizes={self._sizes.tolist()}, draws_per_period={self._counts.tolist()}, "
            f"seed={self._seed})"
        )


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


def shard_options() -> grain.ShardOptions:
    return grain.ShardOptions(shard_index=jax.process_index(), shard_count=jax.process_count(), drop_remainder=False)


def _next_positions(state: dict, process_count: int) -> list[int]:
    """Per grain worker of process 0: how many records of its slice of the stream it has read.

    Inverts grain's ``last_seen = p - G + w * P + next * G`` (``G = P * workers``) at ``p = 0``.
    """
    workers = max(state["worker_count"], 1)
    stride = process_count * workers
    return [(state["last_seen_indices"][str(w)] + stride - w * process_count) // stride for w in range(workers)]


def _last_seen(next_positions: list[int], process_count: int, process_index: int) -> dict[str, int]:
    stride = process_count * len(next_positions)
    return {str(w): process_index - stride + w * process_count + n * stride for w, n in enumerate(next_positions)}


def data_state_for_process(
    saved: bytes, *, saved_process_count: int, worker_count: int, global_batch_size: int, num_records: int
) -> bytes:
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
        logging.info(
            "resuming a %d-process data stream on %d processes at record %d", saved_process_count, count, consumed
        )
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
            "(global record %d; records %d to %d are skipped)",
            saved_process_count,
            state["worker_count"],
            count,
            worker_count,
            epoch + 1,
            first_batch * global_batch_size,
            consumed,
            first_batch * global_batch_size - 1,
        )
    state["worker_count"] = worker_count
    state["last_seen_indices"] = _last_seen(positions, count, index)
    return json.dumps(state).encode()
