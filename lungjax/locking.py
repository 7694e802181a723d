"""Lock files that name their owner and work on a shared filesystem: one run per workdir, one build per
dataset.

A lock is a JSON file (owner pid, host, process start time, since when). It appears complete or not
at all: written aside, then hard-linked into place, which fails if it exists (an exclusive create
where the filesystem has no hard links). Deciding that a lock is stale and replacing it happens
under ``flock`` on a guard file, so two processes starting together cannot both take over the same
stale lock. A lock whose owner is gone (killed, even with ``kill -9``, which runs no cleanup) is
stale and taken over; a lock from another host cannot be checked from here.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from absl import logging

POLL_SECONDS = 2.0  # how often a waiting process looks at the lock again


class LockHeld(Exception):
    """Someone else holds the lock: ``owner`` (its JSON), and whether it is on this host."""

    def __init__(self, path: Path, owner: dict, same_host: bool):
        super().__init__(f"{path} is held by {owner_text(owner)}")
        self.path, self.owner, self.same_host = path, owner, same_host


def owner_text(owner: dict) -> str:
    return f"pid {owner.get('pid')} on host {owner.get('host')!r} since {owner.get('since')}"


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


def read_owner(path: Path) -> dict | None:
    """The lock's owner, or None when the lock vanished; a damaged lock reads as an unknown owner."""
    try:
        owner = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"pid": None, "host": None, "since": None}
    return owner if isinstance(owner, dict) else {"pid": None, "host": None, "since": None}


@contextlib.contextmanager
def hold(path: Path, *, wait: Callable[[LockHeld], None] | None = None) -> Iterator[None]:
    """Holds the lock file ``path`` for the duration of the ``with`` block.

    A lock held by a live process, or by one on another host, raises ``LockHeld``; with ``wait``,
    the caller is told once (``wait(held)``) and the lock is tried again every ``POLL_SECONDS``
    until it is free.
    """
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start_time": _start_time(os.getpid()),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    draft = path.with_name(f".{path.name}.{os.getpid()}")
    draft.write_text(json.dumps(me))
    told = False
    try:
        while True:
            try:
                with path.with_name(f".{path.name}.guard").open("a") as guard:
                    fcntl.flock(guard, fcntl.LOCK_EX)
                    _take(path, draft, me)
                break
            except LockHeld as held:
                if wait is None:
                    raise
                if not told:
                    wait(held)
                    told = True
                time.sleep(POLL_SECONDS)
    finally:
        draft.unlink(missing_ok=True)
    try:
        yield
    finally:
        if read_owner(path) == me:
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
    owner = read_owner(path)
    if owner is not None and owner.get("host") != me["host"]:
        raise LockHeld(path, owner, same_host=False)
    if owner is not None and isinstance(owner.get("pid"), int) and _alive(owner):
        raise LockHeld(path, owner, same_host=True)
    if owner is not None:
        logging.warning("taking over the stale lock of %s: that process is gone", owner_text(owner))
    os.replace(draft, path)
