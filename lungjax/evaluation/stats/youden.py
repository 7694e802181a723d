"""Youden thresholds (maximising sensitivity + specificity - 1) and the J they reach, per class or finding."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import roc_curve

from lungjax.evaluation.stats.checks import (
    binary_view,
    check_finding_thresholds,
    check_multilabel_predictions,
    check_predictions,
    check_stated,
    check_thresholds,
)
from lungjax.evaluation.stats.numeric import optional_float
from lungjax.evaluation.stats.rates import rates_at_class_thresholds, rates_at_finding_thresholds


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
    rates = rates_at_class_thresholds(labels, probs, check_thresholds(thresholds, class_names))
    positives = np.bincount(labels, minlength=len(class_names))
    return {
        name: {
            "youden_j": float(rates["sensitivity"][k] + rates["specificity"][k] - 1),
            "positives": int(positives[k]),
            "negatives": int(len(labels) - positives[k]),
        }
        for k, name in enumerate(class_names)
    }


def youden_thresholds_multilabel(
    labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str], stated: np.ndarray | None = None
) -> dict[str, float | None]:
    """Per-finding threshold maximising Youden's J, exactly as :func:`metrics.youden_thresholds`.

    Same candidates (the distinct scores) and tie rule (the highest threshold), because it is that
    function applied to each finding's binary view. A finding without positives or negatives has no
    ROC curve, so its threshold is None (NIH's rarest findings can lack validation positives; the
    other findings keep theirs). With ``stated`` (N, C) each finding is chosen on the images that state it.
    """
    labels, probs = check_multilabel_predictions(labels, probs, class_names)
    stated = check_stated(stated, labels.shape)
    thresholds = {}
    for c, name in enumerate(class_names):
        positive, prob = labels[stated[:, c], c], probs[stated[:, c], c]
        if positive.all() or not positive.any():
            thresholds[name] = None
            continue
        binary_labels, binary_probs = binary_view(positive, prob)
        thresholds[name] = youden_thresholds(binary_labels, binary_probs, (name, f"not {name}"))[name]
    return thresholds


def youden_j_multilabel(
    labels: np.ndarray,
    probs: np.ndarray,
    thresholds: Mapping[str, float],
    class_names: Sequence[str],
    stated: np.ndarray | None = None,
) -> dict[str, dict[str, float | int | None]]:
    """Per finding: Youden's J reached at its threshold, with the positive and negative counts.

    The shape of :func:`metrics.youden_j`'s answer, for the report's ``on_validation``; J is None
    where sensitivity or specificity is undefined. With ``stated`` (N, C) each finding counts the
    images that state it.
    """
    labels, probs = check_multilabel_predictions(labels, probs, class_names)
    stated = check_stated(stated, labels.shape)
    rates = rates_at_finding_thresholds(labels, probs, check_finding_thresholds(thresholds, class_names), stated)
    positives = (labels & stated).sum(axis=0)
    return {
        name: {
            "youden_j": optional_float(rates["sensitivity"][c] + rates["specificity"][c] - 1),
            "positives": int(positives[c]),
            "negatives": int(stated[:, c].sum() - positives[c]),
        }
        for c, name in enumerate(class_names)
    }
