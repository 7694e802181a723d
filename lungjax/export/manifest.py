"""``manifest.json``: the bundle's contract, everything a caller needs to feed the model and read its output.

Written for people as much as for ``lungjax.serve``: the preprocessing is spelled out step by step
as :mod:`lungjax.data.images` and the eval pipeline do it (the builder stores each film at
``stored_size``, the pipeline resizes that to ``image_size``), so a caller outside lungjax can
reproduce the input bit for bit with OpenCV. Its ``out_of_distribution`` section says how to score a
film's features against ``ood.npz`` and where the warning starts. The format's name, version and file
names are :mod:`lungjax.serve.bundle_format`'s.
"""

from __future__ import annotations

import hashlib

import cv2
import jax

import lungjax
from lungjax.data import tasks
from lungjax.evaluation import out_of_distribution
from lungjax.evaluation.fit import operating_points, temperature
from lungjax.serve import bundle_format

PIXEL_SCALING = (
    "inside the model: x = pixels * (1 / 255) in the compute dtype, so [0, 1]; nothing else (no mean or "
    "standard deviation): feed the uint8 pixels as they are"
)


def _resize_step(name: str, size: int, whose: str) -> str:
    return (
        f"resize to {name} = {size} ({whose}): cv2.resize to {size} x {size} with cv2.INTER_AREA when shrinking, "
        f"cv2.INTER_LINEAR when enlarging, none when the side is already {size} (lungjax.data.images.resize)"
    )


def _temperature_formula(multi_label: bool) -> str:
    clip = f"p clipped to [eps, 1 - eps] first, eps = {temperature.EPS:.6g} (float32's machine epsilon)"
    if multi_label:
        return f"calibrated_c = sigmoid(log(p_c / (1 - p_c)) / T_c), one temperature per finding, {clip}"
    return f"calibrated = softmax(log(p) / T) over the classes, one temperature, {clip}"


def task_section(task) -> dict:
    meaning = (
        "independent probabilities, one sigmoid per finding: each is that finding's probability, they do not sum to 1"
        if task.multi_label
        else "a softmax over the classes: one probability per class, summing to 1"
    )
    section = {
        "name": task.name,
        "class_names": list(task.class_names),
        "multi_label": task.multi_label,
        "output": {"shape": ["batch", task.num_classes], "dtype": "float32", "meaning": meaning},
    }
    label_space = tasks.label_space(task)
    if label_space is not None:  # a label set: each label's one-line definition, for whoever reads the outputs
        section["label_space"] = label_space
    return section


def input_section(stored_size: int, image_size: int) -> dict:
    return {
        "shape": ["batch", image_size, image_size, 1],
        "dtype": "uint8",
        "channels": 1,
        "image_size": image_size,
        "stored_size": stored_size,
        "pixels": "8-bit grayscale, bright = dense, as lungjax.data.radiograph_files.read displays a file",
        "pixel_scaling": PIXEL_SCALING,
        "preprocessing": [
            "read the film as 8-bit grayscale, bright = dense (DICOM: modality LUT, then the VOI LUT or the first "
            "window, MONOCHROME1 inverted; without either, the film's own range scaled to 0..255; PNG/JPEG: 16-bit "
            "films scaled by their range, colour converted to gray, EXIF orientation applied)",
            "pad to a square with zeros (black): side = max(H, W), the film centred at top = (side - H) // 2, "
            "left = (side - W) // 2 (lungjax.data.images.resize_square)",
            _resize_step("stored_size", stored_size, "the dataset builder's step"),
            _resize_step("image_size", image_size, "the eval pipeline's step"),
        ],
        "opencv_version": cv2.__version__,
    }


def decision_section(fit: dict, fit_source: str, fitted_dtype: str) -> dict:
    """The operating points' thresholds and the temperatures, from ``validation.fit_on_validation``'s record."""
    return {
        "chosen_on": fit["chosen_on"],
        "source": fit_source,
        "fitted_on_probabilities_of": f"the {fitted_dtype} model without test-time crops",
        "thresholds": operating_points.thresholds_of(fit["operating_points"]),
        "thresholds_apply_to": fit["thresholds_apply_to"]
        + "; a class without a threshold at a point (its target was unreachable on validation) is never called there",
        "operating_points": fit["operating_points"],
        "temperature": {**fit["temperature"], "formula": _temperature_formula(fit["multi_label"])},
    }


def out_of_distribution_section(summary: dict, npz: bytes, fitted_on: str) -> dict:
    """``fit.ood``'s summary, the arrays' file and digest, and how a caller applies it."""
    return {
        **summary,
        "file": bundle_format.OOD_FILE,
        "sha256": hashlib.sha256(npz).hexdigest(),
        "bytes": len(npz),
        "arrays": "mean (D,) and covariance (D, D), float64, in an uncompressed .npz (numpy.load, allow_pickle=False)",
        "features": "the model file's second output, float32 (batch, D): the pooled penultimate features the "
        "classifier head reads",
        "fitted_on_features_of": fitted_on,
        "samples": f"at most {out_of_distribution.MAX_FILMS} films of each split, evenly spaced over it",
        "meaning": "how far a film's features lie from the training films'; above the threshold the film is "
        "unlike the training films (another hospital, device, body part or not a chest film at all) and the "
        "probabilities may mean little; about false_alarm_rate of films like the validation ones score above it",
    }


def build(
    *,
    task,
    saved_config,
    fit: dict,
    fit_source: str,
    fitted_dtype: str,
    model_files: dict[str, dict],
    config_sha256: str,
    parity_sha256: str,
    dataset_name: str,
    dataset_fingerprint: str,
    step: int,
    params_sha256: str,
    out_of_distribution_record: dict,
) -> dict:
    """The whole manifest, sealed with its own digest (``bundle_format.manifest_sha256``); ``model_files``
    is ``{precision: {"file", "sha256", ...}}``. The provenance names the checkpoint by its step and the
    digest of its weights (``runtime.checkpoint.params_sha256``), as the validation fit does;
    ``out_of_distribution_record`` is ``out_of_distribution_section``'s."""
    record = {
        "format": bundle_format.FORMAT,
        "format_version": bundle_format.FORMAT_VERSION,
        "task": task_section(task),
        "input": input_section(saved_config.data.stored_size, saved_config.image_size),
        "models": model_files,
        "decision": decision_section(fit, fit_source, fitted_dtype),
        "out_of_distribution": out_of_distribution_record,
        "parity_file": bundle_format.PARITY_FILE,
        "parity_sha256": parity_sha256,
        "provenance": {
            "checkpoint_step": int(step),
            "checkpoint_params_sha256": params_sha256,
            "model": saved_config.model.name,
            "model_width": saved_config.model.width,
            "half_precision": bool(saved_config.half_precision),
            "dataset": dataset_name,
            "training_sources": out_of_distribution.training_sources(saved_config.data),
            "dataset_fingerprint": dataset_fingerprint,
            "config_file": bundle_format.CONFIG_FILE,
            "config_sha256": config_sha256,
            "lungjax_version": lungjax.__version__,
            "jax_version": jax.__version__,
        },
    }
    return {**record, bundle_format.MANIFEST_DIGEST: bundle_format.manifest_sha256(record)}
