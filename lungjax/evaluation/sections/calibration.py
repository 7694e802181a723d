"""Calibration before and after temperature scaling: log-loss and ECE on the evaluated split, with CIs.

The temperatures are fitted on the validation split (:mod:`lungjax.evaluation.fit.temperature`) and
applied unchanged to the split evaluated, like every other choice made on validation. Both figures
are the report's own definitions: the six-class task's top-1 ECE over ``TOP1_ECE_BINS`` bins and
the true class's log-loss; each finding's ECE over ``FINDING_ECE_BINS`` bins and its binary
log-loss, with the means over the 14 findings as the headline. Intervals resample patients with the
same draws before and after, so the interval of the change is paired.
"""

from __future__ import annotations

import numpy as np

from lungjax.evaluation.fit import temperature
from lungjax.evaluation.stats import bootstrap, checks
from lungjax.evaluation.stats.calibration import (
    FINDING_ECE_BINS,
    TOP1_ECE_BINS,
    weighted_expected_calibration_error,
)
from lungjax.evaluation.stats.numeric import divide, optional_float

FIGURES = ("log_loss", "ece")


def _single_label_figures(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    eps = np.finfo(np.float64).eps
    loss = -np.log(np.clip(probs[np.arange(len(labels)), labels], eps, 1.0 - eps))
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    return {
        "log_loss": weights @ loss / weights.sum(axis=1),
        "ece": weighted_expected_calibration_error(correct, probs.max(axis=1), TOP1_ECE_BINS, weights),
    }


def _finding_figures(positive: np.ndarray, prob: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    eps = np.finfo(np.float64).eps
    p = np.clip(prob, eps, 1.0 - eps)
    loss = -np.where(positive, np.log(p), np.log(1.0 - p))
    return {
        "log_loss": divide(weights @ loss, weights.sum(axis=1)),
        "ece": weighted_expected_calibration_error(positive.astype(np.float64), prob, FINDING_ECE_BINS, weights),
    }


def _figures(labels, probs, multi_label: bool, weights, stated) -> dict[str, np.ndarray]:
    """Headline log-loss and ECE (B,), and for multi-label each finding's (B, C) as ``<figure>_per_finding``,
    each finding over the images that state it."""
    if not multi_label:
        return _single_label_figures(labels, probs, weights)
    per = [_finding_figures(labels[:, c], probs[:, c], weights * stated[:, c]) for c in range(probs.shape[1])]
    anywhere = np.flatnonzero(stated.any(axis=0))  # the headline means over the findings stated somewhere
    out = {}
    for key in FIGURES:
        out[f"{key}_per_finding"] = np.stack([p[key] for p in per], axis=1)
        out[key] = out[f"{key}_per_finding"][:, anywhere].mean(axis=1)
    return out


def calibration_report(
    labels: np.ndarray,
    probs: np.ndarray,
    fitted: dict,
    class_names,
    *,
    multi_label: bool,
    patient_ids: np.ndarray,
    n_bootstrap: int,
    seed: int,
    stated: np.ndarray | None = None,
) -> dict:
    """Log-loss and ECE before and after applying ``fitted`` (``temperature.fit``'s record), with
    patient-bootstrap intervals of each and of the change (after - before). Multi-label ``stated``
    (N, C), a masked task's ``label_mask``: each finding's figures count the images that state it."""
    if multi_label:
        labels, probs = checks.check_multilabel_predictions(labels, probs, class_names, patient_ids)
        stated = checks.check_stated(stated, labels.shape)
    else:
        labels, probs = checks.check_predictions(labels, probs, class_names, patient_ids)
    calibrated = temperature.apply(probs, fitted["temperatures"], multi_label)

    def replicate(weights):
        before, after = (
            _figures(labels, probs, multi_label, weights, stated),
            _figures(labels, calibrated, multi_label, weights, stated),
        )
        out = {}
        for key, value in before.items():
            out[f"before_{key}"], out[f"after_{key}"] = value, after[key]
            out[f"change_{key}"] = after[key] - value
        return out

    point = {key: value[0] for key, value in replicate(np.ones((1, len(probs)))).items()}
    boot = bootstrap.bootstrap_replicates(replicate, patient_ids, n_bootstrap, seed) if n_bootstrap else None

    def figure(key: str, column: int | None = None) -> dict:
        value = point[key] if column is None else point[key][column]
        row = {"value": optional_float(value)}
        if boot is not None:
            row["ci"] = bootstrap.interval(boot[key] if column is None else boot[key][:, column])
        return row

    report = {
        "method": "temperature scaling, fitted on the validation split (minimum log-loss)",
        "scope": "one temperature per finding" if multi_label else "one temperature for all classes",
        "temperatures": {name: float(t) for name, t in zip(class_names, fitted["temperatures"], strict=True)}
        if multi_label
        else {"all classes": float(fitted["temperatures"][0])},
        "not_fitted": fitted["not_fitted"],
        "at_bound": fitted["at_bound"],
        "ece_bins": FINDING_ECE_BINS if multi_label else TOP1_ECE_BINS,
        **{f"{when}_{key}": figure(f"{when}_{key}") for when in ("before", "after", "change") for key in FIGURES},
    }
    if multi_label:
        report["per_finding"] = {
            name: {
                f"{when}_{key}": figure(f"{when}_{key}_per_finding", c)
                for when in ("before", "after")
                for key in FIGURES
            }
            for c, name in enumerate(class_names)
        }
    return report
