"""Writes that fail for lack of space (a full disk, a quota, a file-size limit), told in one line.

Such a failure reaches the command line from several places at once: Python's own writes (an
``OSError``), TensorBoard's writer thread, Orbax, whose tensorstore writes report the operating
system's error inside a ``ValueError``'s text (``[os_error_code='28']``), logged again by each of its
threads, and ArrayRecord's writer (the dataset's shards), whose ``RuntimeError`` names the reason
and the file (``write() failed: No space left on device; writing <file>``). ``write_failure``
recognises every form, so that ``lungjax.main`` says it once, with what was kept and what to do for
what was being written.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re

# No space left, quota exceeded, file larger than allowed (RLIMIT_FSIZE or the filesystem's limit).
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_TENSORSTORE_ERRNO = re.compile(r"os_error_code='(\d+)'")
_TENSORSTORE_FILE = re.compile(r'Failed writing: "([^"]+)"')
_ARRAY_RECORD_FAILURE = re.compile(r"\w+\(\) failed: (?P<reason>[^;]+); writing (?P<file>[^;]+)")
_ERRNO_OF_REASON = {os.strerror(code): code for code in NO_SPACE_ERRNOS}


@dataclasses.dataclass(frozen=True)
class WriteFailure:
    """A write that failed for lack of space: the error number and the file, when known."""

    errno: int
    file: str | None

    def __str__(self) -> str:
        where = f"could not write {self.file}" if self.file else "a write failed"
        return f"{where}: {os.strerror(self.errno)} ({errno.errorcode[self.errno]})"


def write_failure(err: BaseException) -> WriteFailure | None:
    """The failed write when ``err``, or an exception it arose from, is a write that failed for lack
    of space; otherwise None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in NO_SPACE_ERRNOS:
            return WriteFailure(err.errno, err.filename)
        code = no_space_errno(str(err))
        if code is not None:
            file = _TENSORSTORE_FILE.search(str(err))
            return WriteFailure(code, file and file.group(1))
        array_record = _ARRAY_RECORD_FAILURE.search(str(err)) if isinstance(err, RuntimeError) else None
        if array_record and array_record.group("reason") in _ERRNO_OF_REASON:
            return WriteFailure(_ERRNO_OF_REASON[array_record.group("reason")], array_record.group("file"))
        err = err.__cause__ or err.__context__
    return None


def no_space_errno(text: str) -> int | None:
    """The errno of a lack-of-space failure that a tensorstore message carries, else None."""
    found = _TENSORSTORE_ERRNO.search(text)
    return int(found.group(1)) if found and int(found.group(1)) in NO_SPACE_ERRNOS else None
