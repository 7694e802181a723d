"""Scaling with work on the CPU: lungjax's train step against batch size and image size, and the
dataset build against number of images.

* Step: for each (batch, image size) — ``--batch_sizes`` at ``--image_size``, then ``--image_sizes``
  at ``--base_batch`` — a fresh process compiles lungjax's real train step
  (``lungjax.bench.step_timing``), records the compile seconds and XLA's memory estimate, runs
  ``--warmup`` steps then ``--steps`` timed ones, and reports the median images/s and the process'
  peak resident memory (a fresh process per point, so each peak is that point's own).
* Build: the real builder (``lungjax.data.dataset.build``) over a phantom NIH tree of
  ``--build_patients`` patients each, in a fresh folder: seconds and images/s against images.

    python -m lungjax.bench.scaling                    # ResNet50, batch 8…64 at 224, 224/320/512 at batch 8
    python -m lungjax.bench.scaling --model resnet18 --width 0.125 --batch_sizes 2,4 --image_sizes 32 \\
        --image_size 32 --base_batch 2 --steps 1 --warmup 1 --build_patients 4   # smoke size

Prints a table last and writes JSON (``--out``).
"""

from __future__ import annotations

import os
import tempfile
import time

from absl import app, flags

from lungjax import bench, xla_cpu
from lungjax.bench import workers

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "resnet50", "Model name.")
flags.DEFINE_float("width", 1.0, "Width multiplier.")
flags.DEFINE_boolean("half_precision", False, "bfloat16 compute.")
flags.DEFINE_list("batch_sizes", ["8", "16", "32", "64"], "Batch sizes of the batch sweep.")
flags.DEFINE_integer("image_size", 224, "Image size of the batch sweep.")
flags.DEFINE_list("image_sizes", ["224", "320", "512"], "Image sizes of the image-size sweep.")
flags.DEFINE_integer("base_batch", 8, "Batch size of the image-size sweep.")
flags.DEFINE_integer("warmup", 1, "Untimed steps after the compile.")
flags.DEFINE_integer("steps", 2, "Timed steps per point.")
flags.DEFINE_list("build_patients", ["25", "50", "100"], "Phantom patients of each dataset build (empty: none).")
flags.DEFINE_integer("stored_size", 256, "Image size stored by the dataset builds.")
flags.DEFINE_integer("build_workers", 0, "Processes building the dataset (0: one per CPU core).")
flags.DEFINE_float("timeout", 900.0, "Seconds per step point.")
flags.DEFINE_string("out", "cpu_scaling.json", "Where the JSON results go.")
flags.DEFINE_integer("point_batch", 0, "Internal: measure this batch size as a worker process.")
flags.DEFINE_integer("point_size", 0, "Internal: the worker's image size.")


def ints(values: list[str]) -> list[int]:
    """A list flag's items as ints, skipping empty ones (a trailing comma), as the comma lists always did."""
    return [int(x) for x in values if x]


def step_point(args) -> dict:
    """One (batch, image size) point, in this process (the worker side)."""
    from lungjax.bench import step_timing

    xla_cpu.apply_defaults()  # what a user of lungjax.main gets, before the step starts JAX's backends
    compiled = step_timing.compile_step(
        args.model,
        batch_size=args.point_batch,
        image_size=args.point_size,
        half_precision=args.half_precision,
        width=args.width,
    )
    timing = step_timing.time_steps(compiled, warmup=args.warmup, windows=args.steps, steps_per_window=1)
    return {
        "batch_size": args.point_batch,
        "image_size": args.point_size,
        "compile_seconds": compiled.compile_seconds,
        "step_seconds": timing["window_seconds"],
        "step_seconds_median": timing["step_seconds_median"],
        "images_per_sec": timing["images_per_sec"],
        "xla_memory_bytes": compiled.memory_bytes,
        "flops_per_step": compiled.flops_per_step,
    }


def run_point(args, batch_size: int, image_size: int) -> dict:
    """One point in a fresh worker process, so that its peak memory is its own."""
    start = time.perf_counter()
    worker = workers.Worker(
        "lungjax.bench.scaling",
        {
            "model": args.model,
            "width": args.width,
            "half_precision": args.half_precision,
            "warmup": args.warmup,
            "steps": args.steps,
            "point_batch": batch_size,
            "point_size": image_size,
        },
    )
    try:
        return {**worker.read(args.timeout), "process_seconds": time.perf_counter() - start}
    except (RuntimeError, TimeoutError) as error:
        return {"batch_size": batch_size, "image_size": image_size, "error": str(error)}
    finally:
        worker.close()


def build_point(patients: int, stored_size: int, build_workers: int) -> dict:
    from lungjax.config.base import base_config
    from lungjax.data import dataset

    data = base_config().data
    data.source, data.phantom_patients, data.stored_size, data.build_workers = (
        "phantom",
        patients,
        stored_size,
        build_workers,
    )
    with tempfile.TemporaryDirectory(prefix="lungjax-scaling-") as workdir:
        start = time.perf_counter()
        builder = dataset.build(data, workdir)
        seconds = time.perf_counter() - start
        images = sum(split.num_examples for split in builder.info.splits.values())
    return {
        "patients": patients,
        "images": images,
        "seconds": seconds,
        "images_per_sec": images / seconds,
        "stored_size": stored_size,
        "workers": build_workers,
    }


def format_table(result: dict) -> str:
    lines = [
        f"{result['model']} (width {result['width']}, {result['precision']}) train step on the CPU: "
        f"median of {result['steps']} steps after {result['warmup']}",
        f"{'batch':>5} {'size':>5} {'img/s':>8} {'s/step':>8} {'compile s':>9} {'XLA mem':>9} {'peak RSS':>9}",
    ]
    for row in result["steps_table"]:
        if "error" in row:
            last_line = row["error"].splitlines()[-1][-120:]  # a worker's error ends with its stderr
            lines.append(f"{row['batch_size']:>5} {row['image_size']:>5} failed: {last_line}")
            continue
        xla = row["xla_memory_bytes"] / 2**30 if row["xla_memory_bytes"] else float("nan")
        lines.append(
            f"{row['batch_size']:>5} {row['image_size']:>5} {row['images_per_sec']:8.2f} "
            f"{row['step_seconds_median']:8.2f} {row['compile_seconds']:9.1f} {xla:8.2f}G "
            f"{row['peak_rss_bytes'] / 2**30:8.2f}G"
        )
    if result["build_table"]:
        lines.append(
            f"dataset build (phantom, stored at {result['build_table'][0]['stored_size']} px, "
            f"{result['build_table'][0]['workers']} workers)"
        )
        lines.append(f"{'patients':>8} {'images':>7} {'seconds':>8} {'img/s':>7}")
        for row in result["build_table"]:
            lines.append(f"{row['patients']:>8} {row['images']:>7} {row['seconds']:8.1f} {row['images_per_sec']:7.1f}")
    return "\n".join(lines)


def main(argv) -> None:
    del argv  # flags only
    args = FLAGS
    if args.point_batch:
        workers.emit(step_point(args))
        return
    points = [(b, args.image_size) for b in ints(args.batch_sizes)]
    points += [(args.base_batch, s) for s in ints(args.image_sizes) if (args.base_batch, s) not in points]
    steps_table = []
    for batch_size, image_size in points:
        row = run_point(args, batch_size, image_size)
        steps_table.append(row)
        print(
            f"[scaling] batch {batch_size} size {image_size}: "
            + (f"{row['images_per_sec']:.2f} img/s" if "error" not in row else row["error"][-200:]),
            flush=True,
        )
    build_table = []
    for patients in ints(args.build_patients):
        row = build_point(patients, args.stored_size, args.build_workers or os.cpu_count() or 1)
        build_table.append(row)
        print(f"[scaling] build {row['images']} images: {row['seconds']:.1f} s", flush=True)
    result = {
        "benchmark": "cpu_scaling",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {"cores": os.cpu_count(), "load_average_at_end": os.getloadavg()},
        "model": args.model,
        "width": args.width,
        "precision": "bfloat16" if args.half_precision else "float32",
        "warmup": args.warmup,
        "steps": args.steps,
        "steps_table": steps_table,
        "build_table": build_table,
    }
    bench.finish(result, args.out, format_table(result))


if __name__ == "__main__":
    app.run(main)
