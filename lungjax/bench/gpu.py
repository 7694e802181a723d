"""GPU benchmark: ResNet50 train step at 224, bf16 and float32, several batch sizes, and end to end.

Measures, per (precision, batch, stem, flatten): compile time, step-only throughput with the batch
already on the device, XLA's memory estimate, and utilisation = the step's FLOPs (XLA's CPU cost analysis) per
second against the card's dense bf16 peak. Then end to end: a phantom ArrayRecord dataset built with the
real builder, fed through the real grain pipeline (decode, ``light`` augmentation, batch) and
``prefetch_to_device`` into the same step. Writes JSON and prints a table last.

One call of the ``device`` tool, from the repository root. The wheels the GPU image lacks come from
``bash ../shared/tools/gpu-wheels.sh importlib_resources`` into ``.whl``, which is git-ignored and
carried. Do not add flax: the image's flax matches its jax, and flax 0.12.8 failed with the image's
jax 0.11.2::

    run(carry=[".whl"], timeout_s=540, command="python3 -m pip install -q --no-index --no-deps
        --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl &&
        export PYTHONPATH=/tmp/site:$PWD || exit; PYTHONUNBUFFERED=1 python3 -m lungjax.bench.gpu
        --precisions bfloat16,float32 --batch_sizes 512,256,128,64 --e2e_batch 512 --workers 14,6
        --out $OUT/gpu_bench.json 2>&1 | tee $OUT/gpu_bench.log")

Every ``--stems`` x ``--flatten`` pair compiles once per (precision, batch): for issue 18's stem and
flatten levers, ``--precisions bfloat16 --batch_sizes 256 --stems conv,space_to_depth --flatten
false,true`` is four compiles.

On the CPU, a tiny smoke run: ``python -m lungjax.bench.gpu --model resnet18 --width 0.125
--image_size 32 --stored_size 32 --batch_sizes 8 --precisions float32 --e2e_batch 8 --e2e_patients 20
--e2e_steps 4``.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import tempfile
import time

import jax
from absl import app, flags

from lungjax import bench
from lungjax.bench import step_timing
from lungjax.config.base import base_config
from lungjax.data import dataset, labels, pipeline, records
from lungjax.models import flops
from lungjax.models.resnet import create_model
from lungjax.runtime import sharding

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "resnet50", "Model name.")
flags.DEFINE_float("width", 1.0, "Width multiplier.")
flags.DEFINE_integer("image_size", 224, "Training image size.")
flags.DEFINE_integer("stored_size", 256, "Image size stored in the end-to-end dataset.")
flags.DEFINE_list("batch_sizes", ["256", "128", "64"], "Global batch sizes for the step-only runs.")
flags.DEFINE_list("precisions", ["bfloat16", "float32"], "Compute precisions.")
# Speed levers (issue 18), measured step-only for every listed value; end to end uses the first.
STEMS = {"conv": False, "space_to_depth": True}  # -> config.model.stem_space_to_depth
flags.DEFINE_list("stems", ["conv"], f"Stem convolutions: {', '.join(STEMS)}.")
flags.DEFINE_list("flatten", ["false"], "config.optimizer_flatten values: false, true.")
flags.register_validator("stems", lambda stems: set(stems) <= set(STEMS), f"--stems takes {', '.join(STEMS)}")
flags.register_validator("flatten", lambda values: set(values) <= {"false", "true"}, "--flatten takes false, true")
flags.DEFINE_integer("windows", 5, "Timed windows of 10 steps; the median is reported.")
flags.DEFINE_integer("e2e_batch", 256, "Batch of the end-to-end run (reuses that step-only compile).")
flags.DEFINE_integer("e2e_patients", 1000, "Phantom patients (about 3 films each) for the end-to-end run.")
flags.DEFINE_integer("e2e_steps", 40, "Timed end-to-end steps.")
flags.DEFINE_integer("warmup_batches", 5, "Untimed batches before timing (at least one per grain worker).")
flags.DEFINE_list(
    "workers",
    [str(max((os.cpu_count() or 2) - 2, 1))],
    "grain worker processes (0: in this process); several: one end-to-end run each, to see "
    "whether fewer workers leave the step's host thread more room.",
)
flags.DEFINE_integer("build_workers", os.cpu_count() or 1, "Processes building the phantom dataset (1: this one).")
flags.DEFINE_float("budget_seconds", 360.0, "Stop starting new measurements after this long.")
flags.DEFINE_string("out", "gpu_bench.json", "Where the JSON results go.")
flags.DEFINE_string("profile_dir", "", "Write a jax.profiler trace of the end-to-end step here.")

# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s, from the vendors' data sheets.
BF16_PEAK_FLOPS = {"H100 80GB HBM3": 989.4e12, "H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}


def card_peak(device_kind: str) -> float | None:
    for name, peak in BF16_PEAK_FLOPS.items():
        if name in device_kind:
            return peak
    return None


def train_flops_per_image(args) -> float:
    """Training-step FLOPs per image from XLA's cost analysis compiled for the CPU.

    The GPU backend's cost analysis leaves out convolutions that run as cuDNN custom calls (it
    reported 0.40 GFLOP per image for ResNet50 on an H200, against 23.7 on the CPU), so utilisation
    is computed from the CPU count, which includes every convolution.
    """
    with jax.default_device(jax.devices("cpu")[0]):
        model = create_model(args.model, num_classes=labels.NUM_CLASSES, width=args.width)
        return flops.flops_per_image(model, args.image_size, train=True)


def step_benchmarks(args, peak: float | None, deadline: float, rows: list[dict], save) -> dict:
    """Appends step-only rows (calling ``save`` after each, so a cut-off run keeps what it measured);
    returns the compiled steps by (precision, batch) for reuse end to end."""
    compiled_steps = {}
    flops_per_image = train_flops_per_image(args)
    levers = [(stem, flatten) for stem in args.stems for flatten in args.flatten]
    for precision in args.precisions:
        for batch_size, (stem, flatten) in itertools.product(map(int, args.batch_sizes), levers):
            setting = {"precision": precision, "batch": batch_size, "stem": stem, "flatten": flatten}
            if time.perf_counter() > deadline:
                rows.append({**setting, "skipped": "time budget"})
                continue
            try:
                compiled = step_timing.compile_step(
                    args.model,
                    batch_size=batch_size,
                    image_size=args.image_size,
                    half_precision=precision == "bfloat16",
                    width=args.width,
                    stem_space_to_depth=STEMS[stem],
                    optimizer_flatten=flatten == "true",
                )
                timing = step_timing.time_steps(compiled, windows=args.windows)
            except Exception as err:  # e.g. out of memory: record it and measure the rest
                rows.append({**setting, "skipped": f"{type(err).__name__}: {err}"[:300]})
                print(json.dumps(rows[-1]), flush=True)
                save()
                continue
            achieved = flops_per_image * timing["images_per_sec"]
            rows.append(
                {
                    **setting,
                    "compile_seconds": compiled.compile_seconds,
                    "images_per_sec": timing["images_per_sec"],
                    "step_ms": 1e3 * timing["step_seconds_median"],
                    "window_seconds": timing["window_seconds"],
                    "train_flops_per_image": flops_per_image,
                    "achieved_tflops": achieved / 1e12,
                    "utilisation_of_bf16_peak": achieved / peak if peak else None,
                    "xla_memory_gib": compiled.memory_bytes / 2**30 if compiled.memory_bytes else None,
                    "process_peak_memory_gib": (step_timing.peak_device_memory() or 0) / 2**30,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            save()
            if (stem, flatten) == levers[0]:  # the others are freed: only the first runs end to end
                compiled_steps[(precision, batch_size)] = compiled
    return compiled_steps


def profile(compiled: step_timing.CompiledStep, directory: str, steps: int = 5) -> None:
    """A ``jax.profiler`` trace of a few steps, to see where a step's time goes (TensorBoard/xprof)."""
    state = compiled.state
    with jax.profiler.trace(directory):
        for _ in range(steps):
            state, metrics = compiled.step_fn(state, compiled.batch)
        jax.block_until_ready((state, metrics))
    compiled.state = state


def phantom_builder(args, workdir: str):
    """The real builder over a phantom NIH-format tree, stored at 256 pixels."""
    data = base_config().data
    data.source, data.phantom_patients, data.stored_size = "phantom", args.e2e_patients, args.stored_size
    data.build_workers = args.build_workers
    start = time.perf_counter()
    builder = dataset.build(data, workdir)
    return builder, time.perf_counter() - start


def end_to_end(args, compiled: step_timing.CompiledStep, builder, workers: int) -> dict:
    """grain (``workers`` processes) -> prefetch_to_device -> the compiled step; and the pipeline
    alone on the host."""
    source = records.data_source(builder, "train")
    local_batch = sharding.process_batch_size(compiled.batch_size)

    def loader():
        return pipeline.train_loader(
            source, batch_size=local_batch, image_size=args.image_size, augment="light", seed=0, worker_count=workers
        )

    # Workers hand out batches in turn: every worker must have started before the clock does.
    warmup = max(args.warmup_batches, workers)
    host_batches = iter(loader())
    for _ in range(warmup):
        next(host_batches)
    workers_cpu, start = bench.children_cpu_s(), time.perf_counter()
    for _ in range(args.e2e_steps):
        next(host_batches)
    pipeline_rate = args.e2e_steps * compiled.batch_size / (time.perf_counter() - start)
    pipeline_cpu = bench.children_cpu_s() - workers_cpu

    mesh = sharding.make_mesh()
    device_batches = sharding.prefetch_to_device(((b, None) for b in loader()), sharding.batch_sharding(mesh))
    state = compiled.state
    for _ in range(warmup):
        state, metrics = compiled.step_fn(state, next(device_batches)[0])
    jax.block_until_ready(state)
    step_times = []
    workers_cpu, main_cpu = bench.children_cpu_s(), time.process_time()
    start = last = time.perf_counter()
    for _ in range(args.e2e_steps):
        state, metrics = compiled.step_fn(state, next(device_batches)[0])
        jax.block_until_ready(metrics)
        now = time.perf_counter()
        step_times.append(now - last)
        last = now
    total = time.perf_counter() - start
    compiled.state = state
    images = args.e2e_steps * compiled.batch_size
    return {
        "batch": compiled.batch_size,
        "workers": workers,
        "pipeline_only_images_per_sec": pipeline_rate,
        "pipeline_only_images_per_worker_cpu_s": images / pipeline_cpu if pipeline_cpu else None,
        "end_to_end_images_per_sec": images / total,
        "end_to_end_step_ms_median": 1e3 * statistics.median(step_times),
        # Where the host's cores went while training: the main process (step dispatch, the
        # transfer thread) and the grain workers, in cores busy on average.
        "end_to_end_main_process_cores": (time.process_time() - main_cpu) / total,
        "end_to_end_worker_cores": (bench.children_cpu_s() - workers_cpu) / total,
    }


def format_table(result: dict) -> str:
    lines = [
        f"{result['device']}  model={result['model']}@{result['image_size']}",
        f"{'precision':<10}{'batch':>6}{'stem':>15}{'flatten':>8}{'img/s':>10}{'step ms':>9}{'compile s':>10}"
        f"{'TFLOP/s':>9}{'util':>7}{'XLA GiB':>9}",
    ]
    for row in result["steps"]:
        setting = f"{row['precision']:<10}{row['batch']:>6}{row['stem']:>15}{row['flatten']:>8}"
        if "skipped" in row:
            lines.append(f"{setting}  skipped ({row['skipped']})")
            continue
        tflops = f"{row['achieved_tflops']:.0f}" if row["achieved_tflops"] else "-"
        util = f"{100 * row['utilisation_of_bf16_peak']:.0f}%" if row["utilisation_of_bf16_peak"] else "-"
        memory = f"{row['xla_memory_gib']:.1f}" if row["xla_memory_gib"] else "-"
        lines.append(
            f"{setting}{row['images_per_sec']:>10.0f}{row['step_ms']:>9.1f}"
            f"{row['compile_seconds']:>10.1f}{tflops:>9}{util:>7}{memory:>9}"
        )
    for e2e in result.get("end_to_end", []):
        lines.append(
            f"end to end ({e2e['precision']}, batch {e2e['batch']}, stem {e2e['stem']}, flatten {e2e['flatten']}, "
            f"{e2e['workers']} grain workers, light): "
            f"{e2e['end_to_end_images_per_sec']:.0f} img/s; pipeline alone "
            f"{e2e['pipeline_only_images_per_sec']:.0f} img/s; host cores busy: main process "
            f"{e2e['end_to_end_main_process_cores']:.1f}, workers {e2e['end_to_end_worker_cores']:.1f}; dataset build "
            f"{result['build_seconds']:.0f} s for {result['build_images']} images"
        )
    return "\n".join(lines)


def main(argv) -> None:
    del argv  # flags only; absl parses them, which grain's worker processes also require
    args = FLAGS
    # Each step is compiled ahead of time (to time the compilation) and then called through jit:
    # the persistent cache lets that call reuse the compilation.
    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="lungjax-xla-cache-"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    begin = time.perf_counter()
    deadline = begin + args.budget_seconds
    device = jax.devices()[0]
    result = {
        "device": f"{device.platform}:{device.device_kind}",
        "jax": jax.__version__,
        "model": args.model,
        "width": args.width,
        "image_size": args.image_size,
        "date": time.strftime("%Y-%m-%d"),
        "cpu_count": os.cpu_count(),
        "steps": [],
    }
    print(json.dumps(result), flush=True)

    def save():
        result["total_seconds"] = time.perf_counter() - begin
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=2)

    compiled_steps = step_benchmarks(args, card_peak(device.device_kind), deadline, result["steps"], save)
    e2e_precision = next((p for p in ("bfloat16", "float32") if (p, args.e2e_batch) in compiled_steps), None)
    e2e_step = compiled_steps.get((e2e_precision, args.e2e_batch))
    if args.profile_dir and e2e_step is not None:
        profile(e2e_step, args.profile_dir)
    if e2e_step is not None and time.perf_counter() < deadline + 60:
        with tempfile.TemporaryDirectory() as workdir:
            builder, result["build_seconds"] = phantom_builder(args, workdir)
            result["build_images"] = sum(builder.info.splits[s].num_examples for s in builder.info.splits)
            result["end_to_end"] = []
            for workers in map(int, args.workers):
                result["end_to_end"].append(
                    {
                        "precision": e2e_precision,
                        "stem": args.stems[0],
                        "flatten": args.flatten[0],
                        **end_to_end(args, e2e_step, builder, workers),
                    }
                )
                print(json.dumps(result["end_to_end"][-1]), flush=True)
                save()
    save()
    print(format_table(result))


if __name__ == "__main__":
    app.run(main)
