"""Evaluation: a checkpoint -> predictions on a split -> metrics, plots, Grad-CAM and a report.

Stands alone: it imports no training code (``lungjax.training``, optax), and reads the model
through :mod:`lungjax.evaluation.inference`. Everything lands in ``<workdir>/eval/<split>/``.

With several processes every process predicts its shard, the predictions are gathered so each
example counts once, every process computes the same report, and only process 0 writes files.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import jax
import ml_collections
import numpy as np

from lungjax.data import dataset, labels, nih, records
from lungjax.evaluation import explain, inference, metrics, plots
from lungjax.evaluation import report as report_lib
from lungjax.runtime import distributed, sharding
from lungjax.runtime import workdir as workdir_lib


def write_predictions(path: Path, predictions: dict[str, np.ndarray]) -> None:
    """One row per example; probabilities with 9 significant digits: read back as float32, exact."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_name", "patient_id", "true_class", *labels.CLASS_NAMES])
        for name, pid, label, probs in zip(
            predictions["image_name"], predictions["patient_id"], predictions["label"], predictions["probs"]
        ):
            writer.writerow([name, int(pid), labels.CLASS_NAMES[int(label)], *(f"{p:.9g}" for p in probs)])


def validation_thresholds(validation: dict[str, np.ndarray]) -> tuple[dict[str, float] | None, dict]:
    """Per-class Youden thresholds on the validation predictions and what they reach there, or None
    and the reason."""
    try:
        thresholds = metrics.youden_thresholds(validation["label"], validation["probs"], labels.CLASS_NAMES)
    except ValueError as err:
        return None, {"note": f"no thresholds: {err} on the validation split"}
    reached = metrics.youden_j(validation["label"], validation["probs"], thresholds, labels.CLASS_NAMES)
    return thresholds, {"chosen_on": "validation", "on_validation": reached}


def write_plots(out: Path, predictions: dict[str, np.ndarray], report: dict, workdir: Path) -> None:
    """ROC, PR, confusion matrix, reliability diagram, and training curves when the run logged them."""
    plots.plot_roc_curves(predictions["label"], predictions["probs"], labels.CLASS_NAMES, out / "roc.png")
    plots.plot_pr_curves(predictions["label"], predictions["probs"], labels.CLASS_NAMES, out / "pr.png")
    plots.plot_confusion_matrix(
        np.asarray(report["confusion_matrix"]), labels.CLASS_NAMES, out / "confusion_matrix.png"
    )
    plots.plot_reliability_diagram(predictions["label"], predictions["probs"], out / "reliability.png")
    if (workdir / workdir_lib.METRICS_FILE).is_file():
        plots.plot_training_curves(workdir / workdir_lib.METRICS_FILE, out / "training_curves.png")


def format_table(report: dict) -> str:
    """A plain-text metrics table for the console."""
    lines = [f"{'class':<14}{'AUC':>7}{'sens':>7}{'spec':>7}{'n':>7}"]
    for name, row in report["per_class"].items():
        auc = "  n/a" if row["auc"] is None else f"{row['auc']:.3f}"
        lines.append(f"{name:<14}{auc:>7}{row['sensitivity']:>7.3f}{row['specificity']:>7.3f}{row['support']:>7d}")
    lines.append(
        f"accuracy {report['accuracy']:.3f}   macro ROC-AUC {report['macro_auc']:.3f}   "
        f"images {report['n_images']}   checkpoint step {report['checkpoint_step']}"
    )
    return "\n".join(lines)


def evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Evaluates ``config.eval.checkpoint`` on ``config.eval.split``; writes ``<workdir>/eval/<split>/``."""
    split = config.eval.split
    if split not in inference.EVAL_SPLITS:
        raise ValueError(f"config.eval.split must be one of {inference.EVAL_SPLITS}, got {split!r}")
    workdir = Path(workdir)
    mesh = sharding.make_mesh()
    restored = inference.restore(config, workdir, mesh)
    saved = restored.config
    builder = distributed.process_zero_first(lambda: dataset.build(saved.data, workdir))
    predict_fn = inference.make_predict_fn(restored.graphdef, mesh, restored.dtype, tta_crops=config.eval.tta_crops)

    def predict(name: str) -> dict[str, np.ndarray]:
        batches = inference.split_batches(
            records.data_source(builder, name),
            global_batch_size=config.eval.batch_size,
            image_size=saved.image_size,
            worker_count=config.worker_count,
        )
        return inference.predict_split(predict_fn, restored.model_state, batches, mesh)

    predictions = predict(split)
    thresholds, threshold_record = validation_thresholds(
        predictions if split == "validation" else predict("validation")
    )
    report = metrics.classification_report(
        predictions["label"],
        predictions["probs"],
        labels.CLASS_NAMES,
        patient_ids=predictions["patient_id"],
        thresholds=thresholds,
        n_bootstrap=config.eval.n_bootstrap,
        seed=config.seed,
    )
    report["at_thresholds"] = {**report.get("at_thresholds", {}), **threshold_record}
    crossing = nih.read_build_report(builder).get("patients_crossing_splits")
    report.update(
        split=split,
        checkpoint_step=restored.step,
        dataset=builder.builder_config.name,
        split_scheme=saved.data.split_scheme,
        patients_crossing_splits=crossing,
        patient_disjoint=crossing == 0,
        tta_crops=config.eval.tta_crops,
        reference=report_lib.reference_figures(),
    )
    if jax.process_index() != 0:
        return report  # the same metrics; process 0 alone writes the files and the Grad-CAM grids

    final = workdir / "eval" / split
    out = final.with_name(f".{split}.{os.getpid()}")  # the report is written aside, then swapped in
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    write_predictions(out / "predictions.csv", predictions)
    cam_fn = explain.make_grad_cam_fn(restored.graphdef, restored.dtype, config.eval.cam_stage)
    report["explain"] = explain.explain_split(
        cam_fn,
        sharding.local_copy(restored.model_state),
        records.data_source(builder, split),
        predictions,
        out,
        image_size=saved.image_size,
        box_scale=saved.image_size / builder.builder_config.image_size,
        n_examples=config.eval.explain_examples,
        batch_size=sharding.process_batch_size(config.eval.batch_size),
    )
    write_plots(out, predictions, report, workdir)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(report_lib.render_markdown(report, sorted(p.name for p in out.glob("*.png"))))
    _swap_in(out, final)
    return report


def _swap_in(draft: Path, final: Path) -> None:
    """Replaces ``final`` by the complete ``draft``: a report directory is complete or absent, never one
    checkpoint's predictions beside another's report (a signal can stop evaluation anywhere)."""
    if final.exists():
        old = final.with_name(f".{final.name}.old.{os.getpid()}")
        os.rename(final, old)
        os.rename(draft, final)
        shutil.rmtree(old)
    else:
        os.rename(draft, final)
