"""Worker processes for the data work that is worth spreading over cores (decoding a download, drawing
the phantom): spawned, tied to their parent's life, and never running the user's main script.

* Spawned, never forked: JAX may already be running threads in the parent.
* Tied to the parent: on Linux each worker asks the kernel to kill it when its parent dies, so a
  build stopped by SIGTERM or ``kill -9`` leaves no worker behind (each holds ~190 MB).
* A spawned worker normally re-runs the parent's main script, which breaks for a script without an
  ``if __name__ == "__main__":`` guard (the worker runs the script again, which here waited forever
  on the build lock its parent holds) and for code read from standard input. The workers run only
  lungjax's own functions, so they are started with the main script hidden from them.
* Should workers still fail to start, the work runs in this process, with a warning saying so.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator

from absl import logging

_PR_SET_PDEATHSIG = 1  # prctl(2)


def _die_with_parent(parent_pid: int) -> None:
    """Worker initializer: SIGKILL when the parent dies (Linux), and at once if it already has."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)


def _probe() -> int:
    return os.getpid()


@contextlib.contextmanager
def _main_script_hidden() -> Iterator[None]:
    """While workers are spawned, ``__main__`` has no script path, so spawn does not re-run the script
    in them (a main module run with ``-m`` is imported by name, which its guard makes safe)."""
    main = sys.modules["__main__"]
    if getattr(main, "__spec__", None) is not None or not hasattr(main, "__file__"):
        yield
        return
    script = main.__file__
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = script


@contextlib.contextmanager
def process_pool(workers: int) -> Iterator[concurrent.futures.Executor | None]:
    """``workers`` worker processes for the ``with`` block, or None (work in this process) for
    ``workers <= 1`` and where workers cannot start (see the module docstring)."""
    if workers <= 1:
        yield None
        return
    pool = concurrent.futures.ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_die_with_parent,
        initargs=(os.getpid(),),
    )
    try:
        with _main_script_hidden():  # each submit to a busy pool starts one more worker: all start here
            probes = [pool.submit(_probe) for _ in range(workers)]
        for probe in probes:
            probe.result()
    except concurrent.futures.process.BrokenProcessPool as err:
        pool.shutdown(wait=True, cancel_futures=True)
        logging.warning("worker processes could not start (%s): this runs in one process instead", err)
        yield None
        return
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
