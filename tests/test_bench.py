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


def run_bench(name: str, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m lungjax.bench.<name> ARGS`` on the CPU; fails the test when it fails."""
    process = subprocess.run(
        [sys.executable, "-m", f"lungjax.bench.{name}", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return process


def test_parse_contender():
    assert cpu.parse_contender("keras-torch") == ("keras-torch", (), {})
    assert cpu.parse_contender("lungjax;XLA_FLAGS=--a=1 --b=2;X=y") == (
        "lungjax",
        (),
        {"XLA_FLAGS": "--a=1 --b=2", "X": "y"},
    )
    assert cpu.parse_contender("lungjax-bf16+model.strided_space_to_depth+optimizer_flatten;X=y") == (
        "lungjax-bf16",
        ("model.strided_space_to_depth", "optimizer_flatten"),
        {"X": "y"},
    )


@pytest.mark.parametrize(
    "spec, message",
    [
        ("lungjax-fp8", r"unknown contender kind 'lungjax-fp8'; expected one of lungjax, lungjax-bf16"),
        ("lungjax;XLA_FLAGS", r"contender 'lungjax;XLA_FLAGS': 'XLA_FLAGS' is not NAME=VALUE"),
        ("keras-torch+optimizer_flatten", r"levers are lungjax settings; keras-torch takes none"),
        ("lungjax+model.strided", r"'model.strided' is not a boolean key of the base config"),
        ("lungjax+model.name", r"'model.name' is not a boolean key of the base config"),  # a string
        ("lungjax+model", r"'model' is not a boolean key of the base config"),  # a section
    ],
)
def test_parse_contender_names_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        cpu.parse_contender(spec)


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


# Every code path of the one device call, in six of its settings (each compiles: all thirteen take ~11 minutes here).
GPU_BENCH_SETTINGS = (
    "today",
    "fewer_pass_batch_norm",
    "strided_space_to_depth",  # the model's own rewrite of every strided conv after the stem
    "all_levers_4_workers",  # the step's augmentation, the padded stem, flatten, grain worker processes
    "all_levers_lars_large_batch_0",
    "command_buffers_all_levers",  # a child process with the XLA flags, which the CPU's jaxlib parses too
)


@pytest.mark.slow  # runs the benchmark in a process of its own, six compilations: minutes
def test_gpu_bench_runs_whole_on_the_cpu_at_a_tiny_size(tmp_path):
    """The one device call's script, step only and end to end per setting, the table last. (The module
    is not imported here: its absl flags share names with the CPU bench's.)"""
    out = tmp_path / "gpu_bench.json"
    result = run_bench(
        "gpu",
        [
            "--model=resnet18",
            "--width=0.0625",
            "--image_size=32",
            "--stored_size=40",
            "--batch=4",
            "--large_batches=6,8",
            "--precision=float32",
            f"--settings={','.join(GPU_BENCH_SETTINGS)}",
            "--windows=1",
            "--e2e_patients=12",
            "--e2e_steps=2",
            "--warmup_batches=1",
            "--workers=0",
            "--build_workers=1",
            "--budget_seconds=1000",
            f"--out={out}",
        ],
        timeout=900,
    )
    report = json.loads(out.read_text())
    assert report["build_images"] > 0 and report["jaxlib"]
    rows = {row["setting"]: row for row in report["settings"]}
    assert tuple(rows) == GPU_BENCH_SETTINGS == tuple(report["settings_requested"])
    for name, row in rows.items():
        assert "skipped" not in row, (name, row.get("skipped"))
        assert row["step_images_per_sec"] > 0 and row["end_to_end_images_per_sec"] > 0, name
        assert row["end_to_end_share_of_step"] > 0 and row["main_process_cores"] > 0, name
    assert rows["today"]["levers"] == {} and rows["today"]["batch"] == 4 and not rows["today"]["xla_flags"]
    assert rows["today"]["workers"] == 0 and rows["all_levers_4_workers"]["workers"] == 4
    assert rows["fewer_pass_batch_norm"]["levers"] == {"model.fewer_pass_batch_norm": True}
    assert rows["strided_space_to_depth"]["levers"] == {"model.strided_space_to_depth": True}
    large = rows["all_levers_lars_large_batch_0"]
    assert large["batch"] == 6 and large["levers"]["optimizer"] == "lars" and large["levers"]["augment_on_device"]
    assert "--xla_gpu_enable_command_buffer=+CONVOLUTION" in rows["command_buffers_all_levers"]["xla_flags"]
    kernels = {name: row["hlo"]["channel_reduction_kernels"] for name, row in rows.items()}
    assert kernels["fewer_pass_batch_norm"] < kernels["today"]  # the hand-written gradient reads less
    lines = result.stdout.rstrip().splitlines()
    assert lines[-1].startswith("host cores:")  # the table comes last
    assert [line.split()[0] for line in lines[-len(rows) - 1 : -1]] == list(rows)
