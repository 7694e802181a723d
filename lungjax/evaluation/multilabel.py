"""Evaluation metrics for the multi-label 14-finding task (NIH ChestX-ray14's benchmark).

Every function takes ``labels`` (N, C) 0/1, ``probs`` (N, C) independent sigmoid probabilities and,
where relevant, ``patient_ids`` (N,). Each finding is scored on its own, as a binary problem, and
the headline is the mean over findings, as in every published ChestX-ray14 table.

The conventions and the patient bootstrap are those of :mod:`lungjax.evaluation.metrics`, whose
helpers this module imports rather than restates:

* a finding seen as a binary problem is metrics' two-class single-label case, with class 0
  "present" (score p) and class 1 "absent" (score 1 - p), so Youden thresholds and log-loss come
  from metrics unchanged, and its weighted one-vs-rest AUC, given only column 0, is the finding's
  AUROC;
* an undefined metric is ``None`` in the report, never NaN;
* a finding is called positive iff ``prob >= threshold``;
* confidence intervals resample whole patients, with the same draws, blocks and percentile rule.

Calibration is per finding: the equal-width ECE of that finding's probability against its own 0/1
label (see :func:`finding_calibration_bins`), with ``ECE_BINS`` = 10 bins; there is no top-1
confidence in a multi-label problem.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from lungjax.evaluation.metrics import (
    CI_LEVEL,
    _check_thresholds,
    _divide,
    _interval,
    _one_vs_rest_rates,
    _optional_float,
    _weighted_ovr_auc,
    bootstrap_replicates,
    log_loss,
    youden_thresholds,
)

ECE_BINS = 10
PRESENT, ABSENT = 0, 1  # class indices of a finding's binary view


# -------------------------------------------------------------------------------------- validation


def check_multilabel_predictions(
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    patient_ids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate the inputs and return them as (bool labels (N, C), float64 probs (N, C)).

    A precise message here beats a shape error deep inside a metric. Rows need not sum to one:
    the findings are independent sigmoids.
    """
    labels, probs = np.asarray(labels), np.asarray(probs)
    if labels.ndim != 2 or probs.ndim != 2:
        raise ValueError(f"labels and probs must be 2-D (N, C), got shapes {labels.shape} and {probs.shape}")
    if labels.shape != probs.shape:
        raise ValueError(f"shape mismatch: labels {labels.shape} but probs {probs.shape}")
    if probs.shape[1] != len(class_names):
        raise ValueError(f"probs has {probs.shape[1]} columns but there are {len(class_names)} class_names")
    if labels.shape[0] == 0:
        raise ValueError("empty input: labels has no rows")
    if patient_ids is not None and np.shape(patient_ids) != (labels.shape[0],):
        raise ValueError(f"length mismatch: {labels.shape[0]} rows but patient_ids has shape {np.shape(patient_ids)}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"labels must be 0/1 integers or booleans, got dtype {labels.dtype}")
    if ((labels != 0) & (labels != 1)).any():
        raise ValueError(f"labels must be 0 or 1, found {np.unique(labels[(labels != 0) & (labels != 1)]).tolist()}")
    probs = probs.astype(np.float64)
    if np.isnan(probs).any():
        raise ValueError(f"probs contains NaN in {int(np.isnan(probs).any(axis=1).sum())} rows")
    if (probs < 0).any() or (probs > 1).any():
        raise ValueError("probs must lie in [0, 1]; pass sigmoid probabilities, not logits")
    return labels.astype(bool), probs


def _binary_view(positive: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One finding as metrics' single-label problem: labels (N,) with PRESENT/ABSENT, probs (N, 2)."""
    return np.where(positive, PRESENT, ABSENT), np.stack([prob, 1.0 - prob], axis=1)


# ------------------------------------------------------------------------ weighted core statistics


def _weighted_auroc(positive: np.ndarray, prob: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of one finding for each row of ``weights`` (B, N) -> (B,), NaN if undefined.

    metrics' one-vs-rest AUC scores every column it is given; column PRESENT alone is this finding.
    """
    binary_labels, binary_probs = _binary_view(positive, prob)
    return _weighted_ovr_auc(binary_labels, binary_probs[:, [PRESENT]], weights)[:, 0]


def _weighted_average_precision(positive: np.ndarray, prob: np.ndarray, weights: np.ndarray) -> np.ndarray:
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
    return _divide((recall_steps * precision).sum(axis=1), true_positives[:, -1])


def _replicate_metrics(
    labels: np.ndarray, probs: np.ndarray, weights: np.ndarray, mean_over: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-finding AUROC and AP (B, C) and their means over ``mean_over`` (B,) for each row of ``weights``.

    With all weights 1 this is the point estimate, so the bootstrap runs the very code the tests
    compare with scikit-learn. A replicate in which a ``mean_over`` finding is undefined has a NaN
    mean and is skipped, never averaged over a different set of findings.
    """
    auroc = np.stack([_weighted_auroc(labels[:, c], probs[:, c], weights) for c in range(probs.shape[1])], axis=1)
    pr_auc = np.stack(
        [_weighted_average_precision(labels[:, c], probs[:, c], weights) for c in range(probs.shape[1])], axis=1
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
) -> dict:
    """95% percentile intervals from ``n_bootstrap`` patient-level resamples, drawn as metrics draws them."""
    replicates = bootstrap_replicates(
        lambda weights: _replicate_metrics(labels, probs, weights, mean_over), patient_ids, n_bootstrap, seed
    )
    return {
        "level": CI_LEVEL,
        "method": "percentile bootstrap over patients",
        "n_bootstrap": n_bootstrap,
        "seed": seed,
        "mean_auroc": _interval(replicates["mean_auroc"]),
        "mean_pr_auc": _interval(replicates["mean_pr_auc"]),
        "per_finding": {
            name: {key: _interval(replicates[key][:, c]) for key in ("auroc", "pr_auc")}
            for c, name in enumerate(class_names)
        },
    }


# ----------------------------------------------------------------------------------- calibration


def finding_calibration_bins(positive: np.ndarray, prob: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Reliability table of one finding over ``n_bins`` equal-width bins of its probability.

    Bin i holds probabilities in [i/n, (i+1)/n); the last bin also holds 1.0. Returns ``edges``
    (n_bins + 1,), ``counts``, and per bin the observed ``frequency`` of the finding and the mean
    predicted ``probability`` (NaN when empty).
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    prob = np.asarray(prob, np.float64)
    bin_index = np.minimum((prob * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(bin_index, minlength=n_bins)
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1),
        "counts": counts,
        "frequency": _divide(np.bincount(bin_index, np.asarray(positive, np.float64), minlength=n_bins), counts),
        "probability": _divide(np.bincount(bin_index, prob, minlength=n_bins), counts),
    }


def finding_ece(positive: np.ndarray, prob: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE of one finding: sum over bins of (n_b / N) |frequency_b - probability_b|; empty bins add nothing."""
    bins = finding_calibration_bins(positive, prob, n_bins)
    filled = bins["counts"] > 0
    gaps = np.abs(bins["frequency"][filled] - bins["probability"][filled])
    return float((bins["counts"][filled] * gaps).sum() / bins["counts"].sum())


# -------------------------------------------------------------------------------------- thresholds


def youden_thresholds_multilabel(
    labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str]
) -> dict[str, float | None]:
    """Per-finding threshold maximising Youden's J, exactly as :func:`metrics.youden_thresholds`.

    Same candidates (the distinct scores) and tie rule (the highest threshold), because it is that
    function applied to each finding's binary view. A finding without positives or negatives has no
    ROC curve, so its threshold is None (NIH's rarest findings can lack validation positives; the
    other findings keep theirs).
    """
    labels, probs = check_multilabel_predictions(labels, probs, class_names)
    thresholds = {}
    for c, name in enumerate(class_names):
        if labels[:, c].all() or not labels[:, c].any():
            thresholds[name] = None
            continue
        binary_labels, binary_probs = _binary_view(labels[:, c], probs[:, c])
        thresholds[name] = youden_thresholds(binary_labels, binary_probs, (name, f"not {name}"))[name]
    return thresholds


def _check_finding_thresholds(thresholds: Mapping[str, float | None], class_names: Sequence[str]) -> np.ndarray:
    """Thresholds in finding order, every finding named once; None (no threshold) becomes NaN."""
    missing = [name for name in class_names if name not in thresholds]
    unknown = [name for name in thresholds if name not in class_names]
    if missing or unknown:
        raise ValueError(f"thresholds must name every class: missing {missing}, unknown {unknown}")
    chosen = [name for name in class_names if thresholds[name] is not None]
    values = _check_thresholds({name: thresholds[name] for name in chosen}, chosen) if chosen else np.empty(0)
    out = np.full(len(class_names), np.nan)
    out[[class_names.index(name) for name in chosen]] = values
    return out


def _rates_at_thresholds(labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, precision, F1 (C,) when finding c is called iff probs[:, c] >= thresholds[c];
    NaN (undefined) for a finding whose threshold is NaN."""
    called = probs >= thresholds
    rates = _one_vs_rest_rates(
        (called & labels).sum(axis=0),
        (called & ~labels).sum(axis=0),
        (~called & labels).sum(axis=0),
        (~called & ~labels).sum(axis=0),
    )
    return {key: np.where(np.isnan(thresholds), np.nan, value) for key, value in rates.items()}


def youden_j_multilabel(
    labels: np.ndarray, probs: np.ndarray, thresholds: Mapping[str, float], class_names: Sequence[str]
) -> dict[str, dict[str, float | int | None]]:
    """Per finding: Youden's J reached at its threshold, with the positive and negative counts.

    The shape of :func:`metrics.youden_j`'s answer, for the report's ``on_validation``; J is None
    where sensitivity or specificity is undefined.
    """
    labels, probs = check_multilabel_predictions(labels, probs, class_names)
    rates = _rates_at_thresholds(labels, probs, _check_finding_thresholds(thresholds, class_names))
    positives = labels.sum(axis=0)
    return {
        name: {
            "youden_j": _optional_float(rates["sensitivity"][c] + rates["specificity"][c] - 1),
            "positives": int(positives[c]),
            "negatives": int(labels.shape[0] - positives[c]),
        }
        for c, name in enumerate(class_names)
    }


# ------------------------------------------------------------------------------------------ report


def _note(support: int, n_images: int) -> str | None:
    if support == 0:
        return "no positive examples: auroc and pr_auc are undefined; left out of the means"
    if support == n_images:
        return "no negative examples: auroc is undefined; left out of the means"
    return None


def multilabel_report(
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    *,
    patient_ids: np.ndarray,
    thresholds: Mapping[str, float] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """All multi-label evaluation numbers as one JSON-serialisable dict (undefined values are None).

    Keys: n_images, n_patients, mean_auroc, mean_pr_auc, means_over (the findings with both
    positives and negatives, over which both means run), ece_bins, per_finding (support,
    prevalence, auroc, pr_auc, log_loss, brier, ece, and a note when a metric is undefined),
    confidence_intervals (None when ``n_bootstrap=0``), and at_thresholds (thresholds, and
    sensitivity, specificity, precision, F1 per finding) when ``thresholds`` is given.
    """
    labels, probs = check_multilabel_predictions(labels, probs, class_names, patient_ids)
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    threshold_values = None if thresholds is None else _check_finding_thresholds(thresholds, class_names)
    n_images = labels.shape[0]
    support = labels.sum(axis=0)
    mean_over = np.flatnonzero((support > 0) & (support < n_images))

    point = _replicate_metrics(labels, probs, np.ones((1, n_images)), mean_over)
    per_finding = {}
    for c, name in enumerate(class_names):
        positive, prob = labels[:, c], probs[:, c]
        per_finding[name] = {
            "support": int(support[c]),
            "prevalence": float(support[c] / n_images),
            "auroc": _optional_float(point["auroc"][0, c]),
            "pr_auc": _optional_float(point["pr_auc"][0, c]),
            "log_loss": log_loss(*_binary_view(positive, prob)),
            "brier": float(np.mean((prob - positive) ** 2)),
            "ece": finding_ece(positive, prob),
        }
        if note := _note(int(support[c]), n_images):
            per_finding[name]["note"] = note

    report = {
        "n_images": int(n_images),
        "n_patients": int(np.unique(patient_ids).size),
        "mean_auroc": _optional_float(point["mean_auroc"][0]),
        "mean_pr_auc": _optional_float(point["mean_pr_auc"][0]),
        "means_over": [class_names[c] for c in mean_over],
        "ece_bins": ECE_BINS,
        "per_finding": per_finding,
        "confidence_intervals": None
        if n_bootstrap == 0
        else _bootstrap_intervals(labels, probs, np.asarray(patient_ids), class_names, mean_over, n_bootstrap, seed),
    }
    if threshold_values is not None:
        rates = _rates_at_thresholds(labels, probs, threshold_values)
        report["at_thresholds"] = {
            "thresholds": {name: _optional_float(t) for name, t in zip(class_names, threshold_values)},
            "per_finding": {
                name: {key: _optional_float(rates[key][c]) for key in rates} for c, name in enumerate(class_names)
            },
        }
    return report
