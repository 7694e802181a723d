"""``--mode predict``: class probabilities and a Grad-CAM heatmap for radiographs on disk.

Reads DICOM, PNG and JPEG through :mod:`lungjax.data.radiograph_files` (which refuses non-images,
decompression bombs and films the model was not trained on, and says what makes a film doubtful).
A file that cannot be read gets one clear message and the others carry on; the caller learns how
many failed; a file's warnings are printed too, one line each, so none is silent. Images are
prepared exactly as the dataset builder and the eval pipeline prepare theirs: padded to a square,
resized to the stored size, then to the model's input size.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np

from lungjax.data import dataset, images, radiograph_files, tasks, union
from lungjax.evaluation import gradcam, inference, out_of_distribution
from lungjax.evaluation.fit import decisions, operating_points, temperature, validation
from lungjax.evaluation.render import overlays
from lungjax.runtime import run_info, sharding

OUTPUT_DIR = "predict"


def format_probabilities(probs: np.ndarray, class_names) -> str:
    return "  ".join(f"{name} {p:.3f}" for name, p in zip(class_names, probs, strict=True))


def predict_files(config: ml_collections.ConfigDict, workdir: str | os.PathLike, paths: Sequence[str]) -> int:
    """Prints the probabilities for each readable file and writes its heatmap; returns the failure count.

    One probability per class (per finding, each on its own, for a multi-label task). Heatmaps
    (Grad-CAM of the most probable class) go to ``<workdir>/predict/<n>_<file stem>.png``.
    """
    mesh = sharding.make_mesh()
    restored = inference.restore(config, workdir, mesh)
    saved, class_names = restored.config, restored.task.class_names
    predict_fn = inference.make_predict_fn(
        restored.graphdef,
        mesh,
        restored.dtype,
        tta_crops=config.eval.tta_crops,
        multi_label=restored.task.multi_label,
        with_features=True,
    )
    label_space = tasks.label_space(restored.task)
    if label_space is not None:  # a label set: what each probability means, once
        print("label space: " + "; ".join(f"{name}: {definition}" for name, definition in label_space.items()))
    cam_fn = gradcam.make_grad_cam_fn(restored.graphdef, restored.dtype, config.eval.cam_stage)
    fit = evaluation_fit(workdir, restored, config.eval.tta_crops)
    unlike = out_of_distribution_fit(config, restored, union.built(saved.data, workdir), predict_fn)
    out = Path(workdir) / OUTPUT_DIR
    failures = 0
    for number, path in enumerate(paths):
        name = radiograph_files.display_name(path)  # printable whatever bytes the file name holds
        try:
            radiograph = radiograph_files.read(path)
        except images.ImageError as err:
            print(f"error: {err}", file=sys.stderr)
            failures += 1
            continue
        for warning in radiograph.warnings:
            print(f"warning: {name}: {warning}", file=sys.stderr)
        image = images.model_input(radiograph.pixels, saved.data.stored_size, saved.image_size)
        batch = np.repeat(image[None], mesh.devices.size, axis=0)  # one row per device of the mesh
        probs, features = (np.asarray(output)[0] for output in predict_fn(restored.model_state, batch))
        predicted = int(probs.argmax())
        heatmap = gradcam.heatmaps_for(cam_fn, restored.model_state, image[None], np.array([predicted]), 1)
        heatmap_path = out / f"{number}_{Path(path).stem}.png"
        overlays.plot_overlays(
            image[None],
            heatmap,
            [f"{Path(name).name}\n{class_names[predicted]} p={probs[predicted]:.2f}"],
            heatmap_path,
        )
        print(
            f"{name}: {format_probabilities(probs, class_names)}  -> {class_names[predicted]} "
            f"(heatmap {radiograph_files.display_name(heatmap_path)})"
        )
        if fit is not None:
            print("  " + fitted_lines(probs, fit, restored.task.multi_label))
        if unlike is not None:
            score = float(unlike.score(features)[0])
            print(f"  out-of-distribution score {score:.3g} (threshold {unlike.threshold:.3g})")
            if score > unlike.threshold:
                print(f"warning: {name}: {unlike_warning(score, unlike, saved)}", file=sys.stderr)
    return failures


def out_of_distribution_fit(config, restored: inference.RestoredModel, builders: dict | None, predict_fn):
    """The out-of-distribution score fitted on this model's features of the dataset on disk
    (``out_of_distribution.fit_on_splits``, as the export fits it), or None when the dataset is not built
    (``evaluation_fit`` says so). Fitted anew at each run: its cost is a forward pass over at most
    ``out_of_distribution.MAX_FILMS`` films of each split."""
    if builders is None:
        return None
    unlike = out_of_distribution.fit_on_splits(
        lambda images: predict_fn(restored.model_state, images)[1],
        builders,
        task=restored.task,
        batch_size=config.eval.batch_size,
        image_size=restored.config.image_size,
        worker_count=config.worker_count,
    )
    print(
        f"note: the out-of-distribution score is fitted on {unlike.n_train} training films and its threshold on "
        f"{unlike.n_validation} validation films, a false-alarm rate of {unlike.false_alarm_rate:.0%}",
        file=sys.stderr,
    )
    return unlike


def unlike_warning(score: float, unlike, saved_config) -> str:
    """The warning of a film whose out-of-distribution score is above the threshold."""
    sources = out_of_distribution.training_sources(saved_config.data)
    return (
        f"unlike the training films ({', '.join(sources)}): out-of-distribution score {score:.3g} is "
        f"above the threshold {unlike.threshold:.3g}, which {unlike.false_alarm_rate:.0%} of validation films "
        "exceed; its probabilities may mean little"
    )


def evaluation_fit(workdir: str | os.PathLike, restored: inference.RestoredModel, tta_crops: int) -> dict | None:
    """The validation fit an evaluation made for this very checkpoint (its weights' digest) and the dataset
    on disk, or None with a note saying why the probabilities stay uncalibrated. A fit made for other
    weights or another dataset raises ``validation.ValidationFitError``: applying it would be wrong."""
    uncalibrated = "the probabilities are uncalibrated and no operating point is applied"
    builders = union.built(restored.config.data, workdir)
    if builders is None:
        where = dataset.data_dir(restored.config.data, workdir)
        print(
            f"note: the dataset of checkpoint step {restored.step} is not built in {where}, so no evaluation's "
            f"thresholds can be checked against it: {uncalibrated}",
            file=sys.stderr,
        )
        return None
    fitted_for = validation.FittedFor(restored.step, restored.params_sha256, run_info.datasets_fingerprint(builders))
    fit, passed_over = validation.find(workdir, fitted_for, restored.task, tta_crops)
    for note in passed_over:
        print(f"note: {note}: not used, {uncalibrated}; run --mode evaluate again to refit it", file=sys.stderr)
    if fit is None and not passed_over:
        print(
            f"note: no evaluation of checkpoint step {restored.step} (test-time crops {tta_crops}) in "
            f"{Path(workdir) / 'eval'}: {uncalibrated}; run --mode evaluate first",
            file=sys.stderr,
        )
    return fit


def fitted_lines(probs: np.ndarray, fit: dict, multi_label: bool) -> str:
    """The calibrated probabilities and each operating point's calls, from the evaluation's validation fit."""
    class_names = fit["class_names"]
    calibrated = temperature.apply(probs[None], fit["temperature"]["temperatures"], multi_label)[0]
    calls = decisions.called(probs, operating_points.thresholds_of(fit["operating_points"]), class_names)
    called = " | ".join(f"{rule}: {', '.join(names) or 'none'}" for rule, names in calls.items())
    return f"calibrated: {format_probabilities(calibrated, class_names)}\n  called at {called}"
