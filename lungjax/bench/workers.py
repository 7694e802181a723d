"""Worker processes of a bench: both ends of the line protocol between a bench and its workers.

A bench that needs a fresh process per measurement (its own ``XLA_FLAGS`` or ``KERAS_BACKEND``,
read once at import, or its own peak memory) starts its own module again with worker-mode flags.
The worker answers with ``BENCH_RESULT <json>`` lines on stdout, each carrying its peak resident
memory so far; other stdout lines (library chatter) are skipped. Requests, if any, are text lines
on its stdin, ``quit`` ends it. Its stderr goes to a file whose tail explains a failure.
"""

from __future__ import annotations

import json
import os
import queue
import resource
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable

RESULT_PREFIX = "BENCH_RESULT "
QUIT = "quit"


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def emit(payload: dict) -> None:
    """Worker side: one result line, flushed at once since the bench is waiting on it."""
    sys.stdout.write(RESULT_PREFIX + json.dumps({**payload, "peak_rss_bytes": peak_rss_bytes()}) + "\n")
    sys.stdout.flush()


def serve(answer: Callable[[str], dict]) -> None:
    """Worker side: emits ``answer(request)`` for each request line until ``quit`` or the end of stdin."""
    for line in sys.stdin:
        request = line.strip()
        if request == QUIT:
            break
        emit(answer(request))


class Worker:
    """Bench side: ``python -m module --name=value ...`` with extra environment variables.

    ``peak_rss_bytes`` is the highest the worker has reported so far.
    """

    def __init__(self, module: str, flag_values: dict, env: dict[str, str] | None = None, name: str = ""):
        self.name = name or module
        self.peak_rss_bytes = 0
        self._stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 (open while the worker lives; see close)
        command = [sys.executable, "-m", module, *(f"--{flag}={value}" for flag, value in flag_values.items())]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
            text=True,
            bufsize=1,
        )
        # A thread reads stdout, so a timeout never misses lines already buffered by the pipe.
        self._results: queue.Queue[dict | None] = queue.Queue()
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            if line.startswith(RESULT_PREFIX):
                self._results.put(json.loads(line[len(RESULT_PREFIX) :]))
        self._results.put(None)  # the worker closed its stdout: it has ended or is ending

    def read(self, timeout: float) -> dict:
        """The next result; TimeoutError when none comes in time, RuntimeError when the worker ends first."""
        try:
            result = self._results.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.name}: no answer within {timeout:.0f} s") from None
        if result is None:
            self._results.put(None)  # later reads fail alike
            self._stderr.seek(0)
            raise RuntimeError(
                f"{self.name}: worker exited with {self.process.wait()}: {self._stderr.read().strip()[-500:]}"
            )
        self.peak_rss_bytes = max(self.peak_rss_bytes, result["peak_rss_bytes"])
        return result

    def request(self, line: str, timeout: float) -> dict:
        """Sends one request line and returns the worker's answer."""
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return self.read(timeout)

    def close(self) -> None:
        """Asks the worker to quit, kills it if it does not within 30 s."""
        if self.process.poll() is None:
            try:
                self.process.stdin.write(QUIT + "\n")
                self.process.stdin.flush()
                self.process.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self._stderr.close()
