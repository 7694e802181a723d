"""Every class of either task as its own binary problem: the form subgroups, operating points and paired
comparisons score.

A six-class prediction becomes six one-vs-rest columns (positive: the true class is k; score: its
softmax probability), a 14-finding prediction is already 14 such columns. The statistics are
:mod:`lungjax.evaluation.metrics`' and :mod:`lungjax.evaluation.multilabel`'s, imported here, so a
subgroup's AUROC is computed by the code the tests compare with scikit-learn.
"""

from __future__ import annotations

import numpy as np

from lungjax.evaluation import metrics, multilabel


def columns(labels: np.ndarray, probs: np.ndarray, class_names, multi_label: bool) -> tuple[np.ndarray, np.ndarray]:
    """Checked (positive (N, C) bool, scores (N, C) float64)."""
    if multi_label:
        return multilabel.check_multilabel_predictions(labels, probs, class_names)
    labels, probs = metrics.check_predictions(labels, probs, class_names)
    return labels[:, None] == np.arange(len(class_names)), probs


def weighted_auroc(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of one column for each row of ``weights`` (B, N) -> (B,), NaN where undefined."""
    return multilabel._weighted_auroc(positive, scores, weights)


def weighted_counts(positive: np.ndarray, called: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """True/false positives/negatives (B,) of one column's decisions, weighted by each row of ``weights``."""
    cells = np.stack([called & positive, called & ~positive, ~called & positive, ~called & ~positive], axis=1)
    tp, fp, fn, tn = (weights @ cells.astype(np.float64)).T
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def rates(counts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV and NPV from ``weighted_counts``, NaN where 0/0."""
    tp, fp, fn, tn = counts["tp"], counts["fp"], counts["fn"], counts["tn"]
    return {
        "sensitivity": metrics._divide(tp, tp + fn),
        "specificity": metrics._divide(tn, tn + fp),
        "ppv": metrics._divide(tp, tp + fp),
        "npv": metrics._divide(tn, tn + fn),
    }
