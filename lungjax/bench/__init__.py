"""Benchmarks, each runnable as ``python -m lungjax.bench.<name>``."""

import json
import os


def finish(result: dict, out: str, table: str) -> dict:
    """Writes a benchmark's JSON (when ``out`` names a file) and prints its table last."""
    if out:
        with open(out, "w") as handle:
            json.dump(result, handle, indent=2)
    print(table, flush=True)
    return result


def children_cpu_s() -> float:
    """CPU seconds (user + system) used so far by this process's live child processes (Linux)."""
    me, ticks, total = os.getpid(), os.sysconf("SC_CLK_TCK"), 0.0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()  # after "pid (command)"
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == me:  # fields: state, ppid, ... utime (12th), stime (13th)
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total
