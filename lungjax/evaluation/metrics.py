"""Evaluation metrics for the single-label, six-class chest X-ray classifier.

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
  vectorised pass score all bootstrap replicates at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_curve

CI_LEVEL = 0.95
ECE_BINS = 15
# Softmax outputs in float32 sum to one within ~1e-6; this only rejects logits and unnormalised
# scores.
ROW_SUM_TOLERANCE = 1e-3
# Bootstrap replicates are scored in blocks of at most this many (replicate, image) weights
# (32 MB of float64), so memory stays bounded however large the test set is.
BOOTSTRAP_BLOCK_ELEMENTS = 4_000_000


# -------------------------------------------------------------------------------------- validation


def check_predictions(
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str] | None = None,
    patient_ids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate the evaluation inputs and return them as (int64 labels, float64 probs).

    Raising early with a precise message beats a confusing shape error deep inside a metric.
    ``class_names=None`` takes the number of classes from ``probs``.
    """
    probs = np.asarray(probs)
    if probs.ndim != 2:
        raise ValueError(f"probs must be 2-D (N, C), got shape {probs.shape}")
    num_classes = probs.shape[1] if class_names is None else len(class_names)
    if probs.shape[1] != num_classes:
        raise ValueError(f"probs has {probs.shape[1]} columns but there are {num_classes} class_names")
    labels = _check_labels(labels, num_classes)
    if probs.shape[0] != labels.shape[0]:
        raise ValueError(f"length mismatch: {labels.shape[0]} labels but {probs.shape[0]} rows of probs")
    if patient_ids is not None and np.shape(patient_ids) != labels.shape:
        raise ValueError(f"length mismatch: {labels.shape[0]} labels but patient_ids has shape {np.shape(patient_ids)}")
    probs = probs.astype(np.float64)
    if np.isnan(probs).any():
        raise ValueError(f"probs contains NaN in {int(np.isnan(probs).any(axis=1).sum())} rows")
    if (probs < 0).any() or (probs > 1).any():
        raise ValueError("probs must lie in [0, 1]; pass softmax probabilities, not logits")
    row_sums = probs.sum(axis=1)
    if np.abs(row_sums - 1.0).max() > ROW_SUM_TOLERANCE:
        raise ValueError(
            f"rows of probs must sum to 1 (within {ROW_SUM_TOLERANCE}); found sums in "
            f"[{row_sums.min():.4g}, {row_sums.max():.4g}]"
        )
    return labels, probs


def _check_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """1-D, non-empty integer labels in [0, num_classes) -> int64 array."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {labels.shape}")
    if labels.size == 0:
        raise ValueError("empty input: labels has no elements")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    out_of_range = (labels < 0) | (labels >= num_classes)
    if out_of_range.any():
        raise ValueError(f"labels out of range [0, {num_classes}): {np.unique(labels[out_of_range]).tolist()}")
    return labels.astype(np.int64)


# ----------------------------------------------------------------------------------- class weights


def compute_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Balanced weights n_samples / (n_classes * count), as sklearn's ``"balanced"`` heuristic.

    Used by training to counter class imbalance. A class without examples would get an infinite
    weight, so it is an error rather than a silent inf.
    """
    labels = _check_labels(labels, num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        raise ValueError(f"class index {int(missing[0])} has no examples; its balanced weight would be infinite")
    return labels.shape[0] / (num_classes * counts.astype(np.float64))


# ------------------------------------------------------------------------ weighted core statistics


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise ratio that is NaN (not a warning) where the denominator is zero."""
    numerator, denominator = np.broadcast_arrays(np.asarray(numerator, np.float64), np.asarray(denominator, np.float64))
    return np.divide(numerator, denominator, out=np.full(numerator.shape, np.nan), where=denominator > 0)


def _weighted_ovr_auc(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One-vs-rest AUC per class for each row of ``weights`` (B, N) -> (B, C), NaN if undefined.

    With image weights w, AUC = sum over (positive i, negative j) of w_i w_j [s_i > s_j] (+1/2 on
    ties) / (W_pos W_neg). Sorting the scores once and summing weights per tie group turns that
    into a cumulative sum, so all B replicates cost a few (B, N) array passes per class.
    """
    aucs = np.empty((weights.shape[0], probs.shape[1]))
    for k in range(probs.shape[1]):
        order = np.argsort(probs[:, k], kind="stable")
        sorted_scores = probs[order, k]
        group_starts = np.flatnonzero(np.r_[True, np.diff(sorted_scores) != 0])
        positive = labels[order] == k
        sorted_weights = weights[:, order]
        pos_weight = np.add.reduceat(sorted_weights * positive, group_starts, axis=1)
        neg_weight = np.add.reduceat(sorted_weights * ~positive, group_starts, axis=1)
        neg_below = np.cumsum(neg_weight, axis=1) - neg_weight
        wins = (pos_weight * (neg_below + 0.5 * neg_weight)).sum(axis=1)
        aucs[:, k] = _divide(wins, pos_weight.sum(axis=1) * neg_weight.sum(axis=1))
    return aucs


def _weighted_confusion(labels: np.ndarray, preds: np.ndarray, weights: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrices (B, C, C), rows true and columns predicted, one per row of ``weights``."""
    cell = np.zeros((labels.shape[0], num_classes * num_classes))
    cell[np.arange(labels.shape[0]), labels * num_classes + preds] = 1.0
    return (weights @ cell).reshape(-1, num_classes, num_classes)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """The (C, C) int64 confusion matrix, rows true and columns predicted."""
    return _weighted_confusion(labels, preds, np.ones((1, labels.shape[0])), num_classes)[0].astype(np.int64)


def _one_vs_rest_rates(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, precision and F1 from one-vs-rest counts, NaN where 0/0.

    F1 is 2TP / (2TP + FP + FN), which equals sklearn's F1 and stays defined (0) when a class is
    never predicted but has positives.
    """
    return {
        "sensitivity": _divide(tp, tp + fn),
        "specificity": _divide(tn, tn + fp),
        "precision": _divide(tp, tp + fp),
        "f1": _divide(2 * tp, 2 * tp + fp + fn),
    }


def _confusion_rates(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class one-vs-rest rates (..., C) from confusion matrices (..., C, C)."""
    tp = np.diagonal(confusion, axis1=-2, axis2=-1)
    true_count = confusion.sum(axis=-1)
    predicted_count = confusion.sum(axis=-2)
    total = confusion.sum(axis=(-2, -1))[..., None]
    return _one_vs_rest_rates(tp, predicted_count - tp, true_count - tp, total - true_count - predicted_count + tp)


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
    confusion = _weighted_confusion(labels, preds, weights, probs.shape[1])
    rates = _confusion_rates(confusion)
    auc = _weighted_ovr_auc(labels, probs, weights)
    return {
        "confusion": confusion,
        "accuracy": _divide(np.trace(confusion, axis1=1, axis2=2), confusion.sum(axis=(1, 2))),
        "balanced_accuracy": rates["sensitivity"][:, macro_classes].mean(axis=1),
        "macro_auc": auc[:, macro_classes].mean(axis=1),
        "auc": auc,
        "sensitivity": rates["sensitivity"],
        "specificity": rates["specificity"],
    }


def _optional_float(value: float) -> float | None:
    """NaN -> None and NumPy scalar -> float, so the report is valid JSON."""
    return None if np.isnan(value) else float(value)


# --------------------------------------------------------------------------- single-number metrics


def one_vs_rest_auc(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """ROC-AUC of each class against the rest, (C,), NaN for a class without positives/negatives."""
    labels, probs = check_predictions(labels, probs)
    return _weighted_ovr_auc(labels, probs, np.ones((1, labels.shape[0])))[0]


def macro_auc(labels: np.ndarray, probs: np.ndarray) -> float | None:
    """Mean one-vs-rest AUC over the classes present in ``labels`` (None if any is undefined)."""
    labels, probs = check_predictions(labels, probs)
    present = np.bincount(labels, minlength=probs.shape[1]) > 0
    return _optional_float(one_vs_rest_auc(labels, probs)[present].mean())


def calibration_bins(labels: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Top-1 confidence reliability table over ``n_bins`` equal-width bins of [0, 1].

    Bin i holds confidences in [i/n, (i+1)/n); the last bin also holds 1.0. Returns ``edges``
    (n_bins + 1,), ``counts``, and per-bin ``accuracy`` and mean ``confidence`` (NaN when empty).
    """
    labels, probs = check_predictions(labels, probs)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    bin_index = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(bin_index, minlength=n_bins)
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1),
        "counts": counts,
        "accuracy": _divide(np.bincount(bin_index, correct, minlength=n_bins), counts),
        "confidence": _divide(np.bincount(bin_index, confidence, minlength=n_bins), counts),
    }


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE of the top-1 confidence: sum over bins of (n_b / N) |accuracy_b - confidence_b|.

    Bins as in ``calibration_bins`` (equal width, 15 by default); empty bins contribute nothing.
    """
    bins = calibration_bins(labels, probs, n_bins)
    filled = bins["counts"] > 0
    gaps = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float((bins["counts"][filled] * gaps).sum() / bins["counts"].sum())


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log probability of the true class, clipped as sklearn does (float64 eps)."""
    labels, probs = check_predictions(labels, probs)
    eps = np.finfo(np.float64).eps
    true_class_prob = np.clip(probs[np.arange(labels.shape[0]), labels], eps, 1.0 - eps)
    return float(-np.log(true_class_prob).mean())


# -------------------------------------------------------------------------------------- thresholds


def youden_thresholds(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """Per-class one-vs-rest threshold maximising Youden's J = sensitivity + specificity - 1.

    Class k is called positive iff probs[:, k] >= threshold. Candidates are the distinct scores
    (``roc_curve`` without dropping points, minus its +inf sentinel that predicts nothing). Ties in
    J go to the highest threshold, i.e. the most specific operating point. A class without
    positives or without negatives has no ROC curve, so it raises ValueError.
    """
    labels, probs = check_predictions(labels, probs, class_names)
    thresholds = {}
    for k, name in enumerate(class_names):
        positive = labels == k
        if positive.all() or not positive.any():
            raise ValueError(
                f"class {name!r} has no {'negative' if positive.all() else 'positive'} examples; "
                "its Youden threshold is undefined"
            )
        fpr, tpr, candidates = roc_curve(positive, probs[:, k], drop_intermediate=False)
        best = 1 + int(np.argmax(tpr[1:] - fpr[1:]))  # argmax returns the first, highest, tie
        thresholds[name] = float(candidates[best])
    return thresholds


def youden_j(
    labels: np.ndarray, probs: np.ndarray, thresholds: Mapping[str, float], class_names: Sequence[str]
) -> dict[str, dict[str, float | int]]:
    """Per class: Youden's J reached at its threshold, with the positive and negative counts.

    J says how good an operating point is independently of where it sits: two near-equal score sets
    can put J's maximum at distant thresholds, but never at J values further apart than one example
    moving across (1 / min(positives, negatives)).
    """
    labels, probs = check_predictions(labels, probs, class_names)
    rates = _threshold_metrics(labels, probs, _check_thresholds(thresholds, class_names))
    positives = np.bincount(labels, minlength=len(class_names))
    return {
        name: {
            "youden_j": float(rates["sensitivity"][k] + rates["specificity"][k] - 1),
            "positives": int(positives[k]),
            "negatives": int(len(labels) - positives[k]),
        }
        for k, name in enumerate(class_names)
    }


def _check_thresholds(thresholds: Mapping[str, float], class_names: Sequence[str]) -> np.ndarray:
    """Thresholds dict -> array in class order; every class exactly once, finite values."""
    missing = [name for name in class_names if name not in thresholds]
    unknown = [name for name in thresholds if name not in class_names]
    if missing or unknown:
        raise ValueError(f"thresholds must name every class: missing {missing}, unknown {unknown}")
    values = np.array([thresholds[name] for name in class_names], dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"thresholds must be finite, got {dict(thresholds)}")
    return values


def _threshold_metrics(labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """One-vs-rest rates (C,) when class k is called iff probs[:, k] >= thresholds[k]."""
    called = probs >= thresholds
    positive = labels[:, None] == np.arange(probs.shape[1])
    return _one_vs_rest_rates(
        (called & positive).sum(axis=0),
        (called & ~positive).sum(axis=0),
        (~called & positive).sum(axis=0),
        (~called & ~positive).sum(axis=0),
    )


# --------------------------------------------------------------------------------------- bootstrap


def _patient_bootstrap_weights(
    patient_index: np.ndarray, n_patients: int, n_draws: int, rng: np.random.Generator
) -> np.ndarray:
    """Image weights (n_draws, N): how often each image's patient was drawn in each replicate.

    Drawing ``n_patients`` patients with replacement and giving every film of a drawn patient the
    patient's draw count is the same as resampling whole patients; weights avoid materialising
    the resampled index sets.
    """
    draws = rng.integers(0, n_patients, size=(n_draws, n_patients))
    offsets = np.arange(n_draws)[:, None] * n_patients
    patient_counts = np.bincount((draws + offsets).ravel(), minlength=n_draws * n_patients)
    return patient_counts.reshape(n_draws, n_patients)[:, patient_index].astype(np.float64)


def _interval(values: np.ndarray) -> dict[str, float | int | None]:
    """Percentile interval over the replicates where the metric is defined."""
    used = values[~np.isnan(values)]
    if used.size == 0:
        return {"low": None, "high": None, "n_used": 0}
    tail = 100.0 * (1.0 - CI_LEVEL) / 2.0
    low, high = np.percentile(used, [tail, 100.0 - tail])
    return {"low": float(low), "high": float(high), "n_used": int(used.size)}


def bootstrap_replicates(
    replicate: Callable[[np.ndarray], dict[str, np.ndarray]], patient_ids: np.ndarray, n_bootstrap: int, seed: int
) -> dict[str, np.ndarray]:
    """``replicate(weights)`` over ``n_bootstrap`` patient resamples, each key's values stacked.

    ``weights`` is a (B, N) block of image weights (``_patient_bootstrap_weights``); blocks hold at
    most ``BOOTSTRAP_BLOCK_ELEMENTS`` weights, which bounds memory, and draw from one generator in
    order, so the replicates do not depend on the block size.
    """
    _, patient_index = np.unique(patient_ids, return_inverse=True)
    n_patients = int(patient_index.max()) + 1
    rng = np.random.default_rng(seed)
    block = max(1, BOOTSTRAP_BLOCK_ELEMENTS // len(patient_index))
    blocks = [
        replicate(_patient_bootstrap_weights(patient_index, n_patients, min(block, n_bootstrap - start), rng))
        for start in range(0, n_bootstrap, block)
    ]
    return {key: np.concatenate([b[key] for b in blocks]) for key in blocks[0]}


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
        **{key: _interval(replicates[key]) for key in ("accuracy", "balanced_accuracy", "macro_auc")},
        "per_class": {
            name: {key: _interval(replicates[key][:, k]) for key in ("auc", "sensitivity", "specificity")}
            for k, name in enumerate(class_names)
        },
    }


# ------------------------------------------------------------------------------------------ report


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
    threshold_values = None if thresholds is None else _check_thresholds(thresholds, class_names)
    n_images = labels.shape[0]
    patient_ids = np.arange(n_images) if patient_ids is None else np.asarray(patient_ids)
    support = np.bincount(labels, minlength=len(class_names))
    macro_classes = np.flatnonzero(support > 0)

    point = _replicate_metrics(labels, probs, np.ones((1, n_images)), macro_classes)
    point = {key: value[0] for key, value in point.items()}
    confusion = point["confusion"].astype(np.int64)
    rates = _confusion_rates(confusion)
    average_precision = np.full(len(class_names), np.nan)
    per_class = {}
    for k, name in enumerate(class_names):
        if support[k] > 0:
            average_precision[k] = average_precision_score(labels == k, probs[:, k])
        per_class[name] = {
            "auc": _optional_float(point["auc"][k]),
            "pr_auc": _optional_float(average_precision[k]),
            **{key: _optional_float(rates[key][k]) for key in rates},
            "support": int(support[k]),
        }
        if support[k] == 0:
            per_class[name]["note"] = "no positive examples: auc, pr_auc and sensitivity are undefined"
        elif support[k] == n_images:
            per_class[name]["note"] = "no negative examples: auc and specificity are undefined"

    report = {
        "n_images": int(n_images),
        "n_patients": int(np.unique(patient_ids).size),
        "accuracy": _optional_float(point["accuracy"]),
        "balanced_accuracy": _optional_float(point["balanced_accuracy"]),
        "macro_auc": _optional_float(point["macro_auc"]),
        "macro_pr_auc": _optional_float(average_precision[macro_classes].mean()),
        "log_loss": log_loss(labels, probs),
        "ece": expected_calibration_error(labels, probs),
        "confusion_matrix": confusion.tolist(),
        "per_class": per_class,
        "confidence_intervals": None
        if n_bootstrap == 0
        else _bootstrap_intervals(labels, probs, patient_ids, class_names, macro_classes, n_bootstrap, seed),
    }
    if threshold_values is not None:
        at_threshold = _threshold_metrics(labels, probs, threshold_values)
        report["at_thresholds"] = {
            "thresholds": {name: float(t) for name, t in zip(class_names, threshold_values)},
            "per_class": {
                name: {key: _optional_float(at_threshold[key][k]) for key in at_threshold}
                for k, name in enumerate(class_names)
            },
        }
    return report
