"""The single-label (six-class) task's metrics section of ``report.json``.

Pure NumPy (scikit-learn only for curves and average precision), so evaluation and plotting never
need an accelerator. Every function takes ``labels`` (N,) int, ``probs`` (N, C) with rows summing
to one and, where relevant, ``patient_ids`` (N,): several films of one patient are not independent,
so confidence intervals resample patients, never images.

Conventions shared by all functions:

* The decision is the argmax of ``probs`` (ties go to the lowest class index, as ``np.argmax``).
* A metric that is undefined (0/0, e.g. AUC of a class without positives) is ``None`` in the report,
  never NaN, because JSON has no NaN.
* AUC is the Mann-Whitney statistic on ranks with ties counted one half, which is exactly what
  ``sklearn.metrics.roc_auc_score`` computes; writing it with per-sample weights lets one
  vectorised pass score all bootstrap replicates at once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import average_precision_score

from lungjax.evaluation.stats.bootstrap import CI_LEVEL, bootstrap_replicates, interval
from lungjax.evaluation.stats.calibration import expected_calibration_error, log_loss
from lungjax.evaluation.stats.checks import check_predictions, check_thresholds
from lungjax.evaluation.stats.numeric import divide, optional_float
from lungjax.evaluation.stats.ranking import weighted_ovr_auc
from lungjax.evaluation.stats.rates import confusion_rates, rates_at_class_thresholds, weighted_confusion


def _replicate_metrics(
    labels: np.ndarray, probs: np.ndarray, weights: np.ndarray, macro_classes: np.ndarray
) -> dict[str, np.ndarray]:
    """The bootstrapped metrics (and confusion matrices) for each row of ``weights``.

    With all weights 1 this is the point estimate, so the bootstrap runs the very code that the
    tests compare with scikit-learn.

    Macro averages run over ``macro_classes`` (the classes present in the full test set); a
    replicate missing one of them yields NaN, so it is skipped rather than averaged over a
    different set of classes.
    """
    preds = probs.argmax(axis=1)
    confusion = weighted_confusion(labels, preds, weights, probs.shape[1])
    rates = confusion_rates(confusion)
    auc = weighted_ovr_auc(labels, probs, weights)
    return {
        "confusion": confusion,
        "accuracy": divide(np.trace(confusion, axis1=1, axis2=2), confusion.sum(axis=(1, 2))),
        "balanced_accuracy": rates["sensitivity"][:, macro_classes].mean(axis=1),
        "macro_auc": auc[:, macro_classes].mean(axis=1),
        "auc": auc,
        "sensitivity": rates["sensitivity"],
        "specificity": rates["specificity"],
    }


def _bootstrap_intervals(
    labels: np.ndarray,
    probs: np.ndarray,
    patient_ids: np.ndarray,
    class_names: Sequence[str],
    macro_classes: np.ndarray,
    n_bootstrap: int,
    seed: int,
) -> dict:
    """95% percentile intervals from ``n_bootstrap`` patient-level resamples (see module doc)."""
    replicates = bootstrap_replicates(
        lambda weights: _replicate_metrics(labels, probs, weights, macro_classes), patient_ids, n_bootstrap, seed
    )
    return {
        "level": CI_LEVEL,
        "method": "percentile bootstrap over patients",
        "n_bootstrap": n_bootstrap,
        "seed": seed,
        **{key: interval(replicates[key]) for key in ("accuracy", "balanced_accuracy", "macro_auc")},
        "per_class": {
            name: {key: interval(replicates[key][:, k]) for key in ("auc", "sensitivity", "specificity")}
            for k, name in enumerate(class_names)
        },
    }


def classification_report(
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    *,
    patient_ids: np.ndarray | None = None,
    thresholds: Mapping[str, float] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """All evaluation numbers as one JSON-serialisable dict (undefined values are None).

    Keys: n_images, n_patients, accuracy, balanced_accuracy, macro_auc, macro_pr_auc, log_loss,
    ece, confusion_matrix, per_class, confidence_intervals, and at_thresholds when ``thresholds``
    is given. Per-class decisions are the argmax; ``at_thresholds`` re-scores each class
    one-vs-rest at its own threshold. ``patient_ids=None`` treats every image as its own patient;
    ``n_bootstrap=0`` skips the intervals (``confidence_intervals`` is None).
    """
    labels, probs = check_predictions(labels, probs, class_names, patient_ids)
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    threshold_values = None if thresholds is None else check_thresholds(thresholds, class_names)
    n_images = labels.shape[0]
    patient_ids = np.arange(n_images) if patient_ids is None else np.asarray(patient_ids)
    support = np.bincount(labels, minlength=len(class_names))
    macro_classes = np.flatnonzero(support > 0)

    point = _replicate_metrics(labels, probs, np.ones((1, n_images)), macro_classes)
    point = {key: value[0] for key, value in point.items()}
    confusion = point["confusion"].astype(np.int64)
    rates = confusion_rates(confusion)
    average_precision = np.full(len(class_names), np.nan)
    per_class = {}
    for k, name in enumerate(class_names):
        if support[k] > 0:
            average_precision[k] = average_precision_score(labels == k, probs[:, k])
        per_class[name] = {
            "auc": optional_float(point["auc"][k]),
            "pr_auc": optional_float(average_precision[k]),
            **{key: optional_float(rates[key][k]) for key in rates},
            "support": int(support[k]),
        }
        if support[k] == 0:
            per_class[name]["note"] = "no positive examples: auc, pr_auc and sensitivity are undefined"
        elif support[k] == n_images:
            per_class[name]["note"] = "no negative examples: auc and specificity are undefined"

    report = {
        "n_images": int(n_images),
        "n_patients": int(np.unique(patient_ids).size),
        "accuracy": optional_float(point["accuracy"]),
        "balanced_accuracy": optional_float(point["balanced_accuracy"]),
        "macro_auc": optional_float(point["macro_auc"]),
        "macro_pr_auc": optional_float(average_precision[macro_classes].mean()),
        "log_loss": log_loss(labels, probs),
        "ece": expected_calibration_error(labels, probs),
        "confusion_matrix": confusion.tolist(),
        "per_class": per_class,
        "confidence_intervals": None
        if n_bootstrap == 0
        else _bootstrap_intervals(labels, probs, patient_ids, class_names, macro_classes, n_bootstrap, seed),
    }
    if threshold_values is not None:
        at_threshold = rates_at_class_thresholds(labels, probs, threshold_values)
        report["at_thresholds"] = {
            "thresholds": {name: float(t) for name, t in zip(class_names, threshold_values, strict=True)},
            "per_class": {
                name: {key: optional_float(at_threshold[key][k]) for key in at_threshold}
                for k, name in enumerate(class_names)
            },
        }
    return report
