"""Evaluation: a checkpoint -> predictions on a split -> metrics, plots, Grad-CAM and a report.

Stands alone: it imports no training code (``lungjax.train``, ``lungjax.step``, ``lungjax.optim``,
optax), restores only the model item of a checkpoint (no optimizer state), and rebuilds the model
from the config saved in that checkpoint, so a later change of the config file cannot mismatch
the weights. Everything lands in ``<workdir>/eval/<split>/``.

With several processes every process predicts its shard, the predictions are gathered so each
example counts once, every process computes the same report, and only process 0 writes files.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from lungjax import checkpoint, distributed, explain, metrics, models, plots, report as report_lib, sharding
from lungjax.data import dataset, labels, pipeline

SPLITS = ("test", "validation", "train")
CHECKPOINT_CHOICES = ("best", "latest")
TRAINING_METRICS_FILE = "metrics.jsonl"  # written into the workdir by lungjax.train
# Test-time crops cover this fraction of the side; each is resized back to the model's input size.
TTA_CROP_FRACTION = 0.875


@dataclasses.dataclass(frozen=True)
class RestoredModel:
    """What inference needs from a checkpoint: the model's structure and weights, and its config."""

    graphdef: nnx.GraphDef
    model_state: dict  # {"params", "batch_stats"}, replicated over the mesh
    config: ml_collections.ConfigDict  # the config saved with the checkpoint
    step: int
    dtype: Any  # compute dtype


def resolve_step(manager, choice) -> int:
    """``best`` | ``latest`` | a step number -> an existing step, or a clear error.

    ``best`` falls back to the latest step, with a warning, when no save recorded a validation score.
    """
    steps = manager.all_steps()
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {manager.directory}: train first")
    if choice == "latest":
        return manager.latest_step()
    if choice == "best":
        best = checkpoint.best_step(manager)
        if best is None:
            logging.warning("no checkpoint in %s recorded a validation score: evaluating the latest "
                            "(step %d) instead of the best", manager.directory, manager.latest_step())
            return manager.latest_step()
        return best
    if str(choice).isdigit() and int(choice) in steps:
        return int(choice)
    raise ValueError(f"config.eval.checkpoint must be one of {CHECKPOINT_CHOICES} or a saved step "
                     f"{sorted(steps)}, got {choice!r}")


def restore(config: ml_collections.ConfigDict, workdir: str | os.PathLike, mesh) -> RestoredModel:
    """Restores the model item of the checkpoint ``config.eval.checkpoint`` names."""
    manager = checkpoint.make_manager(workdir, read_only=True)
    try:
        step = resolve_step(manager, config.eval.checkpoint)
        saved = ml_collections.ConfigDict(checkpoint.restore_config(manager, step))
        model = models.from_config(saved.model, num_classes=labels.NUM_CLASSES,
                                   half_precision=saved.half_precision)
        graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
        model_state = jax.device_put({"params": params, "batch_stats": batch_stats},
                                     sharding.replicated(mesh))
        model_state = checkpoint.restore_model(manager, step, model_state)
    finally:
        manager.close()
    return RestoredModel(graphdef=graphdef, model_state=model_state, config=saved, step=int(step),
                         dtype=jnp.bfloat16 if saved.half_precision else jnp.float32)


def tta_windows(size: int, crops: int) -> list[tuple[int, int, int]]:
    """``(top, left, side)`` of the first ``crops`` views: the whole image, the centre, four corners.

    No flips: a mirrored chest puts the heart on the wrong side, which is itself a finding.
    """
    side = round(size * TTA_CROP_FRACTION)
    far, middle = size - side, (size - side) // 2
    windows = [(0, 0, size), (middle, middle, side), (0, 0, side), (0, far, side), (far, 0, side),
               (far, far, side)]
    if not 1 <= crops <= len(windows):
        raise ValueError(f"config.eval.tta_crops must be in 1..{len(windows)}, got {crops}")
    return windows[:crops]


def make_predict_fn(graphdef: nnx.GraphDef, mesh, dtype, *, tta_crops: int = 1):
    """jit-compiled ``(model_state, uint8 images) -> class probabilities (float32)``.

    With ``tta_crops > 1`` the probabilities are the mean over ``tta_windows`` views.
    """

    def predict(model_state, images):
        model = nnx.merge(graphdef, model_state["params"], model_state["batch_stats"])
        x = models.images_to_input(images, dtype)
        probs = jnp.zeros((x.shape[0], labels.NUM_CLASSES), jnp.float32)
        windows = tta_windows(x.shape[1], tta_crops)
        for top, left, side in windows:
            view = x[:, top:top + side, left:left + side]
            if side != x.shape[1]:
                view = jax.image.resize(view, x.shape, "linear")
            probs += jax.nn.softmax(model(view, train=False).astype(jnp.float32), axis=-1)
        return probs / len(windows)

    return jax.jit(predict, in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
                   out_shardings=sharding.replicated(mesh))


def predict_split(predict_fn, model_state, batches, mesh) -> dict[str, np.ndarray]:
    """Runs ``predict_fn`` over padded eval batches; returns every real row of the split once, in order.

    Each process reads its own contiguous shard of the split (``pipeline.eval_batches``); with
    several processes the rows are gathered so that every process returns the whole split.
    """
    in_sharding = sharding.batch_sharding(mesh)
    keys = ("label", "image_name", "patient_id", "bbox", "mask")
    outputs: dict[str, list[np.ndarray]] = {"probs": [], **{key: [] for key in keys}}
    for batch in batches:
        images = jax.make_array_from_process_local_data(in_sharding, batch["image"])
        probs = np.asarray(jax.device_get(predict_fn(model_state, images)))
        rows = len(batch["mask"])
        start = jax.process_index() * rows  # this process's rows of the global batch
        outputs["probs"].append(probs[start:start + rows])
        for key in keys:
            outputs[key].append(batch[key])
    result = {key: np.concatenate(values) for key, values in outputs.items()}
    result["image_name"] = np.array([n.decode() if isinstance(n, bytes) else str(n)
                                     for n in result["image_name"]])
    if jax.process_count() > 1:
        result = gather_processes(result)
    mask = result.pop("mask")
    return {key: value[mask] for key, value in result.items()}


def gather_processes(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every process's rows (padding included, ``mask`` marking the real ones), in process order.

    Every process holds as many rows (``eval_batches`` yields the same padded batches everywhere)
    and process p's shard is the p-th contiguous range of the split, so concatenating in process
    order restores the split's order and, after the mask, holds each example exactly once. Names
    travel as fixed-width bytes, integers as int32 (64-bit integers are off in JAX by default).
    """
    names = np.char.encode(rows["image_name"].astype(str), "utf-8")
    width = int(multihost_utils.process_allgather(np.int32(max(names.itemsize, 1))).max())
    local = {"probs": rows["probs"].astype(np.float32), "bbox": rows["bbox"].astype(np.float32),
             "label": rows["label"].astype(np.int32), "patient_id": rows["patient_id"].astype(np.int32),
             "mask": rows["mask"].astype(np.int32),
             "image_name": np.frombuffer(names.astype(f"S{width}").tobytes(), np.uint8).reshape(-1, width)}
    gathered = {key: np.concatenate(list(value))
                for key, value in multihost_utils.process_allgather(local, tiled=False).items()}
    return {"probs": gathered["probs"], "bbox": gathered["bbox"],
            "label": gathered["label"].astype(rows["label"].dtype),
            "patient_id": gathered["patient_id"].astype(rows["patient_id"].dtype),
            "mask": gathered["mask"].astype(bool),
            "image_name": np.char.decode(gathered["image_name"].copy().view(f"S{width}")[:, 0], "utf-8")}


def write_predictions(path: Path, predictions: dict[str, np.ndarray]) -> None:
    """One row per example; probabilities with 9 significant digits: read back as float32, exact."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_name", "patient_id", "true_class", *labels.CLASS_NAMES])
        for name, pid, label, probs in zip(predictions["image_name"], predictions["patient_id"],
                                           predictions["label"], predictions["probs"]):
            writer.writerow([name, int(pid), labels.CLASS_NAMES[int(label)], *(f"{p:.9g}" for p in probs)])


def validation_thresholds(validation: dict[str, np.ndarray]) -> tuple[dict[str, float] | None, str | None]:
    """Per-class Youden thresholds on the validation predictions, or None and the reason."""
    try:
        return metrics.youden_thresholds(validation["label"], validation["probs"], labels.CLASS_NAMES), None
    except ValueError as err:
        return None, f"no thresholds: {err} on the validation split"


def write_plots(out: Path, predictions: dict[str, np.ndarray], report: dict, workdir: Path) -> None:
    """ROC, PR, confusion matrix, reliability diagram, and training curves when the run logged them."""
    plots.plot_roc_curves(predictions["label"], predictions["probs"], labels.CLASS_NAMES, out / "roc.png")
    plots.plot_pr_curves(predictions["label"], predictions["probs"], labels.CLASS_NAMES, out / "pr.png")
    plots.plot_confusion_matrix(np.asarray(report["confusion_matrix"]), labels.CLASS_NAMES,
                                out / "confusion_matrix.png")
    plots.plot_reliability_diagram(predictions["label"], predictions["probs"], out / "reliability.png")
    if (workdir / TRAINING_METRICS_FILE).is_file():
        plots.plot_training_curves(workdir / TRAINING_METRICS_FILE, out / "training_curves.png")


def format_table(report: dict) -> str:
    """A plain-text metrics table for the console."""
    lines = [f"{'class':<14}{'AUC':>7}{'sens':>7}{'spec':>7}{'n':>7}"]
    for name, row in report["per_class"].items():
        auc = "  n/a" if row["auc"] is None else f"{row['auc']:.3f}"
        lines.append(f"{name:<14}{auc:>7}{row['sensitivity']:>7.3f}{row['specificity']:>7.3f}{row['support']:>7d}")
    lines.append(f"accuracy {report['accuracy']:.3f}   macro ROC-AUC {report['macro_auc']:.3f}   "
                 f"images {report['n_images']}   checkpoint step {report['checkpoint_step']}")
    return "\n".join(lines)


def evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Evaluates ``config.eval.checkpoint`` on ``config.eval.split``; writes ``<workdir>/eval/<split>/``."""
    split = config.eval.split
    if split not in SPLITS:
        raise ValueError(f"config.eval.split must be one of {SPLITS}, got {split!r}")
    workdir = Path(workdir)
    mesh = sharding.make_mesh()
    restored = restore(config, workdir, mesh)
    saved = restored.config
    builder = distributed.process_zero_first(lambda: dataset.build(saved.data, workdir))
    predict_fn = make_predict_fn(restored.graphdef, mesh, restored.dtype, tta_crops=config.eval.tta_crops)
    batch_size = config.eval.batch_size // jax.process_count()

    def predict(name: str) -> dict[str, np.ndarray]:
        batches = pipeline.eval_batches(pipeline.data_source(builder, name), batch_size=batch_size,
                                        image_size=saved.image_size, worker_count=config.worker_count)
        return predict_split(predict_fn, restored.model_state, batches, mesh)

    predictions = predict(split)
    thresholds, threshold_note = validation_thresholds(predictions if split == "validation" else predict("validation"))
    report = metrics.classification_report(predictions["label"], predictions["probs"], labels.CLASS_NAMES,
                                           patient_ids=predictions["patient_id"], thresholds=thresholds,
                                           n_bootstrap=config.eval.n_bootstrap, seed=config.seed)
    if thresholds is None:
        report["at_thresholds"] = {"note": threshold_note}
    else:
        report["at_thresholds"]["chosen_on"] = "validation"
    crossing = dataset.build_report(builder).get("patients_crossing_splits")
    report.update(split=split, checkpoint_step=restored.step, dataset=builder.builder_config.name,
                  split_scheme=saved.data.split_scheme, patients_crossing_splits=crossing,
                  patient_disjoint=crossing == 0, tta_crops=config.eval.tta_crops,
                  reference=report_lib.reference_figures())
    if jax.process_index() != 0:
        return report  # the same metrics; process 0 alone writes the files and the Grad-CAM grids

    out = workdir / "eval" / split
    out.mkdir(parents=True, exist_ok=True)
    write_predictions(out / "predictions.csv", predictions)
    cam_fn = explain.make_grad_cam_fn(restored.graphdef, restored.dtype, config.eval.cam_stage)
    report["explain"] = explain.explain_split(
        cam_fn, sharding.local_copy(restored.model_state), pipeline.data_source(builder, split), predictions, out,
        image_size=saved.image_size, box_scale=saved.image_size / builder.builder_config.image_size,
        n_examples=config.eval.explain_examples, batch_size=batch_size)
    write_plots(out, predictions, report, workdir)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(report_lib.render_markdown(report, sorted(p.name for p in out.glob("*.png"))))
    return report
