"""Checks on the workdir before a run does any work: writable, room for a checkpoint, one owner.

A run holds ``<workdir>/lock.json`` (a :mod:`lungjax.locking` lock) while it trains, so a second run
on the same workdir refuses to start instead of interleaving checkpoints with the first. A lock whose
owner is gone is taken over; a lock from another host cannot be checked from here and is refused
with instructions.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax

from lungjax import locking

LOCK_FILE = "lock.json"
# What the training loop logs into the workdir (lungjax.runtime.logs); named here, where evaluation can
# read them without loading TensorBoard.
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
# Orbax writes a step into a temporary directory before renaming it, while the previous step may
# still be on disk and the state is held in host memory: ask for twice the state's bytes.
CHECKPOINT_SPACE_FACTOR = 2


class WorkdirError(OSError):
    """The workdir cannot be used for this run; the message says why and what to do."""


def check_writable(workdir: Path) -> None:
    """Creates ``workdir`` if needed and writes a probe file in it: errors name the path."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise WorkdirError(
            f"workdir {workdir} is not writable ({err.strerror or err}); choose another "
            f"--workdir or fix its permissions"
        ) from err


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem holding ``path`` (a seam the tests replace)."""
    return shutil.disk_usage(path).free


def tree_bytes(tree: Any) -> int:
    return sum(leaf.nbytes for leaf in jax.tree.leaves(tree) if hasattr(leaf, "nbytes"))


def check_free_space(workdir: Path, state_bytes: int) -> None:
    """Refuses to start when the workdir's filesystem cannot hold the next checkpoint."""
    needed, free = CHECKPOINT_SPACE_FACTOR * state_bytes, free_bytes(workdir)
    if free < needed:
        raise WorkdirError(
            f"workdir {workdir} has {free / 2**20:.1f} MiB free, a checkpoint of this run needs "
            f"about {needed / 2**20:.1f} MiB ({CHECKPOINT_SPACE_FACTOR} x the "
            f"{state_bytes / 2**20:.1f} MiB state); free some space or use another --workdir"
        )


@contextlib.contextmanager
def lock(workdir: Path) -> Iterator[None]:
    """Holds ``<workdir>/lock.json`` for the duration of the ``with`` block (process 0 only): a second
    run on the workdir is refused (see :mod:`lungjax.locking`)."""
    if jax.process_index() != 0:
        yield
        return
    path = workdir / LOCK_FILE
    with contextlib.ExitStack() as held_lock:
        try:
            held_lock.enter_context(locking.hold(path))
        except locking.LockHeld as held:
            owner = locking.owner_text(held.owner)
            if not held.same_host:
                raise WorkdirError(
                    f"workdir {workdir} is locked by {owner}, which cannot be checked from host "
                    f"{socket.gethostname()!r}; if no run uses this workdir, delete {path}"
                ) from None
            raise WorkdirError(
                f"workdir {workdir} is in use by another run ({owner}); wait for it to finish or use another --workdir"
            ) from None
        yield


def swap_in(draft: Path, final: Path) -> None:
    """Replaces the folder ``final`` by the complete folder ``draft`` (beside it, on the same disk): readers
    see the old folder or the new one whole, never a mix, wherever a signal stops the writer."""
    if final.exists():
        old = final.with_name(f".{final.name}.old.{os.getpid()}")
        os.rename(final, old)
        os.rename(draft, final)
        shutil.rmtree(old)
    else:
        os.rename(draft, final)
