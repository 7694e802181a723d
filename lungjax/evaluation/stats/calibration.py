"""Calibration: equal-width reliability bins, the expected calibration error (ECE) and the log-loss.

One binning for every form: bin i of ``n_bins`` holds values in [i/n, (i+1)/n), the last bin also
1.0. The ECE is sum over bins of (n_b / N) |observed_b - predicted_b|, empty bins adding nothing,
for the single-label task's top-1 confidence (hit: the argmax is right; ``TOP1_ECE_BINS``) and for
each finding's own probability (hit: the finding is present; ``FINDING_ECE_BINS``). The bootstrap
form (``weighted_expected_calibration_error``) is the same sum with image weights; it agrees with
the point form to float64 rounding and is kept beside it because the published reports' digits
come from each (a replicate's sums cannot divide by empty weighted bins).
"""

from __future__ import annotations

import numpy as np

from lungjax.evaluation.stats.checks import check_predictions
from lungjax.evaluation.stats.numeric import divide

TOP1_ECE_BINS = 15
FINDING_ECE_BINS = 10


def bin_index(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Each value's equal-width bin of [0, 1] (the last bin holds 1.0)."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    return np.minimum((np.asarray(values) * n_bins).astype(np.int64), n_bins - 1)


def bin_matrix(values: np.ndarray, n_bins: int) -> np.ndarray:
    """(N, n_bins) one-hot of each value's bin."""
    return np.eye(n_bins)[bin_index(values, n_bins)]


def reliability_bins(hit: np.ndarray, confidence: np.ndarray, n_bins: int) -> dict[str, np.ndarray]:
    """``edges`` (n_bins + 1,), ``counts``, and per bin the ``observed`` rate of hits and the mean
    ``predicted`` confidence (NaN when empty)."""
    confidence = np.asarray(confidence, np.float64)
    index = bin_index(confidence, n_bins)
    counts = np.bincount(index, minlength=n_bins)
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1),
        "counts": counts,
        "observed": divide(np.bincount(index, np.asarray(hit, np.float64), minlength=n_bins), counts),
        "predicted": divide(np.bincount(index, confidence, minlength=n_bins), counts),
    }


def binned_ece(bins: dict[str, np.ndarray]) -> float:
    """The ECE of ``reliability_bins``' table."""
    filled = bins["counts"] > 0
    gaps = np.abs(bins["observed"][filled] - bins["predicted"][filled])
    return float((bins["counts"][filled] * gaps).sum() / bins["counts"].sum())


def weighted_expected_calibration_error(
    hit: np.ndarray, confidence: np.ndarray, n_bins: int, weights: np.ndarray
) -> np.ndarray:
    """ECE (B,) for each row of image ``weights`` (B, N): sum over bins of |weighted hits - weighted
    confidence| / total weight."""
    bins = bin_matrix(confidence, n_bins)
    gaps = weights @ (bins * hit[:, None]) - weights @ (bins * confidence[:, None])
    return divide(np.abs(gaps).sum(axis=1), weights.sum(axis=1))


def top1(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hit, confidence) of single-label predictions: whether the argmax is right, and its probability."""
    return probs.argmax(axis=1) == labels, probs.max(axis=1)


def calibration_bins(labels: np.ndarray, probs: np.ndarray, n_bins: int = TOP1_ECE_BINS) -> dict[str, np.ndarray]:
    """Top-1 confidence reliability table: ``edges``, ``counts``, per-bin ``accuracy`` and mean
    ``confidence`` (NaN when empty)."""
    labels, probs = check_predictions(labels, probs)
    bins = reliability_bins(*top1(labels, probs), n_bins)
    return {
        "edges": bins["edges"],
        "counts": bins["counts"],
        "accuracy": bins["observed"],
        "confidence": bins["predicted"],
    }


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = TOP1_ECE_BINS) -> float:
    """ECE of the top-1 confidence (15 bins by default)."""
    labels, probs = check_predictions(labels, probs)
    return binned_ece(reliability_bins(*top1(labels, probs), n_bins))


def finding_calibration_bins(
    positive: np.ndarray, prob: np.ndarray, n_bins: int = FINDING_ECE_BINS
) -> dict[str, np.ndarray]:
    """Reliability table of one finding: ``edges``, ``counts``, per bin the observed ``frequency`` of the
    finding and the mean predicted ``probability`` (NaN when empty)."""
    bins = reliability_bins(positive, prob, n_bins)
    return {
        "edges": bins["edges"],
        "counts": bins["counts"],
        "frequency": bins["observed"],
        "probability": bins["predicted"],
    }


def finding_ece(positive: np.ndarray, prob: np.ndarray, n_bins: int = FINDING_ECE_BINS) -> float:
    """ECE of one finding's probability against its own 0/1 label (10 bins by default)."""
    return binned_ece(reliability_bins(positive, prob, n_bins))


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log probability of the true class, clipped as sklearn does (float64 eps)."""
    labels, probs = check_predictions(labels, probs)
    eps = np.finfo(np.float64).eps
    true_class_prob = np.clip(probs[np.arange(labels.shape[0]), labels], eps, 1.0 - eps)
    return float(-np.log(true_class_prob).mean())
