"""Checks on the workdir before a run does any work: writable, room for a checkpoint, one owner.

A run holds ``<workdir>/lock.json`` (owner pid, host and process start time) while it trains, so a
second run on the same workdir refuses to start instead of interleaving checkpoints with the first.
A lock whose owner is gone (killed, even with ``kill -9``, which runs no cleanup) is stale and taken
over; a lock from another host cannot be checked from here and is refused with instructions.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
from absl import logging

LOCK_FILE = "lock.json"
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


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), so a reused pid is not taken
    for the lock's owner; None where /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(owner: dict) -> bool:
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    started = _start_time(owner["pid"])
    return owner.get("start_time") is None or started is None or started == owner["start_time"]


def _owner_text(owner: dict) -> str:
    return f"pid {owner.get('pid')} on host {owner.get('host')!r} since {owner.get('since')}"


def _read_owner(path: Path) -> dict | None:
    """The lock's owner, or None when the lock vanished; a damaged lock reads as an unknown owner."""
    try:
        owner = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"pid": None, "host": None, "since": None}
    return owner if isinstance(owner, dict) else {"pid": None, "host": None, "since": None}


@contextlib.contextmanager
def lock(workdir: Path) -> Iterator[None]:
    """Holds ``<workdir>/lock.json`` for the duration of the ``with`` block (process 0 only).

    The lock file appears complete or not at all (written aside, then hard-linked into place, which
    fails if it exists). Deciding that a lock is stale and replacing it happens under ``flock`` on a
    guard file, so two runs starting together cannot both take over the same stale lock.
    """
    if jax.process_index() != 0:
        yield
        return
    path = workdir / LOCK_FILE
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start_time": _start_time(os.getpid()),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    draft = workdir / f".{LOCK_FILE}.{os.getpid()}"
    draft.write_text(json.dumps(me))
    try:
        with (workdir / f".{LOCK_FILE}.guard").open("a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            _take(path, draft, me)
    finally:
        draft.unlink(missing_ok=True)
    try:
        yield
    finally:
        if _read_owner(path) == me:
            path.unlink()


def _take(path: Path, draft: Path, me: dict) -> None:
    try:
        os.link(draft, path)
        return
    except FileExistsError:
        pass
    except OSError as err:  # a filesystem without hard links: exclusive create instead
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        with contextlib.suppress(FileExistsError), path.open("x") as handle:
            handle.write(draft.read_text())
            return
    owner = _read_owner(path)
    if owner is not None and owner.get("host") != me["host"]:
        raise WorkdirError(
            f"workdir {path.parent} is locked by {_owner_text(owner)}, which cannot be checked "
            f"from host {me['host']!r}; if no run uses this workdir, delete {path}"
        )
    if owner is not None and isinstance(owner.get("pid"), int) and _alive(owner):
        raise WorkdirError(
            f"workdir {path.parent} is in use by another run ({_owner_text(owner)}); "
            f"wait for it to finish or use another --workdir"
        )
    if owner is not None:
        logging.warning("taking over the stale lock of %s: that process is gone", _owner_text(owner))
    os.replace(draft, path)
