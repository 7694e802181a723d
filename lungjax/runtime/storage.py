"""Writes that fail for lack of space (a full disk, a quota, a file-size limit), told in one line.

Such a failure reaches the command line from several places at once: Python's own writes (an
``OSError``), TensorBoard's writer thread, and Orbax, whose tensorstore writes report the operating
system's error inside a ``ValueError``'s text (``[os_error_code='28']``), logged again by each of its
threads. ``write_failure`` recognises every form, so that ``lungjax.main`` says it once; what was
written completely before (every finished checkpoint, the dataset) stays usable, and a rerun
resumes from the last complete checkpoint.
"""

from __future__ import annotations

import errno
import os
import re

# No space left, quota exceeded, file larger than allowed (RLIMIT_FSIZE or the filesystem's limit).
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_TENSORSTORE_ERRNO = re.compile(r"os_error_code='(\d+)'")
_TENSORSTORE_FILE = re.compile(r'Failed writing: "([^"]+)"')


def write_failure(err: BaseException) -> str | None:
    """One line naming the file and the reason when ``err``, or an exception it arose from, is a
    write that failed for lack of space; otherwise None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in NO_SPACE_ERRNOS:
            return _describe(err.errno, err.filename)
        code = no_space_errno(str(err))
        if code is not None:
            file = _TENSORSTORE_FILE.search(str(err))
            return _describe(code, file and file.group(1))
        err = err.__cause__ or err.__context__
    return None


def no_space_errno(text: str) -> int | None:
    """The errno of a lack-of-space failure that a tensorstore message carries, else None."""
    found = _TENSORSTORE_ERRNO.search(text)
    return int(found.group(1)) if found and int(found.group(1)) in NO_SPACE_ERRNOS else None


def _describe(code: int, file: str | None) -> str:
    where = f"could not write {file}" if file else "a write failed"
    return (
        f"{where}: {os.strerror(code)} ({errno.errorcode[code]}); free some space (or raise the limit) and "
        "rerun the same command: complete checkpoints are kept and training resumes from the last one"
    )
