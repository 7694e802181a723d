"""The whole-table planning benchmark runs on the real tables and reports what it planned."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_source_planning_bench(tmp_path, xrv_wheel):
    out = tmp_path / "planning.json"
    command = [
        sys.executable,
        "-m",
        "lungjax.bench.source_planning",
        f"--wheel={xrv_wheel}",
        "--repeats=1",
        f"--out={out}",
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    result = {r["source"]: r for r in json.loads(out.read_text())["sources"]}
    assert (result["chexpert"]["rows"], result["chexpert"]["patients"]) == (223_414, 64_540)
    assert (result["padchest"]["rows"], result["padchest"]["patients"]) == (160_861, 67_625)
    assert all(r["patients_crossing"] == 0 and r["peak_rss_mb"] >= r["baseline_rss_mb"] for r in result.values())
