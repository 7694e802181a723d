"""Binary rates from decisions: confusion matrices, one-vs-rest sensitivity, specificity, precision, F1,
PPV and NPV, at the argmax or at per-class thresholds, weighted for the bootstrap."""

from __future__ import annotations

import numpy as np
from scipy import stats

from lungjax.evaluation.stats.numeric import divide


def weighted_confusion(labels: np.ndarray, preds: np.ndarray, weights: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrices (B, C, C), rows true and columns predicted, one per row of ``weights``."""
    cell = np.zeros((labels.shape[0], num_classes * num_classes))
    cell[np.arange(labels.shape[0]), labels * num_classes + preds] = 1.0
    return (weights @ cell).reshape(-1, num_classes, num_classes)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """The (C, C) int64 confusion matrix, rows true and columns predicted."""
    return weighted_confusion(labels, preds, np.ones((1, labels.shape[0])), num_classes)[0].astype(np.int64)


def one_vs_rest_rates(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, precision and F1 from one-vs-rest counts, NaN where 0/0.

    F1 is 2TP / (2TP + FP + FN), which equals sklearn's F1 and stays defined (0) when a class is
    never predicted but has positives.
    """
    return {
        "sensitivity": divide(tp, tp + fn),
        "specificity": divide(tn, tn + fp),
        "precision": divide(tp, tp + fp),
        "f1": divide(2 * tp, 2 * tp + fp + fn),
    }


def confusion_rates(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class one-vs-rest rates (..., C) from confusion matrices (..., C, C)."""
    tp = np.diagonal(confusion, axis1=-2, axis2=-1)
    true_count = confusion.sum(axis=-1)
    predicted_count = confusion.sum(axis=-2)
    total = confusion.sum(axis=(-2, -1))[..., None]
    return one_vs_rest_rates(tp, predicted_count - tp, true_count - tp, total - true_count - predicted_count + tp)


def rates_at_class_thresholds(labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """One-vs-rest rates (C,) when class k is called iff probs[:, k] >= thresholds[k]."""
    called = probs >= thresholds
    positive = labels[:, None] == np.arange(probs.shape[1])
    return one_vs_rest_rates(
        (called & positive).sum(axis=0),
        (called & ~positive).sum(axis=0),
        (~called & positive).sum(axis=0),
        (~called & ~positive).sum(axis=0),
    )


def rates_at_finding_thresholds(
    labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, stated: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, precision, F1 (C,) when finding c is called iff probs[:, c] >= thresholds[c];
    NaN (undefined) for a finding whose threshold is NaN. With ``stated`` (N, C) bool each finding counts
    the images that state it only."""
    called = probs >= thresholds
    counted = np.ones(labels.shape, bool) if stated is None else stated
    rates = one_vs_rest_rates(
        (called & labels & counted).sum(axis=0),
        (called & ~labels & counted).sum(axis=0),
        (~called & labels & counted).sum(axis=0),
        (~called & ~labels & counted).sum(axis=0),
    )
    return {key: np.where(np.isnan(thresholds), np.nan, value) for key, value in rates.items()}


def weighted_counts(positive: np.ndarray, called: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """True/false positives/negatives (B,) of one column's decisions, weighted by each row of ``weights``."""
    cells = np.stack([called & positive, called & ~positive, ~called & positive, ~called & ~positive], axis=1)
    tp, fp, fn, tn = (weights @ cells.astype(np.float64)).T
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def predictive_rates(counts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV and NPV from ``weighted_counts``, NaN where 0/0."""
    tp, fp, fn, tn = counts["tp"], counts["fp"], counts["fn"], counts["tn"]
    return {
        "sensitivity": divide(tp, tp + fn),
        "specificity": divide(tn, tn + fp),
        "ppv": divide(tp, tp + fp),
        "npv": divide(tn, tn + fn),
    }


def clopper_pearson(successes: int, trials: int, level: float = 0.95) -> dict[str, float | None]:
    """Exact binomial interval of a rate: ``{"low", "high"}`` (None without trials)."""
    if trials == 0:
        return {"low": None, "high": None}
    tail = (1.0 - level) / 2.0
    low = 0.0 if successes == 0 else float(stats.beta.ppf(tail, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(stats.beta.ppf(1.0 - tail, successes + 1, trials - successes))
    return {"low": low, "high": high}
