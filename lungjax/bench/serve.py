"""Serving throughput: ``python -m lungjax.serve``'s batched path beside ``--mode predict``'s per-image path.

    python -m lungjax.bench.serve --workdir=/tmp/lungjax-bench-serve --images=64

Nothing is trained: a randomly initialised ResNet50 (224 px input, 256 px stored films) is saved as
the checkpoint of a phantom workdir, exported with ``--mode export``'s code, and then classifies
the same phantom films both ways, in this process, one after the other:

* serve: the bundle loaded once, then ``--rounds`` runs of ``predictions.classify`` over the films
  at ``--batch_size`` (read, preprocess, one model call per batch, CSV and JSONL records). Per-batch
  seconds come from its progress callback; the first batch, which compiles, is left out of the median.
* predict: ``predict.predict_files`` as ``--mode predict`` runs it (restore, then per film: read,
  a model call on one image, and a Grad-CAM heatmap written as a PNG). Per-image seconds come from
  the times its result lines are printed; the first, which compiles, is left out of the median.

Also the command line cold: ``python -m lungjax.serve`` on the same films in a fresh process (JAX's
import, loading and checking the bundle, compiling, classifying), its wall time. Prints a table last
and writes JSON (``--out``). A shared CPU is noisy: compare rows of one run, and read the medians.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags, logging
from flax import nnx

from lungjax import bench, models
from lungjax.config.base import base_config
from lungjax.data import dataset, labels, nih_layout, radiograph_files
from lungjax.evaluation import predict
from lungjax.export import bundle as export_bundle
from lungjax.runtime import checkpoint
from lungjax.serve import bundle as serve_bundle
from lungjax.serve import files, predictions

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "/tmp/lungjax-bench-serve", "The phantom workdir (data, checkpoint, export, outputs).")
flags.DEFINE_integer("images", 64, "Films classified by each path.")
flags.DEFINE_integer("batch_size", 32, "Serve's batch size.")
flags.DEFINE_integer("rounds", 3, "Serve runs over the films (the first compiles).")
flags.DEFINE_integer(
    "patients", 40, "Phantom patients (about 3 films each): enough for --images and a validation split."
)
flags.DEFINE_string("model", "resnet50", "Model name.")
flags.DEFINE_string("out", "serve_bench.json", "Where the JSON results go.")

STEP = 1
IMAGE_SIZE, STORED_SIZE = 224, 256


def bench_config(workdir: Path):
    config = base_config()
    config.data.phantom_patients = FLAGS.patients
    config.data.stored_size = STORED_SIZE
    config.data.build_workers = 2
    config.image_size = IMAGE_SIZE
    config.model.name = FLAGS.model
    config.eval.checkpoint = "latest"
    config.eval.batch_size = 16
    return config


def save_random_checkpoint(config, workdir: Path) -> None:
    """A freshly initialised model saved as step ``STEP``: what inference restores (model and config)."""
    model = models.from_config(config.model, num_classes=labels.NUM_CLASSES, half_precision=config.half_precision)
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    manager = checkpoint.make_manager(workdir)
    checkpoint.save(
        manager,
        STEP,
        model_state={"params": params, "batch_stats": batch_stats},
        train_state={"step": np.int32(STEP)},
        data_state=b"{}",
        config=config.to_dict(),
        run={},
        metrics={},
    )
    manager.wait_until_finished()
    manager.close()


def median_call_s(fn, inputs: np.ndarray, calls: int) -> float:
    """Median seconds of ``fn(inputs)`` over ``calls`` calls, after one that compiles."""
    jax.block_until_ready(fn(inputs))
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        jax.block_until_ready(fn(inputs))
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def time_serve(folder: Path, paths: list[Path], out: Path) -> dict:
    start = time.perf_counter()
    loaded = serve_bundle.load(folder)
    load_s = time.perf_counter() - start
    batch_s, first_round_s = [], None
    for round_index in range(FLAGS.rounds):
        stamps = [time.perf_counter()]
        predictions.classify(
            loaded,
            paths,
            out,
            batch_size=FLAGS.batch_size,
            progress=lambda n, stamps=stamps: stamps.append(time.perf_counter()),
        )
        intervals = np.diff(stamps).tolist()
        if round_index == 0:
            first_round_s, intervals = stamps[-1] - stamps[0], intervals[1:]
        batch_s += intervals
    median = statistics.median(batch_s)
    batch = np.stack([loaded.prepare(radiograph_files.read(path).pixels) for path in paths[: FLAGS.batch_size]])
    return {
        "load_s": load_s,
        "first_run_s": first_round_s,
        "median_batch_s": median,
        "images_per_s": FLAGS.batch_size / median,
        "batches_timed": len(batch_s),
        "model_call_batch_s": median_call_s(loaded.predict, batch, 3),
        "model_call_one_s": median_call_s(loaded.predict, batch[:1], 5),
    }


class _LineStamps(io.TextIOBase):
    """Stdout that notes when each result line of ``predict_files`` (it starts with a film's path) comes."""

    def __init__(self, paths: list[Path]):
        self.prefixes, self.stamps = tuple(f"{path}: " for path in paths), []

    def write(self, text: str) -> int:
        if text.startswith(self.prefixes):
            self.stamps.append(time.perf_counter())
        return len(text)


def time_predict(config, workdir: Path, paths: list[Path]) -> dict:
    lines = _LineStamps(paths)
    start = time.perf_counter()
    with contextlib.redirect_stdout(lines), contextlib.redirect_stderr(io.StringIO()):
        failures = predict.predict_files(config, workdir, [str(path) for path in paths])
    if failures or len(lines.stamps) != len(paths):
        raise RuntimeError(f"predict classified {len(lines.stamps)} of {len(paths)} films")
    median = statistics.median(np.diff(lines.stamps).tolist())
    return {
        "first_image_s": lines.stamps[0] - start,
        "wall_s": lines.stamps[-1] - start,
        "median_image_s": median,
        "images_per_s": 1.0 / median,
    }


def time_serve_command(folder: Path, paths: list[Path], out: Path) -> float:
    start = time.perf_counter()
    command = [sys.executable, "-m", "lungjax.serve", f"--export={folder}", "--images", *map(str, paths)]
    subprocess.run([*command, f"--out={out}"], check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax's and TFDS's progress lines would bury the table
    workdir = Path(FLAGS.workdir)
    config = bench_config(workdir)
    start = time.perf_counter()
    dataset.build(config.data, workdir)
    data_s = time.perf_counter() - start
    if not checkpoint.checkpoint_dir(workdir).is_dir():
        save_random_checkpoint(config, workdir)
    start = time.perf_counter()
    folder = export_bundle.export(config, workdir, parity_images=512)
    export_s = time.perf_counter() - start
    tree = dataset.manual_dir(config.data, workdir)
    paths, _ = files.expand([tree / nih_layout.FIRST_IMAGE_DIR])
    paths = paths[: FLAGS.images]
    if len(paths) < FLAGS.images:
        raise app.UsageError(
            f"the phantom has {len(paths)} films, fewer than --images={FLAGS.images}: raise --patients"
        )
    serve = time_serve(folder, paths, workdir / "serve_out")
    predicted = time_predict(config, workdir, paths)
    command_s = time_serve_command(folder, paths, workdir / "serve_cli_out")
    result = {
        "model": FLAGS.model,
        "image_size": IMAGE_SIZE,
        "stored_size": STORED_SIZE,
        "images": len(paths),
        "batch_size": FLAGS.batch_size,
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "dataset_s": data_s,
        "export_s": export_s,
        "serve": serve,
        "serve_command_wall_s": command_s,
        "predict": predicted,
        "speedup": serve["images_per_s"] / predicted["images_per_s"],
    }
    n, size = len(paths), FLAGS.batch_size

    def row(name: str, per_image_s: float, first: str = "", whole: str = "") -> str:
        return f"{name:<46}{per_image_s:>10.3f}{1 / per_image_s:>10.1f}{first:>9}{whole:>9}"

    table = "\n".join(
        [
            f"{FLAGS.model} at {IMAGE_SIZE} px from {STORED_SIZE} px films, {n} phantom films, {jax.devices()[0]}",
            f"{'path':<46}{'s/image':>10}{'images/s':>10}{'first':>9}{'all':>9}",
            row(
                f"serve, batch {size}: read, model, records",
                serve["median_batch_s"] / size,
                f"{serve['load_s']:.1f}s",
                f"{serve['first_run_s']:.1f}s",
            ),
            row(f"  its model call alone, batch {size}", serve["model_call_batch_s"] / size),
            row("  its model call alone, batch 1", serve["model_call_one_s"]),
            row(
                "predict, per image: read, model, Grad-CAM PNG",
                predicted["median_image_s"],
                f"{predicted['first_image_s']:.1f}s",
                f"{predicted['wall_s']:.1f}s",
            ),
            row("python -m lungjax.serve, cold, whole command", command_s / n, "", f"{command_s:.1f}s"),
            f"serve / predict (medians): {result['speedup']:.1f}x; export {export_s:.0f} s (fit, export, parity)",
            "s/image: medians (compiling calls left out). first: serve's bundle load and check; predict's restore, "
            "compile and first film. all: serve's first run over the films (compile included); predict's whole run.",
        ]
    )
    bench.finish(result, FLAGS.out, table)


if __name__ == "__main__":
    app.run(main)
