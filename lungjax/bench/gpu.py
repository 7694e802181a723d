"""GPU benchmark: every speed lever of the ResNet-50 train step, on and off, step only and end to end, in one call.

Each setting (``SETTINGS``: today's step, one lever at a time, all of them, the command buffers,
then large batches with LARS) is compiled once and measured twice: step only, the batch already on the device
(median of ``--windows`` windows of 10 steps), and end to end, a phantom ArrayRecord dataset built
with the real builder, fed through the real grain pipeline (decode, ``light`` augmentation on the
host or, with ``augment_on_device``, in the step) and ``prefetch_to_device`` into the same step,
with the host cores the main process and the grain workers keep busy. XLA flags are read once per
process, so a setting with flags (the command buffers that capture convolutions) runs in a child
process of its own, on the dataset the parent built. Rows are saved to ``--out`` after each
setting, so a run cut off by its budget keeps what it measured; the table comes last.

One call of the ``device`` tool, from the repository root (BENCHMARKS.md, issue 27, has the exact
command). The wheels the GPU image lacks come from ``bash ../shared/tools/gpu-wheels.sh
importlib_resources`` into ``.whl``, which is git-ignored and carried. Do not add flax: the image's
flax matches its jax, and flax 0.12.8 failed with the image's jax 0.11.2.

On the CPU, a tiny smoke run of every setting: ``python -m lungjax.bench.gpu --model resnet18
--width 0.0625 --image_size 32 --stored_size 40 --batch 4 --large_batches 8 --precision float32
--e2e_patients 12 --e2e_steps 2 --workers 0 --build_workers 1``.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jaxlib
from absl import app, flags

from lungjax import bench
from lungjax.bench import step_timing
from lungjax.config.base import base_config
from lungjax.data import dataset, pipeline, records
from lungjax.runtime import sharding

# The command buffers (CUDA graphs) that also capture convolutions. Parsed by jaxlib 0.10.2 and by the
# device's; --xla_gpu_enable_cuda_graphs, --xla_gpu_graph_level and --xla_gpu_use_cudnn_batchnorm are
# unknown there and abort the process.
COMMAND_BUFFER_FLAGS = "--xla_gpu_enable_command_buffer=+CONVOLUTION --xla_gpu_graph_min_graph_size=1"


@dataclasses.dataclass(frozen=True)
class Setting:
    """Config keys of the levers (``step_timing.compile_step``'s ``levers``); ``large_batch``: run at the
    ``--large_batches`` entry of that index instead of ``--batch``; ``xla_flags``: in a child process;
    ``workers``: end to end with this many grain workers instead of ``--workers``."""

    levers: dict
    large_batch: int | None = None
    xla_flags: str = ""
    workers: int | None = None


ALL_LEVERS = {
    "model.stem_pad_channels": True,
    "optimizer_flatten": True,
    "model.fewer_pass_batch_norm": True,
    "augment_on_device": True,
}
SETTINGS = {
    "today": Setting({}),
    "stem_space_to_depth": Setting({"model.stem_space_to_depth": True}),
    "stem_pad_channels": Setting({"model.stem_pad_channels": True}),
    "strided_space_to_depth": Setting({"model.strided_space_to_depth": True}),
    "optimizer_flatten": Setting({"optimizer_flatten": True}),
    "fewer_pass_batch_norm": Setting({"model.fewer_pass_batch_norm": True}),
    "augment_on_device": Setting({"augment_on_device": True}),
    "all_levers": Setting(ALL_LEVERS),
    # The host decodes only: does a third of the workers leave the step's main thread more room?
    "all_levers_4_workers": Setting(ALL_LEVERS, workers=4),
    "command_buffers_flatten": Setting({"optimizer_flatten": True}, xla_flags=COMMAND_BUFFER_FLAGS),
    "command_buffers_all_levers": Setting(ALL_LEVERS, xla_flags=COMMAND_BUFFER_FLAGS),
    "all_levers_lars_large_batch_0": Setting({**ALL_LEVERS, "optimizer": "lars"}, large_batch=0),
    "all_levers_lars_large_batch_1": Setting({**ALL_LEVERS, "optimizer": "lars"}, large_batch=1),
}

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "resnet50", "Model name.")
flags.DEFINE_float("width", 1.0, "Width multiplier.")
flags.DEFINE_integer("image_size", 224, "Training image size.")
flags.DEFINE_integer("stored_size", 256, "Image size stored in the end-to-end dataset.")
flags.DEFINE_enum("precision", "bfloat16", ["bfloat16", "float32"], "Compute precision.")
flags.DEFINE_integer("batch", 512, "Global batch of every setting but the large-batch ones.")
flags.DEFINE_list("large_batches", ["768", "1024"], "Batches of the all_levers_lars_large_batch_<i> settings.")
flags.DEFINE_list("settings", list(SETTINGS), f"Settings to measure, in this order: {', '.join(SETTINGS)}.")
flags.register_validator(
    "settings", lambda names: set(names) <= set(SETTINGS), f"--settings takes {', '.join(SETTINGS)}"
)
flags.DEFINE_integer("windows", 3, "Timed step-only windows of 10 steps; the median is reported.")
flags.DEFINE_integer("e2e_patients", 1000, "Phantom patients (about 3 films each) for the end-to-end runs.")
flags.DEFINE_integer("e2e_steps", 30, "Timed end-to-end steps per setting.")
flags.DEFINE_integer("warmup_batches", 3, "Untimed end-to-end batches before timing (at least one per worker).")
flags.DEFINE_integer("workers", max((os.cpu_count() or 2) - 4, 1), "grain worker processes (0: in this process).")
flags.DEFINE_integer("build_workers", os.cpu_count() or 1, "Processes building the phantom dataset (1: this one).")
flags.DEFINE_float("budget_seconds", 400.0, "Start no new setting after this long.")
flags.DEFINE_string("out", "gpu_bench.json", "Where the JSON results go.")
flags.DEFINE_string("profile_dir", "", "Write a jax.profiler trace of the best setting's end-to-end steps here.")
flags.DEFINE_string("data_dir", "", "Internal: the parent's built dataset (a child process measures on it).")


def batch_of(setting: Setting, args) -> int:
    return args.batch if setting.large_batch is None else int(args.large_batches[setting.large_batch])


def phantom_builder(args, workdir: str):
    """The real builder over a phantom NIH-format tree (built once per workdir: a child reuses it)."""
    data = base_config().data
    data.source, data.phantom_patients, data.stored_size = "phantom", args.e2e_patients, args.stored_size
    data.build_workers = args.build_workers
    start = time.perf_counter()
    builder = dataset.build(data, workdir)
    return builder, time.perf_counter() - start


def end_to_end(args, compiled: step_timing.CompiledStep, builder, setting: Setting) -> dict:
    """grain (``workers`` processes) -> prefetch_to_device -> the compiled step: images/s, the step's
    median, and the host cores the main process (dispatch, transfers) and the workers keep busy."""
    workers = args.workers if setting.workers is None else setting.workers
    source = records.data_source(builder, "train")
    loader = pipeline.train_loader(
        source,
        batch_size=sharding.process_batch_size(compiled.batch_size),
        image_size=args.image_size,
        augment="light",
        seed=0,
        worker_count=workers,
        augment_on_device=setting.levers.get("augment_on_device", False),
    )
    warmup = max(args.warmup_batches, workers)  # workers hand out batches in turn
    # Exactly the batches used: the transfer thread then ends, and the loader's workers with it.
    host_batches = iter(loader)
    device_batches = sharding.prefetch_to_device(
        ((next(host_batches), None) for _ in range(warmup + args.e2e_steps)),
        sharding.batch_sharding(sharding.make_mesh()),
    )
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
    main_cores = (time.process_time() - main_cpu) / total
    worker_cores = (bench.children_cpu_s() - workers_cpu) / total
    compiled.state = state
    del device_batches, host_batches  # stops grain's worker processes before the next setting starts its own
    gc.collect()
    return {
        "workers": workers,
        "end_to_end_images_per_sec": args.e2e_steps * compiled.batch_size / total,
        "end_to_end_step_ms_median": 1e3 * statistics.median(step_times),
        "main_process_cores": main_cores,
        "worker_cores": worker_cores,
    }


def measure(name: str, args, builder) -> dict:
    """One setting in this process: compile, step only, end to end."""
    setting = SETTINGS[name]
    row = {"setting": name, "batch": batch_of(setting, args), "levers": setting.levers, "xla_flags": setting.xla_flags}
    try:
        compiled = step_timing.compile_step(
            args.model,
            batch_size=row["batch"],
            image_size=args.image_size,
            half_precision=args.precision == "bfloat16",
            width=args.width,
            levers=setting.levers,
            stored_size=args.stored_size,
        )
        timing = step_timing.time_steps(compiled, windows=args.windows)
        e2e = end_to_end(args, compiled, builder, setting)
    except Exception as err:  # e.g. out of memory at a large batch: record it and measure the rest
        return {**row, "skipped": f"{type(err).__name__}: {err}"[:300]}
    return {
        **row,
        "compile_seconds": compiled.compile_seconds,
        "step_images_per_sec": timing["images_per_sec"],
        "step_ms": 1e3 * timing["step_seconds_median"],
        "xla_memory_gib": compiled.memory_bytes / 2**30 if compiled.memory_bytes else None,
        "hlo": compiled.hlo,
        **e2e,
        "end_to_end_share_of_step": e2e["end_to_end_images_per_sec"] / timing["images_per_sec"],
    }


def measure_in_child(name: str, args, workdir: str, remaining: float) -> list[dict]:
    """``name`` in a child process with its XLA flags (read once per process), on the built dataset."""
    setting = SETTINGS[name]
    out = os.path.join(workdir, f"{name}.json")
    passed = [
        FLAGS[flag].serialize()
        for flag in ("model", "width", "image_size", "stored_size", "precision", "batch", "large_batches")
        + ("windows", "e2e_patients", "e2e_steps", "warmup_batches", "workers", "build_workers")
    ]
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {setting.xla_flags}".strip()}
    command = [sys.executable, "-m", "lungjax.bench.gpu", *passed, f"--settings={name}", f"--data_dir={workdir}"]
    command += [f"--out={out}", f"--budget_seconds={remaining}"]
    process = subprocess.run(command, env=env, check=False, capture_output=True, text=True)
    if process.returncode != 0 or not os.path.exists(out):
        error = process.stderr.strip().splitlines()[-1:] or [f"exit {process.returncode}"]
        return [{"setting": name, "xla_flags": setting.xla_flags, "skipped": f"child process: {error[0]}"[:300]}]
    with open(out) as handle:
        return json.load(handle)["settings"]


def format_table(result: dict) -> str:
    lines = [
        f"{result['device']}, jax {result['jax']}, jaxlib {result['jaxlib']}, "
        f"{result['model']}@{result['image_size']} {result['precision']}, {result['workers']} grain workers, "
        f"light augmentation, {result['cpu_count']} host cores",
        f"{'setting':<32}{'batch':>6}{'workers':>8}{'step img/s':>11}{'e2e img/s':>10}{'e2e/step':>9}{'host cores':>11}"
        f"{'compile s':>10}{'XLA GiB':>8}{'BN kernels':>11}",
    ]
    for row in result["settings"]:
        if "skipped" in row:
            lines.append(f"{row['setting']:<32}{row.get('batch', ''):>6}  skipped ({row['skipped']})")
            continue
        memory = f"{row['xla_memory_gib']:.1f}" if row["xla_memory_gib"] else "-"
        lines.append(
            f"{row['setting']:<32}{row['batch']:>6}{row['workers']:>8}{row['step_images_per_sec']:>11.0f}"
            f"{row['end_to_end_images_per_sec']:>10.0f}{100 * row['end_to_end_share_of_step']:>8.0f}%"
            f"{row['main_process_cores'] + row['worker_cores']:>11.1f}{row['compile_seconds']:>10.1f}{memory:>8}"
            f"{row['hlo']['channel_reduction_kernels']:>11}"
        )
    lines.append(
        "host cores: main process + grain workers busy during the end-to-end steps; BN kernels: kernels that "
        f"reduce activations to per-channel sums (BatchNorm). Dataset: {result.get('build_images')} images, "
        f"built in {result.get('build_seconds', 0):.0f} s"
    )
    return "\n".join(lines)


def profile_best(result: dict, args, builder, directory: str) -> None:
    """A ``jax.profiler`` trace of the end-to-end steps of the fastest setting measured in this process."""
    measured = [row for row in result["settings"] if "skipped" not in row and not row["xla_flags"]]
    if not measured:
        return
    best = max(measured, key=lambda row: row["end_to_end_images_per_sec"])
    setting = SETTINGS[best["setting"]]
    compiled = step_timing.compile_step(
        args.model,
        batch_size=best["batch"],
        image_size=args.image_size,
        half_precision=args.precision == "bfloat16",
        width=args.width,
        levers=setting.levers,
        stored_size=args.stored_size,
    )
    with jax.profiler.trace(directory):
        end_to_end(args, compiled, builder, setting)
    result["profiled_setting"] = best["setting"]


def main(argv) -> None:
    del argv  # flags only; absl parses them, which grain's worker processes also require
    args = FLAGS
    # The settings with XLA flags run in a child process while this one is alive: by default JAX would
    # reserve 75% of the GPU's memory here at start-up and leave the child too little.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    # Each step is compiled ahead of time (to time the compilation) and then called through jit:
    # the persistent cache lets that call reuse the compilation.
    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="lungjax-xla-cache-"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    begin = time.perf_counter()
    device = jax.devices()[0]
    result = {
        "device": f"{device.platform}:{device.device_kind}",
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "model": args.model,
        "width": args.width,
        "image_size": args.image_size,
        "precision": args.precision,
        "workers": args.workers,
        "date": time.strftime("%Y-%m-%d"),
        "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "settings_requested": list(args.settings),
        "settings": [],
    }
    print(json.dumps(result), flush=True)

    def save():
        result["total_seconds"] = time.perf_counter() - begin
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=2)

    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.data_dir or scratch
        builder, result["build_seconds"] = phantom_builder(args, workdir)
        result["build_images"] = sum(builder.info.splits[s].num_examples for s in builder.info.splits)
        for name in args.settings:
            remaining = args.budget_seconds - (time.perf_counter() - begin)
            if remaining <= 0:
                result["settings"].append({"setting": name, "skipped": "time budget"})
            elif SETTINGS[name].xla_flags and not args.data_dir:  # the parent: flags need a process of their own
                result["settings"] += measure_in_child(name, args, workdir, remaining)
            else:
                result["settings"].append(measure(name, args, builder))
            print(json.dumps(result["settings"][-1]), flush=True)
            save()
        if args.profile_dir:
            profile_best(result, args, builder, args.profile_dir)
    save()
    print(format_table(result))


if __name__ == "__main__":
    app.run(main)
