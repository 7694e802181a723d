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
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging

from lungjax.data import building, dataset, metadata, records, tasks
from lungjax.evaluation import gradcam, inference, kinds
from lungjax.evaluation.fit import operating_points, temperature
from lungjax.evaluation.fit import validation as validation_fit
from lungjax.evaluation.render import html, markdown, plots
from lungjax.evaluation.sections import calibration, comparison, expert, schema, subgroups
from lungjax.evaluation.sections import operating_points as operating_point_section
from lungjax.runtime import checkpoint, distributed, run_info, sharding
from lungjax.runtime import workdir as workdir_lib

EVAL_DIR = "eval"  # <workdir>/eval/<split>/: one report per split


def write_predictions(path: Path, predictions: dict[str, np.ndarray], task: tasks.Task) -> None:
    """One row per example; probabilities with 9 significant digits: read back as float32, exact.
    The truth is the class name, or for a multi-label task the findings joined with ``|`` (NIH's
    form; "No Finding" for none), or for a masked task one column per label, blank where the image
    does not state it (``kinds.Kind.truth``)."""
    kind = kinds.of_task(task)
    masked = "label_mask" in predictions
    stated = kind.stated(predictions, task.class_names) if masked else [None] * len(predictions["probs"])
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_name", "patient_id", *kind.truth_header(task.class_names, masked), *task.class_names])
        for name, pid, label, row_stated, probs in zip(
            predictions["image_name"],
            predictions["patient_id"],
            predictions["label"],
            stated,
            predictions["probs"],
            strict=True,
        ):
            truth = kind.truth(label, task.class_names, row_stated)
            writer.writerow([name, int(pid), *truth, *(f"{p:.9g}" for p in probs)])


def predictor(config, workdir: Path, mesh, checkpoint_choice, *, own_run: bool = True):
    """The checkpoint ``checkpoint_choice`` of ``workdir``, its dataset builder, and ``predict(split)``;
    ``own_run=False`` for a run compared with, whose model and data may differ (``inference.restore``)."""
    restored = inference.restore(config, workdir, mesh, checkpoint_choice=checkpoint_choice, own_run=own_run)
    if restored.config.data.get("sources"):
        raise checkpoint.CheckpointError(
            f"{workdir} was trained on a union of sources (config.data.sources="
            f"{tuple(map(tuple, restored.config.data.sources))}); evaluating and exporting a union is not built yet: "
            "its checkpoints are kept, and its validation figures, overall and per source, are in metrics.jsonl"
        )
    if own_run:
        builder = distributed.process_zero_first(lambda: dataset.build(restored.config.data, workdir))
    else:  # never build in another run's workdir
        builder = dataset.open_built(restored.config.data, workdir)
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


def _decision_sections(config, predictions: dict, fit: dict, task: tasks.Task) -> dict:
    """The operating points and the calibration on the evaluated split, from ``validation.fit_on_validation``."""
    kind = kinds.of_task(task)
    positive, scores = kind.columns(predictions["label"], predictions["probs"], task.class_names)
    stated = kind.stated(predictions, task.class_names)
    rules = operating_points.parse_all(config.eval.operating_points)
    common = dict(patient_ids=predictions["patient_id"], n_bootstrap=config.eval.n_bootstrap, seed=config.seed)
    return {
        "operating_points": {
            "chosen_on": "validation",
            "rules": [rule.text for rule in rules],
            "per_rule": operating_point_section.apply(
                rules, fit["operating_points"], positive, scores, task.class_names, stated=stated, **common
            ),
        },
        "calibration": calibration.calibration_report(
            predictions["label"],
            predictions["probs"],
            fit["temperature"],
            task.class_names,
            multi_label=task.multi_label,
            stated=stated,
            **common,
        ),
    }


def _subgroup_section(config, predictions: dict, task: tasks.Task, manual_dir: Path) -> dict:
    """The subgroup audit, or the reason there is none (no metadata beside the data)."""
    try:
        data_entry = metadata.read_data_entry(metadata.find_data_entry(manual_dir))
        cells = subgroups.cells_of(predictions["image_name"], data_entry)
    except (metadata.MetadataError, ValueError) as err:
        return {"note": f"no subgroup audit: {err}"}
    kind = kinds.of_task(task)
    positive, scores = kind.columns(predictions["label"], predictions["probs"], task.class_names)
    return subgroups.audit(
        positive,
        scores,
        task.class_names,
        cells,
        stated=kind.stated(predictions, task.class_names),
        patient_ids=predictions["patient_id"],
        n_bootstrap=config.eval.n_bootstrap,
        seed=config.seed,
    )


def _comparison_section(config, workdir: Path, mesh, predictions: dict, restored, build_report: dict) -> dict:
    """Run b (``config.eval.compare_to``) predicts the same split; the paired comparison with run a.
    Refused before run b predicts when the two datasets hold other pixels under the same image names."""
    other = Path(config.eval.compare_to)
    restored_b, builder_b, predict_b = predictor(config, other, mesh, config.eval.compare_checkpoint, own_run=False)
    source_pixels = comparison.check_same_pixels(
        predictions["image_name"],
        build_report.get(building.SOURCE_PIXELS),
        building.read_build_report(builder_b).get(building.SOURCE_PIXELS),
    )
    if source_pixels.startswith("not checked"):
        logging.warning("comparing %s with %s: source pixels %s", workdir, other, source_pixels)
    aligned = comparison.align(predictions, predict_b(config.eval.split), restored.task, restored_b.task)
    report = comparison.comparison_report(
        predictions,
        aligned,
        restored.task,
        names=(f"{workdir} step {restored.step}", f"{other} step {restored_b.step}"),
        n_bootstrap=config.eval.n_bootstrap,
        seed=config.seed,
    )
    return {**report, "source_pixels": source_pixels, "probs_b": aligned["probs"]}


def write_plots(
    out: Path,
    predictions: dict[str, np.ndarray],
    report: dict,
    workdir: Path,
    task: tasks.Task,
    fit: dict,
    probs_b: np.ndarray | None = None,
) -> None:
    """The task's figures (``kinds.Kind.write_plots``), both runs' ROC curves when compared, the subgroup
    forest when audited, and training curves when the run logged them."""
    true, probs = predictions["label"], predictions["probs"]
    kind = kinds.of_task(task)
    calibrated = temperature.apply(probs, fit["temperature"]["temperatures"], task.multi_label)
    kind.write_plots(out, true, probs, calibrated, task.class_names, report, predictions.get("label_mask"))
    if probs_b is not None:
        positive, scores_a = kind.columns(true, probs, task.class_names)
        _, scores_b = kind.columns(true, probs_b, task.class_names)
        plots.plot_paired_roc(positive, scores_a, scores_b, task.class_names, out / "comparison_roc.png")
    if "attributes" in report["subgroups"]:
        plots.plot_subgroup_forest(report["subgroups"], out / "subgroups.png")
    if (workdir / workdir_lib.METRICS_FILE).is_file():
        plots.plot_training_curves(workdir / workdir_lib.METRICS_FILE, out / "training_curves.png")


def report_task(task: tasks.Task, saved) -> dict:
    """``report.json``'s ``task`` section: the task as its build recorded it and, for a label set, the
    labels with their definitions, the uncertainty policy and the source(s) trained on."""
    section = {**task.describe(), "class_names": list(task.class_names)}
    label_space = tasks.label_space(task)
    if label_space is not None:
        section.update(
            label_space=label_space,
            uncertainty=saved.data.uncertainty,
            sources=[name for name, _ in saved.data.get("sources", ())] or [saved.data.source],
        )
    return section


def format_table(report: dict) -> str:
    """The console's metrics table for a report of either kind."""
    return kinds.of_report(report).table(report)


def evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Evaluates ``config.eval.checkpoint`` on ``config.eval.split``; writes ``<workdir>/eval/<split>/``.

    With ``config.eval.compare_to`` set, the report also compares the two runs on the same images.
    """
    split = config.eval.split
    if split not in inference.EVAL_SPLITS:
        raise ValueError(f"config.eval.split must be one of {inference.EVAL_SPLITS}, got {split!r}")
    workdir = Path(workdir)
    final = workdir / EVAL_DIR / split
    workdir_lib.check_output(final)
    mesh = sharding.make_mesh()
    restored, builder, predict = predictor(config, workdir, mesh, config.eval.checkpoint)
    saved, task = restored.config, restored.task
    predictions = predict(split)
    validation = predictions if split == "validation" else predict("validation")
    kind = kinds.of_task(task)
    thresholds, threshold_record = validation_fit.youden_thresholds(validation, task)
    report = kind.metrics_section(
        predictions, task.class_names, thresholds=thresholds, n_bootstrap=config.eval.n_bootstrap, seed=config.seed
    )
    report = schema.versioned(report)
    manual_dir = dataset.manual_dir(saved.data, workdir)
    expert_file = expert.find(manual_dir) if kind.multi_label else None
    if expert_file is not None:
        report["expert_labels"] = expert.compare(predictions, task.class_names, expert_file)
    report["at_thresholds"] = {**report.get("at_thresholds", {}), **threshold_record}
    fingerprint = run_info.dataset_fingerprint(builder)
    fitted_for = validation_fit.FittedFor(restored.step, restored.params_sha256, fingerprint)
    fit = validation_fit.fit_on_validation(config, validation, task, fitted_for)
    report.update(_decision_sections(config, predictions, fit, task))
    report["subgroups"] = _subgroup_section(config, predictions, task, manual_dir)
    probs_b = None
    build_report = building.read_build_report(builder)
    if config.eval.compare_to:
        report["comparison"] = _comparison_section(config, workdir, mesh, predictions, restored, build_report)
        probs_b = report["comparison"].pop("probs_b")
    crossing = build_report.get("patients_crossing_splits")
    report.update(
        task=report_task(task, saved),
        split=split,
        checkpoint_step=restored.step,
        dataset=builder.builder_config.name,
        dataset_fingerprint=fingerprint,
        split_scheme=build_report.get("split", saved.data.split_scheme),
        patients_crossing_splits=crossing,
        patient_disjoint=crossing == 0,
        tta_crops=config.eval.tta_crops,
        config=saved.to_dict(),
    )
    if jax.process_index() != 0:
        return report  # the same metrics; process 0 alone writes the files and the Grad-CAM grids

    # The report is written into a draft, swapped in whole: complete or absent, never two checkpoints' mix.
    with workdir_lib.writing(final, is_output=lambda name: name in inference.EVAL_SPLITS) as out:
        write_predictions(out / "predictions.csv", predictions, task)
        cam_fn = gradcam.make_grad_cam_fn(restored.graphdef, restored.dtype, config.eval.cam_stage)
        cam_args = dict(
            image_size=saved.image_size,
            box_scale=saved.image_size / builder.builder_config.image_size,
            n_examples=config.eval.explain_examples,
            batch_size=sharding.process_batch_size(config.eval.batch_size),
        )
        source, model_state = records.data_source(builder, split), sharding.local_copy(restored.model_state)
        report["explain"] = kind.explain(
            cam_fn, model_state, source, predictions, out, class_names=task.class_names, **cam_args
        )
        write_plots(out, predictions, report, workdir, task, fit, probs_b)
        figures = sorted(p.name for p in out.glob("*.png"))
        (out / validation_fit.VALIDATION_FIT_FILE).write_text(json.dumps(fit, indent=2))
        (out / "report.json").write_text(json.dumps(report, indent=2))
        doc = kind.document(report, figures)
        (out / "report.md").write_text(markdown.to_markdown(doc))
        (out / "report.html").write_text(html.render(doc, out))
    return report
