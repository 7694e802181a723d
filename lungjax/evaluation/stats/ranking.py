"""AUROC and average precision, weighted: one vectorised pass scores every bootstrap replicate at once.

AUROC is the Mann-Whitney statistic on ranks with ties counted one half, which is exactly what
``sklearn.metrics.roc_auc_score`` computes; AP is scikit-learn's definition."""

from __future__ import annotations

import numpy as np

from lungjax.evaluation.stats.checks import PRESENT, binary_view, check_predictions
from lungjax.evaluation.stats.numeric import divide, optional_float


def weighted_ovr_auc(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
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
        aucs[:, k] = divide(wins, pos_weight.sum(axis=1) * neg_weight.sum(axis=1))
    return aucs


def weighted_auroc(positive: np.ndarray, prob: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of one finding for each row of ``weights`` (B, N) -> (B,), NaN if undefined.

    The one-vs-rest AUC scores every column it is given; column PRESENT alone is this finding.
    """
    binary_labels, binary_probs = binary_view(positive, prob)
    return weighted_ovr_auc(binary_labels, binary_probs[:, [PRESENT]], weights)[:, 0]


def weighted_average_precision(positive: np.ndarray, prob: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average precision of one finding for each row of ``weights`` (B, N) -> (B,), NaN without positives.

    scikit-learn's definition: AP = sum over distinct thresholds t (descending) of
    (R(t) - R(t_prev)) P(t), i.e. each tie group's positive weight over the total, times the
    precision with that group included. Only groups holding a positive film move recall, so after
    one sort the sums run over those groups alone: true positives from the cumulative weights of the
    positive films, films called from the cumulative weights of all films, both read at each such
    group's last film (bootstrap weights are integer counts, so the sums are exact).
    """
    if not positive.any():
        return np.full(weights.shape[0], np.nan)
    order = np.argsort(prob, kind="stable")[::-1]
    last_of_group = np.r_[np.diff(prob[order]) != 0, True]
    group_of = np.cumsum(last_of_group) - last_of_group  # tie-group index of each sorted film
    positive_at = np.flatnonzero(positive[order])
    positive_groups = group_of[positive_at]
    group_closes = np.r_[positive_groups[1:] != positive_groups[:-1], True]  # last positive film of its group
    true_positives = np.cumsum(np.take(weights, order[positive_at], axis=1), axis=1)[:, group_closes]
    called_at = np.flatnonzero(last_of_group)[positive_groups[group_closes]]
    called = np.cumsum(np.take(weights, order, axis=1), axis=1)[:, called_at]
    precision = np.divide(true_positives, called, out=np.zeros_like(called), where=called > 0)
    recall_steps = np.diff(true_positives, axis=1, prepend=0.0)
    return divide((recall_steps * precision).sum(axis=1), true_positives[:, -1])


def one_vs_rest_auc(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """ROC-AUC of each class against the rest, (C,), NaN for a class without positives/negatives."""
    labels, probs = check_predictions(labels, probs)
    return weighted_ovr_auc(labels, probs, np.ones((1, labels.shape[0])))[0]


def macro_auc(labels: np.ndarray, probs: np.ndarray) -> float | None:
    """Mean one-vs-rest AUC over the classes present in ``labels`` (None if any is undefined)."""
    labels, probs = check_predictions(labels, probs)
    present = np.bincount(labels, minlength=probs.shape[1]) > 0
    return optional_float(one_vs_rest_auc(labels, probs)[present].mean())
