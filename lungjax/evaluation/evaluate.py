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

from lungjax.data import building, dataset, metadata, tasks, union
from lungjax.evaluation import external_sources, gradcam, inference, kinds
from lungjax.evaluation.fit import operating_points, temperature
from lungjax.evaluation.fit import validation as validation_fit
from lungjax.evaluation.render import html, markdown, plots
from lungjax.evaluation.sections import calibration, comparison, expert, schema, subgroups
from lungjax.evaluation.sections import operating_points as operating_point_section
from lungjax.runtime import distributed, run_info, sharding
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
            writer.writerow([name, pid, *truth, *(f"{p:.9g}" for p in probs)])


def predictor(config, workdir: Path, mesh, checkpoint_choice, *, own_run: bool = True):
    """The checkpoint ``checkpoint_choice`` of ``workdir``, its built datasets (source name -> builder:
    one, or each source of a union) and ``predict(split)``; ``own_run=False`` for a run compared with,
    whose model and data may differ (``inference.restore``).

    A union's predictions are its sources' splits one after another (``union.UnionSource``), each row
    with its ``source``, and patient ids prefixed with it: two sources' patients never merge in a
    patient bootstrap."""
    restored = inference.restore(config, workdir, mesh, checkpoint_choice=checkpoint_choice, own_run=own_run)
    if own_run:
        builders = distributed.process_zero_first(lambda: union.build(restored.config.data, workdir))
    else:  # never build in another run's workdir
        builders = union.open_built(restored.config.data, workdir)
    predict_fn = inference.make_predict_fn(
        restored.graphdef, mesh, restored.dtype, tta_crops=config.eval.tta_crops, multi_label=restored.task.multi_label
    )

    def predict(name: str, data: dict | None = None) -> dict[str, np.ndarray]:
        """Split ``name`` of the run's own datasets, or of ``data`` (source name -> builder: another source)."""
        source = union.split(data or builders, name)
        batches = inference.split_batches(
            source,
            global_batch_size=config.eval.batch_size,
            image_size=restored.config.image_size,
            worker_count=config.worker_count,
            task=restored.task,
        )
        predictions = inference.predict_split(predict_fn, restored.model_state, batches, mesh)
        if isinstance(source, union.UnionSource):
            predictions["source"] = np.repeat(np.array(source.names), source.sizes)
            predictions["patient_id"] = np.char.add(
                np.char.add(predictions["source"], "/"), predictions["patient_id"].astype(str)
            )
        return predictions

    return restored, builders, predict


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


def _subgroup_section(config, predictions: dict, task: tasks.Task, manual_dir: Path | None) -> dict:
    """The subgroup audit, or the reason there is none (no metadata beside the data). A source's build
    carries each film's sex, age and view (and a union each film's source); NIH's are looked up in its
    metadata in ``manual_dir`` (None for a union, whose sources each have their own)."""
    if {"sex", "age", "view"} <= predictions.keys():
        source = predictions["source"] if "source" in predictions and len(set(predictions["source"])) > 1 else None
        cells = subgroups.cells_from_records(predictions["sex"], predictions["age"], predictions["view"], source)
    elif manual_dir is None:
        return {
            "note": "no subgroup audit: the union's NIH-format sources each keep their metadata in their own folder"
        }
    else:
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


def _comparison_section(config, workdir: Path, mesh, predictions: dict, restored, build_reports: dict) -> dict:
    """Run b (``config.eval.compare_to``) predicts the same split; the paired comparison with run a.
    Refused before run b predicts when the two datasets hold other pixels under the same image names,
    and for a union of sources, whose image names two sources may share."""
    other = Path(config.eval.compare_to)
    restored_b, builders_b, predict_b = predictor(config, other, mesh, config.eval.compare_checkpoint, own_run=False)
    if len(build_reports) > 1 or len(builders_b) > 1:
        raise comparison.CompareError(
            "a paired comparison pairs the two runs' predictions by image name, which two sources of a union may "
            "share; compare runs of one source each"
        )
    (builder_b,) = builders_b.values()
    (build_report,) = build_reports.values()
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


def _external_section(saved, task: tasks.Task, tested_on: str, builder) -> dict:
    """What makes an evaluation external: which source(s) trained, which tested, and each label left out
    (the test source does not state it) with the reason; the operating points and temperatures are the
    run's own validation split's, applied unchanged."""
    trained_on = external_sources.trained_on(saved)
    stated = external_sources.stated_labels(builder)
    return {
        "statement": (
            f"external evaluation: trained on {' + '.join(trained_on)}, tested on {tested_on}"
            if tested_on not in trained_on
            else f"evaluation on {tested_on}, one of the sources trained on ({' + '.join(trained_on)})"
        ),
        "trained_on": list(trained_on),
        "tested_on": tested_on,
        "shared_labels": [label for label in task.class_names if label in stated],
        "left_out": [
            {"label": label, "reason": f"{tested_on} does not state it"}
            for label in task.class_names
            if label not in stated
        ],
        "decisions_fitted_on": f"the run's own validation split ({' + '.join(trained_on)}), applied unchanged",
    }


def _patients_crossing_splits(build_reports: dict) -> int | None:
    """Patients in more than one split, summed over the sources (None when a build did not count them)."""
    counts = [report.get("patients_crossing_splits") for report in build_reports.values()]
    return None if None in counts else sum(counts)


def _split_schemes(build_reports: dict, configured: str):
    """How the splits were made: a single build's description, or each source's of a union by name."""
    schemes = {name: report.get("split", configured) for name, report in build_reports.items()}
    return next(iter(schemes.values())) if len(schemes) == 1 else schemes


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
            sources=list(union.names_and_weights(saved.data)[0]),
        )
    return section


def report_folder(config, workdir: Path) -> Path:
    """Where an evaluation's report goes: ``<workdir>/eval/<split>/``, or for another source (external
    validation, ``config.eval.source``) ``<workdir>/eval/<its part name>/<split>/``."""
    if config.eval.source:
        return (
            Path(workdir) / EVAL_DIR / union.part_name(config.eval.source, config.eval.manual_dir) / config.eval.split
        )
    return Path(workdir) / EVAL_DIR / config.eval.split


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
    tested_on = union.part_name(config.eval.source, config.eval.manual_dir) if config.eval.source else None
    final = report_folder(config, workdir)
    workdir_lib.check_output(final)
    mesh = sharding.make_mesh()
    restored, builders, predict = predictor(config, workdir, mesh, config.eval.checkpoint)
    saved, task = restored.config, restored.task
    own_fingerprint = run_info.datasets_fingerprint(builders)
    if tested_on is not None:  # another source's split, scored with what the run's own validation fitted
        if not task.masked:
            raise external_sources.ExternalError(
                f"{workdir} trains data.task={task.name!r}: another source's films are scored by label name, so "
                "config.eval.source takes a run that trains a label set (config.data.labels)"
            )
        builders = {tested_on: external_sources.build(saved.data, config.eval.source, config.eval.manual_dir, workdir)}
    predictions = predict(split, builders)
    validation = predictions if split == "validation" and tested_on is None else predict("validation")
    kind = kinds.of_task(task)
    thresholds, threshold_record = validation_fit.youden_thresholds(validation, task)
    report = kind.metrics_section(
        predictions, task.class_names, thresholds=thresholds, n_bootstrap=config.eval.n_bootstrap, seed=config.seed
    )
    report = schema.versioned(report)
    manual_dir = None if saved.data.get("sources") or tested_on else dataset.manual_dir(saved.data, workdir)
    expert_file = expert.find(manual_dir) if kind.multi_label and manual_dir is not None else None
    if expert_file is not None:
        report["expert_labels"] = expert.compare(predictions, task.class_names, expert_file)
    report["at_thresholds"] = {**report.get("at_thresholds", {}), **threshold_record}
    fitted_for = validation_fit.FittedFor(restored.step, restored.params_sha256, own_fingerprint)
    fit = validation_fit.fit_on_validation(config, validation, task, fitted_for)
    report.update(_decision_sections(config, predictions, fit, task))
    report["subgroups"] = _subgroup_section(config, predictions, task, manual_dir)
    probs_b = None
    build_reports = {name: building.read_build_report(builder) for name, builder in builders.items()}
    if config.eval.compare_to:
        report["comparison"] = _comparison_section(config, workdir, mesh, predictions, restored, build_reports)
        probs_b = report["comparison"].pop("probs_b")
    crossing = _patients_crossing_splits(build_reports)
    report.update(
        task=report_task(task, saved),
        split=split,
        checkpoint_step=restored.step,
        dataset=union.dataset_name(builders),
        dataset_fingerprint=run_info.datasets_fingerprint(builders),
        split_scheme=_split_schemes(build_reports, saved.data.split_scheme),
        patients_crossing_splits=crossing,
        patient_disjoint=crossing == 0,
        tta_crops=config.eval.tta_crops,
        config=saved.to_dict(),
    )
    if tested_on is not None:
        report["external"] = _external_section(saved, task, tested_on, builders[tested_on])
    if jax.process_index() != 0:
        return report  # the same metrics; process 0 alone writes the files and the Grad-CAM grids

    # The report is written into a draft, swapped in whole: complete or absent, never two checkpoints' mix.
    with workdir_lib.writing(final, is_output=lambda name: name in inference.EVAL_SPLITS) as out:
        write_predictions(out / "predictions.csv", predictions, task)
        cam_fn = gradcam.make_grad_cam_fn(restored.graphdef, restored.dtype, config.eval.cam_stage)
        cam_args = dict(
            image_size=saved.image_size,
            box_scale=saved.image_size / saved.data.stored_size,
            n_examples=config.eval.explain_examples,
            batch_size=sharding.process_batch_size(config.eval.batch_size),
        )
        source, model_state = union.split(builders, split), sharding.local_copy(restored.model_state)
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
