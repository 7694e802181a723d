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

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from lungjax import bench

RESULT_PREFIX = "SCALING_RESULT "


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def step_point(args) -> dict:
    """One (batch, image size) point, in this process (the worker side)."""
    from lungjax.bench import step_timing

    compiled = step_timing.compile_step(args.model, batch_size=args.point_batch, image_size=args.point_size,
                                        half_precision=args.half_precision, width=args.width)
    timing = step_timing.time_steps(compiled, warmup=args.warmup, windows=args.steps, steps_per_window=1)
    return {"batch_size": args.point_batch, "image_size": args.point_size,
            "compile_seconds": compiled.compile_seconds, "step_seconds": timing["window_seconds"],
            "step_seconds_median": timing["step_seconds_median"], "images_per_sec": timing["images_per_sec"],
            "xla_memory_bytes": compiled.memory_bytes, "flops_per_step": compiled.flops_per_step,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def run_point(args, batch_size: int, image_size: int) -> dict:
    command = [sys.executable, "-m", "lungjax.bench.scaling", "--model", args.model, "--width", str(args.width),
               "--warmup", str(args.warmup), "--steps", str(args.steps),
               "--point_batch", str(batch_size), "--point_size", str(image_size)]
    if args.half_precision:
        command.append("--half_precision")
    start = time.perf_counter()
    process = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    for line in process.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            row = json.loads(line[len(RESULT_PREFIX):])
            row["process_seconds"] = time.perf_counter() - start
            return row
    return {"batch_size": batch_size, "image_size": image_size,
            "error": f"exit {process.returncode}: {process.stderr.strip()[-500:]}"}


def build_point(patients: int, stored_size: int, workers: int) -> dict:
    from lungjax.config import base_config
    from lungjax.data import dataset

    data = base_config().data
    data.source, data.phantom_patients, data.stored_size, data.build_workers = "phantom", patients, stored_size, workers
    with tempfile.TemporaryDirectory(prefix="lungjax-scaling-") as workdir:
        start = time.perf_counter()
        builder = dataset.build(data, workdir)
        seconds = time.perf_counter() - start
        images = sum(split.num_examples for split in builder.info.splits.values())
    return {"patients": patients, "images": images, "seconds": seconds, "images_per_sec": images / seconds,
            "stored_size": stored_size, "workers": workers}


def format_table(result: dict) -> str:
    lines = [f"{result['model']} (width {result['width']}, {result['precision']}) train step on the CPU: "
             f"median of {result['steps']} steps after {result['warmup']}",
             f"{'batch':>5} {'size':>5} {'img/s':>8} {'s/step':>8} {'compile s':>9} {'XLA mem':>9} {'peak RSS':>9}"]
    for row in result["steps_table"]:
        if "error" in row:
            lines.append(f"{row['batch_size']:>5} {row['image_size']:>5} failed: {row['error'][-120:]}")
            continue
        xla = row["xla_memory_bytes"] / 2**30 if row["xla_memory_bytes"] else float("nan")
        lines.append(f"{row['batch_size']:>5} {row['image_size']:>5} {row['images_per_sec']:8.2f} "
                     f"{row['step_seconds_median']:8.2f} {row['compile_seconds']:9.1f} {xla:8.2f}G "
                     f"{row['peak_rss_bytes'] / 2**30:8.2f}G")
    if result["build_table"]:
        lines.append(f"dataset build (phantom, stored at {result['build_table'][0]['stored_size']} px, "
                     f"{result['build_table'][0]['workers']} workers)")
        lines.append(f"{'patients':>8} {'images':>7} {'seconds':>8} {'img/s':>7}")
        for row in result["build_table"]:
            lines.append(f"{row['patients']:>8} {row['images']:>7} {row['seconds']:8.1f} {row['images_per_sec']:7.1f}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.point_batch:
        sys.stdout.write(RESULT_PREFIX + json.dumps(step_point(args)) + "\n")
        return {}
    points = [(b, args.image_size) for b in args.batch_sizes]
    points += [(args.base_batch, s) for s in args.image_sizes if (args.base_batch, s) not in points]
    steps_table = []
    for batch_size, image_size in points:
        row = run_point(args, batch_size, image_size)
        steps_table.append(row)
        print(f"[scaling] batch {batch_size} size {image_size}: "
              + (f"{row['images_per_sec']:.2f} img/s" if "error" not in row else row["error"][-200:]), flush=True)
    build_table = []
    for patients in args.build_patients:
        row = build_point(patients, args.stored_size, args.build_workers or os.cpu_count() or 1)
        build_table.append(row)
        print(f"[scaling] build {row['images']} images: {row['seconds']:.1f} s", flush=True)
    result = {"benchmark": "cpu_scaling", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "machine": {"cores": os.cpu_count(), "load_average_at_end": os.getloadavg()},
              "model": args.model, "width": args.width, "precision": "bfloat16" if args.half_precision else "float32",
              "warmup": args.warmup, "steps": args.steps, "steps_table": steps_table, "build_table": build_table}
    return bench.finish(result, args.out, format_table(result))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--half_precision", action="store_true")
    parser.add_argument("--batch_sizes", type=int_list, default=[8, 16, 32, 64])
    parser.add_argument("--image_size", type=int, default=224, help="image size of the batch sweep")
    parser.add_argument("--image_sizes", type=int_list, default=[224, 320, 512])
    parser.add_argument("--base_batch", type=int, default=8, help="batch size of the image-size sweep")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--build_patients", type=int_list, default=[25, 50, 100])
    parser.add_argument("--stored_size", type=int, default=256)
    parser.add_argument("--build_workers", type=int, default=0, help="0: one per CPU core")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per step point")
    parser.add_argument("--out", default="cpu_scaling.json")
    parser.add_argument("--point_batch", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--point_size", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
