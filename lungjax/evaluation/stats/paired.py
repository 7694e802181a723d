"""Paired statistics for two models scored on the same images: DeLong's test, McNemar's test and the
paired patient bootstrap of an AUROC difference.

DeLong, DeLong and Clarke-Pearson (1988), in the midrank form of Sun and Xu (2014): each positive's
placement ``V10_i`` is the share of negatives it outscores (ties one half), each negative's
``V01_j`` the share of positives that outscore it; AUROC is the mean placement, and the variance of
the difference of two correlated AUROCs is ``(s10_aa + s10_bb - 2 s10_ab) / m + (s01_aa + s01_bb -
2 s01_ab) / n`` from the placements' sample covariances. DeLong treats images as independent; the
paired bootstrap, which resamples patients with the same draws for both models, is the interval
that respects several films per patient. Both are reported.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from lungjax.evaluation.stats.bootstrap import bootstrap_replicates
from lungjax.evaluation.stats.ranking import weighted_auroc


def placements(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's placements (V10 over positives, V01 over negatives) of one score column."""
    x, y = scores[positive], scores[~positive]
    m, n = len(x), len(y)
    combined = stats.rankdata(np.r_[x, y])
    v10 = (combined[:m] - stats.rankdata(x)) / n
    v01 = 1.0 - (combined[m:] - stats.rankdata(y)) / m
    return v10, v01


def delong(positive: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> dict[str, float | None]:
    """DeLong's test of AUROC(a) = AUROC(b) on one class: both AUROCs, the difference a - b, its
    variance, z and the two-sided p-value. Undefined (None) without positives or negatives."""
    positive = np.asarray(positive, bool)
    if positive.all() or not positive.any():
        return {key: None for key in ("auroc_a", "auroc_b", "difference", "variance", "z", "p_value")}
    (v10_a, v01_a), (v10_b, v01_b) = placements(positive, scores_a), placements(positive, scores_b)
    m, n = len(v10_a), len(v01_a)
    s10 = np.cov(np.stack([v10_a, v10_b])) if m > 1 else np.zeros((2, 2))
    s01 = np.cov(np.stack([v01_a, v01_b])) if n > 1 else np.zeros((2, 2))
    variance = float((s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n)
    difference = float(v10_a.mean() - v10_b.mean())
    if variance <= 0.0:  # identical placements: no evidence of a difference
        z, p_value = 0.0, 1.0
    else:
        z = difference / np.sqrt(variance)
        p_value = float(2.0 * stats.norm.sf(abs(z)))
    return {
        "auroc_a": float(v10_a.mean()),
        "auroc_b": float(v10_b.mean()),
        "difference": difference,
        "variance": variance,
        "z": float(z),
        "p_value": p_value,
    }


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float | int]:
    """McNemar's exact test on paired decisions: how often only a is right, only b, both and neither,
    and the two-sided binomial p-value of the discordant pairs splitting evenly."""
    correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int((correct_a & ~correct_b).sum()), int((~correct_a & correct_b).sum())
    discordant = only_a + only_b
    p_value = 1.0 if discordant == 0 else float(stats.binomtest(only_a, discordant, 0.5).pvalue)
    return {
        "only_a_correct": only_a,
        "only_b_correct": only_b,
        "both_correct": int((correct_a & correct_b).sum()),
        "both_wrong": int((~correct_a & ~correct_b).sum()),
        "p_value": p_value,
        "method": "exact binomial test on the discordant pairs",
    }


def paired_bootstrap(
    positive: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    mean_over: np.ndarray,
    *,
    patient_ids: np.ndarray,
    n_bootstrap: int,
    seed: int,
    stated: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """AUROC(a) - AUROC(b) per class (B, C) and their mean over ``mean_over`` (B,), same draws for both;
    with ``stated`` (N, C) each class on the drawn images that state it."""
    stated = np.ones(positive.shape, bool) if stated is None else stated

    def replicate(weights):
        difference = np.stack(
            [
                weighted_auroc(positive[:, c], scores_a[:, c], weights * stated[:, c])
                - weighted_auroc(positive[:, c], scores_b[:, c], weights * stated[:, c])
                for c in range(positive.shape[1])
            ],
            axis=1,
        )
        mean = difference[:, mean_over].mean(axis=1) if mean_over.size else np.full(len(weights), np.nan)
        return {"difference": difference, "mean_difference": mean}

    return bootstrap_replicates(replicate, patient_ids, n_bootstrap, seed)
