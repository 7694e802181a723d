"""Benchmarks, each runnable as ``python -m lungjax.bench.<name>``."""

import json


def finish(result: dict, out: str, table: str) -> dict:
    """Writes a benchmark's JSON (when ``out`` names a file) and prints its table last."""
    if out:
        with open(out, "w") as handle:
            json.dump(result, handle, indent=2)
    print(table, flush=True)
    return result
