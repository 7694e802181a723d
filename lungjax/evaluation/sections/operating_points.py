"""The operating points on the evaluated split: each threshold chosen on validation
(:mod:`lungjax.evaluation.fit.operating_points`) applied unchanged, with sensitivity, specificity, PPV and
NPV, their patient-bootstrap intervals, and whether the contract held: ``met`` when the target metric's
whole interval is at or above the target, ``missed`` when it lies wholly below, ``uncertain`` when it
straddles the target."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lungjax.evaluation.fit import operating_points
from lungjax.evaluation.stats import bootstrap, numeric, rates


def _verdict(interval: dict | None, value: float | None, target: float) -> str:
    if interval and interval.get("low") is not None:
        if interval["low"] >= target - operating_points.TARGET_TOLERANCE:
            return "met"
        return "missed" if interval["high"] < target - operating_points.TARGET_TOLERANCE else "uncertain"
    if value is None:
        return "undefined"
    return "met (no interval)" if value >= target - operating_points.TARGET_TOLERANCE else "missed (no interval)"


def apply(
    rules: Sequence[operating_points.Rule],
    chosen: dict,
    positive: np.ndarray,
    scores: np.ndarray,
    class_names,
    *,
    patient_ids: np.ndarray,
    n_bootstrap: int,
    seed: int,
    label_mask: np.ndarray | None = None,
) -> dict:
    """Each chosen threshold applied to the evaluated split's columns, with intervals and the verdict;
    with ``label_mask`` (N, C) each class counts only the films that state it (1 = stated)."""
    stated = np.ones(positive.shape) if label_mask is None else np.asarray(label_mask, np.float64)
    placed = [
        (rule, c, name, chosen[rule.text][name]["threshold"])
        for rule in rules
        for c, name in enumerate(class_names)
        if chosen[rule.text][name]["threshold"] is not None
    ]

    def replicate(weights):
        out = {}
        for rule, c, name, threshold in placed:
            values = rates.predictive_rates(
                rates.weighted_counts(positive[:, c], scores[:, c] >= threshold, weights * stated[:, c])
            )
            out.update({f"{rule.text}|{name}|{key}": value for key, value in values.items()})
        return out

    point = {key: value[0] for key, value in replicate(np.ones((1, len(scores)))).items()}
    boot = bootstrap.bootstrap_replicates(replicate, patient_ids, n_bootstrap, seed) if n_bootstrap and placed else None
    report = {}
    for rule in rules:
        report[rule.text] = {}
        for name in class_names:
            row = {**chosen[rule.text][name], "target": None if rule.metric is None else {rule.metric: rule.target}}
            if row["threshold"] is not None:
                row["test"] = {}
                for key in operating_points.METRICS:
                    figure = {"value": numeric.optional_float(point[f"{rule.text}|{name}|{key}"])}
                    if boot is not None:
                        figure["ci"] = bootstrap.interval(boot[f"{rule.text}|{name}|{key}"])
                    row["test"][key] = figure
                if rule.metric is not None:
                    target = row["test"][rule.metric]
                    row["contract"] = _verdict(target.get("ci"), target["value"], rule.target)
            else:
                row["contract"] = "unmet on validation" if rule.metric is not None else "undefined"
            report[rule.text][name] = row
    return report
