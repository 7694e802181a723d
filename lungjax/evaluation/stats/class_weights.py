"""Balanced class weights, which training uses to counter class imbalance."""

from __future__ import annotations

import numpy as np

from lungjax.evaluation.stats.checks import check_labels


def compute_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Balanced weights n_samples / (n_classes * count), as sklearn's ``"balanced"`` heuristic.

    Used by training to counter class imbalance. A class without examples would get an infinite
    weight, so it is an error rather than a silent inf.
    """
    labels = check_labels(labels, num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        raise ValueError(f"class index {int(missing[0])} has no examples; its balanced weight would be infinite")
    return labels.shape[0] / (num_classes * counts.astype(np.float64))
