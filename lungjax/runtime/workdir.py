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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
from absl import logging

from lungjax import folders, locking

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


def check_output(final: Path) -> None:
    """Refuses, before any work, an output folder ``final`` that a file is in the way of (``final`` or
    its folder): the output could not be written there, and a file is never replaced by a folder."""
    for path in (final.parent, final):
        if os.path.lexists(path) and not path.is_dir():
            raise WorkdirError(f"{path} is a file, not a folder: move it away, then run again (nothing was written)")


def _say_waiting(held: locking.LockHeld) -> None:
    logging.warning(
        "another run is writing into %s (%s): waiting for it to finish; if none runs there, delete %s",
        held.path.parent,
        locking.owner_text(held.owner),
        held.path,
    )


@contextlib.contextmanager
def writing(final: Path, is_output: Callable[[str], bool]) -> Iterator[Path]:
    """A fresh draft of the output folder ``final``, swapped in whole when the ``with`` block ends
    without error, deleted otherwise.

    Writers into one output folder (``final.parent``: ``eval/``, ``export/``) serialise on its own
    ``lock.json``, waiting for each other, and under it delete what stopped writers left there (every
    draft and set-aside folder whose name ``is_output`` accepts: none can be a live writer's). A lock
    per output folder, not the workdir's: a training run holds the workdir's for hours, and the
    evaluation of a checkpoint, or its export, while it trains is useful and touches nothing it writes.
    """
    check_output(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with locking.hold(final.parent / LOCK_FILE, wait=_say_waiting):
        for path in folders.remove_leftovers(final.parent, is_output):
            logging.warning("removed %s, left by a run that was stopped while writing it", path)
        draft = folders.draft_of(final)
        draft.mkdir()
        try:
            yield draft
            folders.swap_in(draft, final)
        finally:
            if draft.exists():
                shutil.rmtree(draft)
