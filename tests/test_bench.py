"""Smoke tests of the benchmarks at a tiny size on the CPU: well-formed output only, never speed.

The side-by-side harness (one worker process per contender) is exercised by its parser only: a
full tiny run costs half a minute of the suite. The other benches run whole, each in its own process:
their absl flags share names (``--model``, ``--out``...) and absl keeps one set per process. The GPU
script runs as on the lent machine: a session with a GPU gets one call to run it, so it must not have
broken here.
"""

import json
import os
import subprocess
import sys

import pytest

from lungjax.bench import cpu

TINY = ["--model", "resnet18", "--width", "0.0625", "--warmup", "1"]


def run_bench(name: str, args: list[str]) -> subprocess.CompletedProcess:
    """``python -m lungjax.bench.<name> ARGS`` on the CPU; fails the test when it fails."""
    process = subprocess.run(
        [sys.executable, "-m", f"lungjax.bench.{name}", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return process


def test_parse_contender():
    assert cpu.parse_contender("keras-torch") == ("keras-torch", {})
    assert cpu.parse_contender("lungjax;XLA_FLAGS=--a=1 --b=2;X=y") == (
        "lungjax",
        {"XLA_FLAGS": "--a=1 --b=2", "X": "y"},
    )


@pytest.mark.slow  # runs the benchmark in a process of its own
def test_scaling_output(tmp_path):
    out = tmp_path / "scaling.json"
    process = run_bench(
        "scaling",
        TINY
        + [
            "--batch_sizes",
            "2",
            "--image_size",
            "32",
            "--image_sizes",
            "32",
            "--base_batch",
            "2",
            "--steps",
            "1",
            "--build_patients",
            "3",
            "--build_workers",
            "1",
            "--out",
            str(out),
        ],
    )
    result = json.loads(out.read_text())
    (row,) = result["steps_table"]  # (2, 32) appears once although both sweeps name it
    assert "error" not in row and row["images_per_sec"] > 0 and row["peak_rss_bytes"] > 0
    (build,) = result["build_table"]
    assert build["images"] > 0 and build["seconds"] > 0
    table = process.stdout[process.stdout.index("resnet18 (width 0.0625, float32) train step") :]
    assert "img/s" in table and "[scaling]" not in table  # the table comes last


@pytest.mark.slow  # runs the benchmark in a process of its own
def test_gpu_bench_runs_whole_on_the_cpu_at_a_tiny_size(tmp_path):
    out = tmp_path / "gpu_bench.json"
    result = run_bench(
        "gpu",
        [
            "--model=resnet18",
            "--width=0.0625",
            "--image_size=32",
            "--stored_size=32",
            "--batch_sizes=4",
            "--precisions=float32",
            "--windows=1",
            "--e2e_batch=4",
            "--e2e_patients=12",
            "--e2e_steps=2",
            "--warmup_batches=1",
            "--workers=0",
            "--build_workers=1",
            f"--out={out}",
        ],
    )  # no worker processes: grain's are tested elsewhere, and each costs seconds
    report = json.loads(out.read_text())
    (row,) = report["steps"]
    assert row["precision"] == "float32" and row["batch"] == 4 and row["images_per_sec"] > 0
    assert (row["stem"], row["flatten"]) == ("conv", "false")  # the levers' defaults: today's step
    assert row["train_flops_per_image"] > 0 and row["utilisation_of_bf16_peak"] is None  # no peak for a CPU
    assert report["build_images"] > 0
    (end_to_end,) = report["end_to_end"]
    assert end_to_end["precision"] == "float32" and end_to_end["workers"] == 0
    assert end_to_end["end_to_end_images_per_sec"] > 0
    assert end_to_end["pipeline_only_images_per_sec"] > 0
    assert result.stdout.rstrip().splitlines()[-1].startswith("end to end (")  # the table comes last
