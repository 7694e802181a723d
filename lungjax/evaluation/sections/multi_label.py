"""The multi-label (14-finding) task's metrics section of ``report.json`` (NIH ChestX-ray14's benchmark).

Every function takes ``labels`` (N, C) 0/1, ``probs`` (N, C) independent sigmoid probabilities and,
where relevant, ``patient_ids`` (N,). Each finding is scored on its own, as a binary problem, and
the headline is the mean over findings, as in every published ChestX-ray14 table. A masked task
(a label set over sources that state some labels of an image and not others) passes ``stated``
(N, C): each label is then scored on the images that state it, and nothing else.

The statistics and conventions are :mod:`lungjax.evaluation.stats`' (shared with the six-class section):

* a finding seen as a binary problem is the two-class single-label case, with class 0 "present"
  (score p) and class 1 "absent" (score 1 - p), so Youden thresholds and log-loss are the single-label
  ones unchanged, and its weighted one-vs-rest AUC, given only column 0, is the finding's AUROC;
* an undefined metric is ``None`` in the report, never NaN;
* a finding is called positive iff ``prob >= threshold``;
* confidence intervals resample whole patients, with the same draws, blocks and percentile rule.

Calibration is per finding: the equal-width ECE of that finding's probability against its own 0/1
label (``stats.calibration.finding_calibration_bins``), over ``FINDING_ECE_BINS`` = 10 bins; there is
no top-1 confidence in a multi-label problem."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from lungjax.evaluation.stats.bootstrap import CI_LEVEL, bootstrap_replicates, interval
from lungjax.evaluation.stats.calibration import FINDING_ECE_BINS, finding_ece, log_loss
from lungjax.evaluation.stats.checks import (
    binary_view,
    check_finding_thresholds,
    check_multilabel_predictions,
    check_stated,
)
from lungjax.evaluation.stats.numeric import optional_float
from lungjax.evaluation.stats.ranking import weighted_auroc, weighted_average_precision
from lungjax.evaluation.stats.rates import rates_at_finding_thresholds


def _replicate_metrics(
    labels: np.ndarray, probs: np.ndarray, weights: np.ndarray, mean_over: np.ndarray, stated: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-finding AUROC and AP (B, C) and their means over ``mean_over`` (B,) for each row of ``weights``.

    With all weights 1 this is the point estimate, so the bootstrap runs the very code the tests
    compare with scikit-learn. A replicate in which a ``mean_over`` finding is undefined has a NaN
    mean and is skipped, never averaged over a different set of findings. An image that does not state
    a finding weighs 0 in it: the finding is scored on the images that state it.
    """
    columns = range(probs.shape[1])
    auroc = np.stack(
        [weighted_auroc(labels[:, c] & stated[:, c], probs[:, c], weights * stated[:, c]) for c in columns], axis=1
    )
    pr_auc = np.stack(
        [weighted_average_precision(labels[:, c] & stated[:, c], probs[:, c], weights * stated[:, c]) for c in columns],
        axis=1,
    )
    return {
        "auroc": auroc,
        "pr_auc": pr_auc,
        "mean_auroc": _mean_over(auroc, mean_over),
        "mean_pr_auc": _mean_over(pr_auc, mean_over),
    }


def _mean_over(values: np.ndarray, mean_over: np.ndarray) -> np.ndarray:
    """Row means (B,) over the ``mean_over`` columns; NaN, not an empty-slice warning, when there are none."""
    if mean_over.size == 0:
        return np.full(values.shape[0], np.nan)
    return values[:, mean_over].mean(axis=1)


def _bootstrap_intervals(
    labels: np.ndarray,
    probs: np.ndarray,
    patient_ids: np.ndarray,
    class_names: Sequence[str],
    mean_over: np.ndarray,
    n_bootstrap: int,
    seed: int,
    stated: np.ndarray,
) -> dict:
    """95% percentile intervals from ``n_bootstrap`` patient-level resamples, drawn as metrics draws them.
    The split's patients are resampled together (so the means have an interval) and each finding is
    scored on the drawn images that state it."""
    replicates = bootstrap_replicates(
        lambda weights: _replicate_metrics(labels, probs, weights, mean_over, stated), patient_ids, n_bootstrap, seed
    )
    return {
        "level": CI_LEVEL,
        "method": "percentile bootstrap over patients",
        "n_bootstrap": n_bootstrap,
        "seed": seed,
        "mean_auroc": interval(replicates["mean_auroc"]),
        "mean_pr_auc": interval(replicates["mean_pr_auc"]),
        "per_finding": {
            name: {key: interval(replicates[key][:, c]) for key in ("auroc", "pr_auc")}
            for c, name in enumerate(class_names)
        },
    }


def _note(support: int, n_stated: int) -> str | None:
    if n_stated == 0:
        return "stated on no image: every metric is undefined; left out of the means"
    if support == 0:
        return "no positive examples: auroc and pr_auc are undefined; left out of the means"
    if support == n_stated:
        return "no negative examples: auroc is undefined; left out of the means"
    return None


def _calibration_figures(positive: np.ndarray, prob: np.ndarray) -> dict[str, float | None]:
    """Log-loss, Brier score and ECE of one finding on the images that state it (None on none)."""
    if positive.size == 0:
        return {"log_loss": None, "brier": None, "ece": None}
    return {
        "log_loss": log_loss(*binary_view(positive, prob)),
        "brier": float(np.mean((prob - positive) ** 2)),
        "ece": finding_ece(positive, prob),
    }


def multilabel_report(
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    *,
    patient_ids: np.ndarray,
    thresholds: Mapping[str, float] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    stated: np.ndarray | None = None,
) -> dict:
    """All multi-label evaluation numbers as one JSON-serialisable dict (undefined values are None).

    Keys: n_images, n_patients, mean_auroc, mean_pr_auc, means_over (the findings with both
    positives and negatives, over which both means run), ece_bins, per_finding (stated, support,
    prevalence, auroc, pr_auc, log_loss, brier, ece, and a note when a metric is undefined),
    confidence_intervals (None when ``n_bootstrap=0``), and at_thresholds (thresholds, and
    sensitivity, specificity, precision, F1 per finding) when ``thresholds`` is given. ``stated``
    (N, C), a masked task's ``label_mask``: each finding's figures count the images that state it
    (``stated``: how many; ``support``: how many of them are positive); None: every image states every
    finding.
    """
    labels, probs = check_multilabel_predictions(labels, probs, class_names, patient_ids)
    stated = check_stated(stated, labels.shape)
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    threshold_values = None if thresholds is None else check_finding_thresholds(thresholds, class_names)
    n_images = labels.shape[0]
    n_stated = stated.sum(axis=0)
    support = (labels & stated).sum(axis=0)
    mean_over = np.flatnonzero((support > 0) & (support < n_stated))

    point = _replicate_metrics(labels, probs, np.ones((1, n_images)), mean_over, stated)
    per_finding = {}
    for c, name in enumerate(class_names):
        rows = stated[:, c]
        per_finding[name] = {
            "stated": int(n_stated[c]),
            "support": int(support[c]),
            "prevalence": optional_float(support[c] / n_stated[c]) if n_stated[c] else None,
            "auroc": optional_float(point["auroc"][0, c]),
            "pr_auc": optional_float(point["pr_auc"][0, c]),
            **_calibration_figures(labels[rows, c], probs[rows, c]),
        }
        if note := _note(int(support[c]), int(n_stated[c])):
            per_finding[name]["note"] = note

    report = {
        "n_images": int(n_images),
        "n_patients": int(np.unique(patient_ids).size),
        "mean_auroc": optional_float(point["mean_auroc"][0]),
        "mean_pr_auc": optional_float(point["mean_pr_auc"][0]),
        "means_over": [class_names[c] for c in mean_over],
        "ece_bins": FINDING_ECE_BINS,
        "per_finding": per_finding,
        "confidence_intervals": None
        if n_bootstrap == 0
        else _bootstrap_intervals(
            labels, probs, np.asarray(patient_ids), class_names, mean_over, n_bootstrap, seed, stated
        ),
    }
    if threshold_values is not None:
        rates = rates_at_finding_thresholds(labels, probs, threshold_values, stated)
        report["at_thresholds"] = {
            "thresholds": {name: optional_float(t) for name, t in zip(class_names, threshold_values, strict=True)},
            "per_finding": {
                name: {key: optional_float(rates[key][c]) for key in rates} for c, name in enumerate(class_names)
            },
        }
    return report
