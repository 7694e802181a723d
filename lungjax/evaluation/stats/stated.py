"""Statistics over stated entries only: a label that a source does not state for a film (masked, 0 in
``label_mask``) neither counts as a negative nor as a positive, it is left out.

Leaving an entry out is a zero image weight for that label, so every weighted statistic of
:mod:`lungjax.evaluation.stats` (and every patient-bootstrap replicate) restricts itself by multiplying
its weights by the label's mask column: one definition, the bootstrap included.
"""

from __future__ import annotations

import numpy as np

from lungjax.evaluation.stats.bootstrap import bootstrap_replicates, interval
from lungjax.evaluation.stats.numeric import divide, optional_float
from lungjax.evaluation.stats.ranking import weighted_auroc


def stated_mask(label_mask: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """The (N, L) float mask of stated entries; without one every entry is stated (NIH's case)."""
    if label_mask is None:
        return np.ones(shape)
    mask = np.asarray(label_mask, np.float64)
    if mask.shape != shape:
        raise ValueError(f"label_mask has shape {mask.shape} but the labels have shape {shape}")
    if ((mask != 0) & (mask != 1)).any():
        raise ValueError("label_mask must be 0 (not stated) or 1 (stated)")
    return mask


def stated_auroc(positive: np.ndarray, prob: np.ndarray, stated: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC (B,) of one label over its stated films, for each row of image ``weights`` (B, N)."""
    return weighted_auroc(np.asarray(positive, bool), np.asarray(prob, np.float64), weights * stated)


def stated_prevalence(positive: np.ndarray, stated: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Share (B,) of the stated films that are positive, per row of ``weights``; NaN with none stated."""
    weights = weights * stated
    return divide(weights @ np.asarray(positive, np.float64), weights.sum(axis=1))


def auroc_with_interval(
    positive: np.ndarray, prob: np.ndarray, stated: np.ndarray, patient_ids: np.ndarray, n_bootstrap: int, seed: int
) -> tuple[dict, np.ndarray | None]:
    """``{"auroc", "ci", "n_stated", "n_positive"}`` of one label over its stated films, and the bootstrap
    replicates (None when ``n_bootstrap`` is 0), which a difference of independent samples draws on."""
    positive, stated = np.asarray(positive, bool), np.asarray(stated, np.float64)
    point = stated_auroc(positive, prob, stated, np.ones((1, len(positive))))[0]
    replicates = None
    if n_bootstrap:
        replicates = bootstrap_replicates(
            lambda weights: {"auroc": stated_auroc(positive, prob, stated, weights)}, patient_ids, n_bootstrap, seed
        )["auroc"]
    return {
        "auroc": optional_float(point),
        "ci": None if replicates is None else interval(replicates),
        "n_stated": int(stated.sum()),
        "n_positive": int((positive & (stated > 0)).sum()),
    }, replicates


def difference_of_independent(a: np.ndarray, b: np.ndarray) -> dict:
    """Percentile interval of a - b from two independent bootstraps (different patients, separate draws):
    replicate i of each is an independent draw, so their differences sample the difference's distribution."""
    n = min(len(a), len(b))
    return interval(a[:n] - b[:n])
