"""Outputs replaced whole: a draft written beside its final place, then swapped in, and what stopped
writers left behind removed.

A writer fills ``draft_of(final)`` (``.<name>.<pid>`` beside ``final``, on the same filesystem) and
calls ``swap_in``: readers see the old output or the new one whole, never a mix and, where the OS can
exchange two names in one step (Linux's ``renameat2`` with ``RENAME_EXCHANGE``), never a moment with
none. Elsewhere, and on filesystems that refuse the exchange, a folder is swapped by two renames
(old aside, new in: a reader may find no folder for that instant); a file is replaced by one rename,
which every POSIX filesystem does atomically.

A writer stopped by a signal or ``kill -9`` leaves its draft (or, between the two renames, the
``.<name>.old.<pid>`` it moved aside). ``remove_leftovers`` deletes them; the caller must hold a lock
over the folder, so that no leftover belongs to a live writer. Standard library only: the evaluation,
the export and ``lungjax.serve`` all use it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

RENAME_EXCHANGE = 2  # linux/fs.h: exchange the two names atomically
AT_FDCWD = -100  # linux/fcntl.h: paths relative to the working directory
# What the running kernel or filesystem answers when it cannot exchange two names.
EXCHANGE_UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM)
LEFTOVER = re.compile(r"\.(?P<name>.+?)(?:\.old)?\.(?P<pid>\d+)")


def draft_of(final: Path) -> Path:
    """This process's draft of ``final``: hidden, beside it."""
    return final.with_name(f".{final.name}.{os.getpid()}")


def _exchange(first: Path, second: Path) -> bool:
    """Exchanges the two names in one step; False where this OS, libc or filesystem cannot (nothing
    changed then). An OSError for anything else (one of them missing, no permission)."""
    if sys.platform != "linux":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)  # glibc 2.28 and later
    if renameat2 is None:
        return False
    renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    if renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in EXCHANGE_UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def swap_in(draft: Path, final: Path) -> None:
    """Replaces ``final`` (a file or a folder, or nothing yet) by the complete ``draft`` of the same
    kind, then deletes the old one."""
    if not os.path.lexists(final):
        os.rename(draft, final)
    elif _exchange(draft, final):
        _remove(draft)  # the old output, under the draft's name
    elif draft.is_dir():
        old = final.with_name(f".{final.name}.old.{os.getpid()}")
        os.rename(final, old)
        os.rename(draft, final)
        _remove(old)
    else:
        os.replace(draft, final)


def remove_leftovers(folder: Path, is_output: Callable[[str], bool]) -> list[Path]:
    """Deletes the drafts and set-aside outputs (``.<name>.<pid>``, ``.<name>.old.<pid>``) in ``folder``
    whose ``<name>`` ``is_output`` accepts, whoever wrote them; returns what was deleted. Only under a
    lock that every writer into ``folder`` holds."""
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        match = LEFTOVER.fullmatch(path.name)
        if match and is_output(match["name"]):
            _remove(path)
            removed.append(path)
    return removed
