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

from lungjax.data import dataset, labels, metadata, nih, records, tasks
from lungjax.evaluation import (
    binary,
    calibration,
    compare,
    expert,
    explain,
    html_report,
    inference,
    metrics,
    multilabel,
    operating_points,
    plots,
    published,
    subgroups,
    temperature,
)
from lungjax.evaluation import report as report_lib
from lungjax.runtime import distributed, run_info, sharding
from lungjax.runtime import workdir as workdir_lib

VALIDATION_FIT_FILE = "validation_fit.json"  # what was chosen on validation: temperatures, thresholds
CALIBRATED_TITLE = "After temperature scaling"


def write_predictions(path: Path, predictions: dict[str, np.ndarray], task: tasks.Task) -> None:
    """One row per example; probabilities with 9 significant digits: read back as float32, exact.
    The truth is the class name, or for a multi-label task the findings joined with ``|`` (NIH's
    form; "No Finding" for none)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["image_name", "patient_id", "true_findings" if task.multi_label else "true_class", *task.class_names]
        )
        for name, pid, label, probs in zip(
            predictions["image_name"], predictions["patient_id"], predictions["label"], predictions["probs"]
        ):
            if task.multi_label:
                truth = "|".join(n for n, y in zip(task.class_names, label) if y) or labels.NO_FINDING
            else:
                truth = task.class_names[int(label)]
            writer.writerow([name, int(pid), truth, *(f"{p:.9g}" for p in probs)])


def validation_thresholds(validation: dict[str, np.ndarray], task: tasks.Task) -> tuple[dict[str, float] | None, dict]:
    """Per-class Youden thresholds on the validation predictions and what they reach there, or None
    and the reason. For the 14 findings a finding without validation positives (or negatives) has
    no threshold and the others keep theirs."""
    choose, reached = (
        (multilabel.youden_thresholds_multilabel, multilabel.youden_j_multilabel)
        if task.multi_label
        else (metrics.youden_thresholds, metrics.youden_j)
    )
    try:
        thresholds = choose(validation["label"], validation["probs"], task.class_names)
    except ValueError as err:
        return None, {"note": f"no thresholds: {err} on the validation split"}
    on_validation = reached(validation["label"], validation["probs"], thresholds, task.class_names)
    record = {"chosen_on": "validation", "on_validation": on_validation}
    undefined = [name for name, t in thresholds.items() if t is None]
    if undefined:
        record["undefined"] = {name: "no positive or no negative validation images" for name in undefined}
    return thresholds, record


def write_plots(
    out: Path,
    predictions: dict[str, np.ndarray],
    report: dict,
    workdir: Path,
    task: tasks.Task,
    fit: dict,
    probs_b: np.ndarray | None = None,
) -> None:
    """ROC, PR, confusion matrix and reliability diagrams before and after temperature scaling (for the
    14 findings: one ROC and one reliability panel per finding), both runs' ROC curves when compared,
    and training curves when the run logged them."""
    true, probs = predictions["label"], predictions["probs"]
    calibrated = temperature.apply(probs, fit["temperature"]["temperatures"], task.multi_label)
    if task.multi_label:
        plots.plot_roc_grid(true, probs, task.class_names, out / "roc.png")
        plots.plot_reliability_grid(true, probs, task.class_names, out / "reliability.png")
        plots.plot_reliability_grid(
            true, calibrated, task.class_names, out / "reliability_calibrated.png", title=CALIBRATED_TITLE
        )
    else:
        plots.plot_roc_curves(true, probs, task.class_names, out / "roc.png")
        plots.plot_pr_curves(true, probs, task.class_names, out / "pr.png")
        plots.plot_confusion_matrix(
            np.asarray(report["confusion_matrix"]), task.class_names, out / "confusion_matrix.png"
        )
        plots.plot_reliability_diagram(true, probs, out / "reliability.png")
        plots.plot_reliability_diagram(true, calibrated, out / "reliability_calibrated.png", title=CALIBRATED_TITLE)
    if probs_b is not None:
        positive, scores_a = binary.columns(true, probs, task.class_names, task.multi_label)
        _, scores_b = binary.columns(true, probs_b, task.class_names, task.multi_label)
        plots.plot_paired_roc(positive, scores_a, scores_b, task.class_names, out / "comparison_roc.png")
    if "attributes" in report["subgroups"]:
        plots.plot_subgroup_forest(report["subgroups"], out / "subgroups.png")
    if (workdir / workdir_lib.METRICS_FILE).is_file():
        plots.plot_training_curves(workdir / workdir_lib.METRICS_FILE, out / "training_curves.png")


def format_table(report: dict) -> str:
    """A plain-text metrics table for the console."""
    if "per_finding" in report:
        lines = [f"{'finding':<20}{'AUROC':>7}{'PR-AUC':>8}{'n':>7}"]
        for name, row in report["per_finding"].items():
            auroc = "  n/a" if row["auroc"] is None else f"{row['auroc']:.3f}"
            pr_auc = "   n/a" if row["pr_auc"] is None else f"{row['pr_auc']:.3f}"
            lines.append(f"{name:<20}{auroc:>7}{pr_auc:>8}{row['support']:>7d}")
        mean = "n/a" if report["mean_auroc"] is None else f"{report['mean_auroc']:.3f}"
        lines.append(f"mean AUROC {mean}   images {report['n_images']}   checkpoint step {report['checkpoint_step']}")
        return "\n".join(lines + _comparison_lines(report))
    lines = [f"{'class':<14}{'AUC':>7}{'sens':>7}{'spec':>7}{'n':>7}"]
    for name, row in report["per_class"].items():
        auc = "  n/a" if row["auc"] is None else f"{row['auc']:.3f}"
        lines.append(f"{name:<14}{auc:>7}{row['sensitivity']:>7.3f}{row['specificity']:>7.3f}{row['support']:>7d}")
    lines.append(
        f"accuracy {report['accuracy']:.3f}   macro ROC-AUC {report['macro_auc']:.3f}   "
        f"images {report['n_images']}   checkpoint step {report['checkpoint_step']}"
    )
    return "\n".join(lines + _comparison_lines(report))


def _comparison_lines(report: dict) -> list[str]:
    comparison = report.get("comparison")
    if not comparison or comparison["mean_difference"] is None:
        return []
    ci = comparison["mean_difference_ci"] or {}
    interval = f" [{ci['low']:+.3f}, {ci['high']:+.3f}]" if ci.get("low") is not None else ""
    return [
        f"vs {comparison['run_b']}: mean AUROC {comparison['mean_auroc_a']:.3f} vs {comparison['mean_auroc_b']:.3f}, "
        f"difference {comparison['mean_difference']:+.3f}{interval} (95% paired patient bootstrap)"
    ]


def _metrics_report(config, task: tasks.Task, predictions: dict, thresholds: dict | None) -> dict:
    """The task's metrics: the six-class report beside the reference's figures, or the 14 findings'
    beside the published tables."""
    report_fn = multilabel.multilabel_report if task.multi_label else metrics.classification_report
    report = report_fn(
        predictions["label"],
        predictions["probs"],
        task.class_names,
        patient_ids=predictions["patient_id"],
        thresholds=thresholds,
        n_bootstrap=config.eval.n_bootstrap,
        seed=config.seed,
    )
    if task.multi_label:
        report["published"] = published.tables()
    else:
        report["reference"] = report_lib.reference_figures()
    return report


def _predictor(config, workdir: Path, mesh, checkpoint_choice):
    """The checkpoint ``checkpoint_choice`` of ``workdir``, its dataset builder, and ``predict(split)``."""
    restored = inference.restore(config, workdir, mesh, checkpoint_choice=checkpoint_choice)
    builder = distributed.process_zero_first(lambda: dataset.build(restored.config.data, workdir))
    predict_fn = inference.make_predict_fn(
        restored.graphdef, mesh, restored.dtype, tta_crops=config.eval.tta_crops, multi_label=restored.task.multi_label
    )

    def predict(name: str) -> dict[str, np.ndarray]:
        batches = inference.split_batches(
            records.data_source(builder, name),
            global_batch_size=config.eval.batch_size,
            image_size=restored.config.image_size,
            worker_count=config.worker_count,
        )
        return inference.predict_split(predict_fn, restored.model_state, batches, mesh)

    return restored, builder, predict


def fit_on_validation(config, validation: dict[str, np.ndarray], task: tasks.Task, step: int) -> dict:
    """What is chosen on the validation split and then held fixed: the temperatures and each operating
    point's per-class thresholds. Saved as ``validation_fit.json`` for predict and the export."""
    positive, scores = binary.columns(validation["label"], validation["probs"], task.class_names, task.multi_label)
    rules = operating_points.parse_all(config.eval.operating_points)
    chosen = operating_points.choose(rules, positive, scores, task.class_names)
    return {
        "checkpoint_step": int(step),
        "chosen_on": "validation",
        "tta_crops": config.eval.tta_crops,
        "task": task.name,
        "class_names": list(task.class_names),
        "multi_label": task.multi_label,
        "temperature": temperature.fit(validation["label"], validation["probs"], task.class_names, task.multi_label),
        "operating_points": chosen,
        "thresholds_apply_to": "the uncalibrated probabilities; a class is called when its probability >= threshold",
    }


def load_validation_fit(workdir: str | os.PathLike, step: int, tta_crops: int) -> dict | None:
    """The ``validation_fit.json`` that an evaluation of checkpoint ``step`` with ``tta_crops`` wrote, or None."""
    for path in sorted(Path(workdir, "eval").glob(f"*/{VALIDATION_FIT_FILE}")):
        fit = json.loads(path.read_text())
        if fit["checkpoint_step"] == step and fit["tta_crops"] == tta_crops:
            return fit
    return None


def _decision_sections(config, predictions: dict, fit: dict, task: tasks.Task) -> dict:
    """The operating points and the calibration on the evaluated split, from ``fit_on_validation``."""
    positive, scores = binary.columns(predictions["label"], predictions["probs"], task.class_names, task.multi_label)
    rules = operating_points.parse_all(config.eval.operating_points)
    common = dict(patient_ids=predictions["patient_id"], n_bootstrap=config.eval.n_bootstrap, seed=config.seed)
    return {
        "operating_points": {
            "chosen_on": "validation",
            "rules": [rule.text for rule in rules],
            "per_rule": operating_points.apply(
                rules, fit["operating_points"], positive, scores, task.class_names, **common
            ),
        },
        "calibration": calibration.calibration_report(
            predictions["label"],
            predictions["probs"],
            fit["temperature"],
            task.class_names,
            multi_label=task.multi_label,
            **common,
        ),
    }


def _subgroup_section(config, predictions: dict, task: tasks.Task, manual_dir: Path) -> dict:
    """The subgroup audit, or the reason there is none (no metadata beside the data)."""
    try:
        data_entry = metadata.read_data_entry(nih.find_data_entry(manual_dir))
        cells = subgroups.cells_of(predictions["image_name"], data_entry)
    except (metadata.MetadataError, ValueError) as err:
        return {"note": f"no subgroup audit: {err}"}
    positive, scores = binary.columns(predictions["label"], predictions["probs"], task.class_names, task.multi_label)
    return subgroups.audit(
        positive,
        scores,
        task.class_names,
        cells,
        patient_ids=predictions["patient_id"],
        n_bootstrap=config.eval.n_bootstrap,
        seed=config.seed,
    )


def _comparison_section(config, workdir: Path, mesh, predictions: dict, restored) -> dict:
    """Run b (``config.eval.compare_to``) predicts the same split; the paired comparison with run a."""
    other = Path(config.eval.compare_to)
    restored_b, _, predict_b = _predictor(config, other, mesh, config.eval.compare_checkpoint)
    aligned = compare.align(predictions, predict_b(config.eval.split), restored.task, restored_b.task)
    report = compare.comparison_report(
        predictions,
        aligned,
        restored.task,
        names=(f"{workdir} step {restored.step}", f"{other} step {restored_b.step}"),
        n_bootstrap=config.eval.n_bootstrap,
        seed=config.seed,
    )
    return {**report, "probs_b": aligned["probs"]}


def evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Evaluates ``config.eval.checkpoint`` on ``config.eval.split``; writes ``<workdir>/eval/<split>/``.

    With ``config.eval.compare_to`` set, the report also compares the two runs on the same images.
    """
    split = config.eval.split
    if split not in inference.EVAL_SPLITS:
        raise ValueError(f"config.eval.split must be one of {inference.EVAL_SPLITS}, got {split!r}")
    workdir = Path(workdir)
    mesh = sharding.make_mesh()
    restored, builder, predict = _predictor(config, workdir, mesh, config.eval.checkpoint)
    saved, task = restored.config, restored.task
    predictions = predict(split)
    validation = predictions if split == "validation" else predict("validation")
    thresholds, threshold_record = validation_thresholds(validation, task)
    report = _metrics_report(config, task, predictions, thresholds)
    manual_dir = dataset.manual_dir(saved.data, workdir)
    expert_file = expert.find(manual_dir) if task.multi_label else None
    if expert_file is not None:
        report["expert_labels"] = expert.compare(predictions, task.class_names, expert_file)
    report["at_thresholds"] = {**report.get("at_thresholds", {}), **threshold_record}
    fit = fit_on_validation(config, validation, task, restored.step)
    report.update(_decision_sections(config, predictions, fit, task))
    report["subgroups"] = _subgroup_section(config, predictions, task, manual_dir)
    probs_b = None
    if config.eval.compare_to:
        report["comparison"] = _comparison_section(config, workdir, mesh, predictions, restored)
        probs_b = report["comparison"].pop("probs_b")
    build_report = nih.read_build_report(builder)
    crossing = build_report.get("patients_crossing_splits")
    report.update(
        task=task.name,
        split=split,
        checkpoint_step=restored.step,
        dataset=builder.builder_config.name,
        dataset_fingerprint=run_info.dataset_fingerprint(builder),
        split_scheme=build_report.get("split", saved.data.split_scheme),
        patients_crossing_splits=crossing,
        patient_disjoint=crossing == 0,
        tta_crops=config.eval.tta_crops,
        config=saved.to_dict(),
    )
    if jax.process_index() != 0:
        return report  # the same metrics; process 0 alone writes the files and the Grad-CAM grids

    final = workdir / "eval" / split
    out = final.with_name(f".{split}.{os.getpid()}")  # the report is written aside, then swapped in
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    write_predictions(out / "predictions.csv", predictions, task)
    cam_fn = explain.make_grad_cam_fn(restored.graphdef, restored.dtype, config.eval.cam_stage)
    explain_args = dict(
        image_size=saved.image_size,
        box_scale=saved.image_size / builder.builder_config.image_size,
        n_examples=config.eval.explain_examples,
        batch_size=sharding.process_batch_size(config.eval.batch_size),
    )
    source, model_state = records.data_source(builder, split), sharding.local_copy(restored.model_state)
    if task.multi_label:
        report["explain"] = explain.explain_findings(
            cam_fn, model_state, source, predictions, out, class_names=task.class_names, **explain_args
        )
    else:
        report["explain"] = explain.explain_split(cam_fn, model_state, source, predictions, out, **explain_args)
    write_plots(out, predictions, report, workdir, task, fit, probs_b)
    figures = sorted(p.name for p in out.glob("*.png"))
    (out / VALIDATION_FIT_FILE).write_text(json.dumps(fit, indent=2))
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(report_lib.to_markdown(report_lib.document(report, figures)))
    (out / "report.html").write_text(html_report.render(report, out, figures))
    workdir_lib.swap_in(out, final)  # a report folder is complete or absent, never two checkpoints' mix
    return report
