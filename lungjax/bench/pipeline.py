"""Input-pipeline throughput: images/s per worker at 224 from 256-pixel stored films.

    python -m lungjax.bench.pipeline --workdir=/tmp/lungjax-bench --repeats=5

Builds a phantom ArrayRecord dataset once (a few hundred films, re-read for several epochs), then:

* the grain training loader with the ``light`` and ``seed`` presets, at 1 and 2 worker processes
  (fresh loader per run, first batches excluded so worker start-up is not counted), median of
  ``--repeats`` runs: images/s, the 1 -> 2 worker scaling, and images per CPU-second of the
  worker processes (read from ``/proc``), which is the per-core rate even where other jobs share
  the cores, and the main process's CPU share;
* where the time goes in one process: record read, Example parse (image and label only), PNG decode,
  affine matrix, warp, intensity, batching, and the whole fused per-record transform;
* augmentation on the host (OpenCV, one warp per image) against the train step's batched warp
  (``training.device_augment``) inside ``jit``, in images/s on the default device;
* the host's CPU per image with ``augment_on_device`` off and on (one worker process: decode, draw and,
  when off, warp and relight), medians of ``--repeats`` runs, and their ratio.

Numbers on a shared CPU are noisy: compare runs made together, and read the medians.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import time
from pathlib import Path

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from lungjax import bench
from lungjax.data import augment as augmenting
from lungjax.data import nih, nih_layout, phantom, pipeline, records
from lungjax.data.task_labels import TaskLabels
from lungjax.training import device_augment

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "/tmp/lungjax-bench", "Where the phantom dataset and the JSON results go.")
flags.DEFINE_integer("patients", 100, "Phantom patients (about 3 films each).")
flags.DEFINE_integer("batch_size", 32, "Batch size of the loader.")
flags.DEFINE_integer("batches", 40, "Timed batches per run.")
flags.DEFINE_integer("repeats", 5, "Runs per preset and worker count; medians are reported.")

STORED_SIZE = 256
IMAGE_SIZE = 224
PRESETS = ("light", "seed")


def make_dataset(workdir: Path, patients: int) -> nih.NihChestXray:
    """The phantom dataset at STORED_SIZE (built once per workdir).

    Refuses a dataset whose PNGs miss the decoder's fast path (built by an older lungjax, before
    the builder stored unfiltered rows): it would measure the slow decode.
    """
    tree = workdir / "phantom_tree"
    if not (tree / nih_layout.DATA_ENTRY_FILE).is_file():
        phantom.write_nih_tree(tree, patients, seed=0, image_size=STORED_SIZE, num_workers=2)
    builder = nih.build_dataset(tree, workdir / "tfds", nih.make_config("patient", STORED_SIZE), num_workers=2)
    png = records.data_source(builder, "train")[0]["image"]
    if records.decode_unfiltered_gray_png(png) is None:
        raise SystemExit(
            f"{workdir / 'tfds'} holds PNGs with row filters (an older build): delete it or choose another --workdir"
        )
    return builder


def loader_rate(
    source, *, augment: str, workers: int, batches: int, batch_size: int, on_device: bool = False
) -> dict[str, float]:
    """A fresh training loader after its first two batches: images/s, images per CPU-second of
    its worker processes (per core), and the CPU share of this (the consuming) process.
    ``on_device``: the loader of ``augment_on_device`` (decode and draw only; the step warps)."""
    loader = pipeline.train_loader(
        source,
        batch_size=batch_size,
        image_size=IMAGE_SIZE,
        augment=augment,
        seed=0,
        worker_count=workers,
        augment_on_device=on_device,
    )
    iterator = iter(loader)
    next(iterator)
    next(iterator)
    workers_cpu, main_cpu, start = bench.children_cpu_s(), time.process_time(), time.perf_counter()
    for _ in range(batches):
        next(iterator)
    wall = time.perf_counter() - start
    images = batches * batch_size
    return {
        "images_per_s": images / wall,
        "images_per_worker_cpu_s": images / max(bench.children_cpu_s() - workers_cpu, 1e-9),
        "main_process_cores": (time.process_time() - main_cpu) / wall,
    }


def per_image_us(fn, items) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - start) / len(items) * 1e6


def stage_breakdown(source, augment: str, count: int) -> dict[str, float]:
    """Microseconds per image of each stage of the training loader, run in this process on
    ``count`` records, and of the whole per-record transform (``TrainExample``) on raw records."""
    cv2.setNumThreads(1)
    aug = augmenting.augmentation(augment)
    rng = np.random.default_rng(0)
    serialized = source.records
    indices = [i % len(source) for i in range(count)]
    raw = [serialized[i] for i in indices]
    pngs = [records.image_and_feature(r, "label")[0] for r in raw]
    decoded = [records.decode_png(png) for png in pngs]
    matrices = [augmenting.affine_matrix(aug, STORED_SIZE, IMAGE_SIZE, rng) for _ in decoded]
    warped = [augmenting.warp(image, matrix, IMAGE_SIZE) for image, matrix in zip(decoded, matrices, strict=True)]
    labels = TaskLabels(pipeline.stored_task(source.specs), source.specs)
    transform = pipeline.TrainExample(aug, IMAGE_SIZE, labels)
    decode_only = pipeline.TrainExample(aug, IMAGE_SIZE, labels, on_device=True)
    stages = {
        "read record": per_image_us(serialized.__getitem__, indices),
        "parse image+label": per_image_us(lambda r: records.image_and_feature(r, "label"), raw),
        "decode PNG": per_image_us(records.decode_png, pngs),
        "draw matrix": per_image_us(lambda _: augmenting.affine_matrix(aug, STORED_SIZE, IMAGE_SIZE, rng), decoded),
        "warp": per_image_us(
            lambda pair: augmenting.warp(pair[0], pair[1], IMAGE_SIZE), list(zip(decoded, matrices, strict=True))
        ),
        "batch (stack)": _stack_us(warped),
    }
    if aug.brightness or aug.contrast:
        stages["intensity"] = per_image_us(
            lambda image: augmenting.adjust_intensity(image, *augmenting.draw_intensity(aug, rng), out=image),
            [image.copy() for image in warped],
        )
    stages["whole transform"] = per_image_us(lambda record: transform.random_map(record, rng), raw)
    stages["whole transform, augment_on_device"] = per_image_us(lambda record: decode_only.random_map(record, rng), raw)
    return stages


def _stack_us(images: list[np.ndarray], batch_size: int = 64) -> float:
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        np.stack([image[..., None] for image in images[i : i + batch_size]])
    return (time.perf_counter() - start) / len(images) * 1e6


def augment_comparison(source, augment: str, batch_size: int, repeats: int) -> dict[str, float]:
    """Images/s: OpenCV per image on the host vs the train step's batched warp (``training.device_augment``)
    on the JAX device, with the same matrices."""
    aug = augmenting.augmentation(augment)
    rng = np.random.default_rng(0)
    images = np.stack([records.decode_png(source[i % len(source)]["image"]) for i in range(batch_size)])
    matrices = np.stack([augmenting.affine_matrix(aug, STORED_SIZE, IMAGE_SIZE, rng) for _ in range(batch_size)])
    on_device = jax.jit(functools.partial(device_augment.warp, out_size=IMAGE_SIZE))
    device_images, device_matrices = jnp.asarray(images[..., None]), jnp.asarray(matrices, jnp.float32)
    reference = on_device(device_images, device_matrices).block_until_ready()
    host = [augmenting.warp(image, matrix, IMAGE_SIZE) for image, matrix in zip(images, matrices, strict=True)]
    difference = float(np.abs(np.asarray(reference) - np.stack(host).astype(np.float32)).mean())
    host_times, device_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for image, matrix in zip(images, matrices, strict=True):
            augmenting.warp(image, matrix, IMAGE_SIZE)
        host_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        on_device(device_images, device_matrices).block_until_ready()
        device_times.append(time.perf_counter() - start)
    return {
        "opencv_host_images_per_s": batch_size / statistics.median(host_times),
        "jax_device_images_per_s": batch_size / statistics.median(device_times),
        "device": str(jax.devices()[0]),
        "mean_abs_difference": difference,
    }


def host_cpu_per_image(source, args) -> dict[str, dict[str, float]]:
    """Per preset: one worker process's CPU microseconds per image, median of ``--repeats`` runs,
    with ``augment_on_device`` off and on (runs interleaved, so both see the same load), and off/on."""
    result = {}
    for preset in PRESETS:
        runs = {False: [], True: []}
        for _ in range(args.repeats):
            for on_device in runs:
                rate = loader_rate(
                    source,
                    augment=preset,
                    workers=1,
                    batches=args.batches,
                    batch_size=args.batch_size,
                    on_device=on_device,
                )
                runs[on_device].append(1e6 / rate["images_per_worker_cpu_s"])
        off, on = statistics.median(runs[False]), statistics.median(runs[True])
        result[preset] = {"off": off, "on": on, "off_over_on": off / on}
    return result


def main(argv: list[str]) -> None:
    del argv  # flags only; absl parses them, which grain's worker processes also require
    args = FLAGS

    workdir = Path(args.workdir)
    source = records.data_source(make_dataset(workdir, args.patients), "train")
    results: dict = {
        "records": len(source),
        "stored_size": STORED_SIZE,
        "image_size": IMAGE_SIZE,
        "batch_size": args.batch_size,
        "loader": {},
        "stages_us": {},
    }
    rows = []
    for preset in PRESETS:
        runs = {
            workers: [
                loader_rate(source, augment=preset, workers=workers, batches=args.batches, batch_size=args.batch_size)
                for _ in range(args.repeats)
            ]
            for workers in (1, 2)
        }
        median = {
            workers: {key: statistics.median(run[key] for run in runs[workers]) for key in runs[workers][0]}
            for workers in runs
        }
        one, two = median[1]["images_per_s"], median[2]["images_per_s"]
        results["loader"][preset] = {"runs": runs, "medians": median, "scaling_1_to_2": two / one}
        results["stages_us"][preset] = stage_breakdown(source, preset, count=4 * len(source))
        rows.append(
            f"| {preset} | {one:,.0f} | {two:,.0f} | {two / one:.2f}x | "
            f"{median[1]['images_per_worker_cpu_s']:,.0f} | {median[2]['images_per_worker_cpu_s']:,.0f} | "
            f"{median[1]['main_process_cores']:.2f} / {median[2]['main_process_cores']:.2f} |"
        )
        print(
            f"{preset}, per image (us): " + ", ".join(f"{k} {v:.0f}" for k, v in results["stages_us"][preset].items()),
            flush=True,
        )
    results["host_cpu_per_image_us"] = host_cpu_per_image(source, args)
    print("host CPU per image (us), augment_on_device off/on:", json.dumps(results["host_cpu_per_image_us"]))
    results["augment_host_vs_device"] = augment_comparison(source, "seed", args.batch_size, args.repeats)
    print("augment (seed preset):", json.dumps(results["augment_host_vs_device"]))
    table = "\n".join(
        [
            f"images/s at {IMAGE_SIZE} from {STORED_SIZE} px records, batch {args.batch_size}, medians of "
            f"{args.repeats} runs ({os.cpu_count()} CPUs):",
            "| preset | 1 worker | 2 workers | scaling | per worker CPU-s (1) | per worker CPU-s (2) "
            "| main process cores (1 / 2) |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            "host CPU per image (one worker process, us), augment_on_device off / on:",
            "| preset | off | on | off / on |",
            "|---|---:|---:|---:|",
            *(
                f"| {preset} | {cpu['off']:,.0f} | {cpu['on']:,.0f} | {cpu['off_over_on']:.2f}x |"
                for preset, cpu in results["host_cpu_per_image_us"].items()
            ),
        ]
    )
    bench.finish(results, str(workdir / "pipeline_bench.json"), table)


if __name__ == "__main__":
    app.run(main)
