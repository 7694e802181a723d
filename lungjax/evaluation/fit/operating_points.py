"""Operating points as contracts: a rule per class chosen on validation, applied unchanged to test.

A rule is ``"youden"`` (maximise sensitivity + specificity - 1) or a target ``"<metric>>=<value>"``
with the metric one of sensitivity, specificity, ppv, npv. On validation each class gets the
threshold that meets the target with the most of the other side: the highest threshold reaching a
sensitivity or NPV target (the most specific), the lowest reaching a specificity or PPV target (the
most sensitive). Candidates are the distinct validation scores, so every threshold calls at least
one image; a target no candidate reaches is reported as unmet on validation with the best value
found, never clipped to a threshold that misses it. On the evaluated split the report gives
sensitivity, specificity, PPV and NPV with patient-bootstrap intervals, and whether the contract
held: ``met`` when the target metric's whole interval is at or above the target, ``missed`` when it
lies wholly below, ``uncertain`` when it straddles the target.

A class is called positive iff its probability is at least its threshold (the probabilities the
model wrote, before any temperature: thresholds and calibration are fitted side by side).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lungjax.evaluation.stats import numeric
from lungjax.evaluation.stats.rates import predictive_rates

YOUDEN = "youden"
METRICS = ("sensitivity", "specificity", "ppv", "npv")
# Which end of the feasible thresholds a target takes: the highest for targets that lower thresholds
# reach (more positives called), the lowest for targets that higher thresholds reach.
_HIGHEST_FEASIBLE = {"sensitivity": True, "npv": True, "specificity": False, "ppv": False}
_RULE = re.compile(r"^\s*(?P<metric>[a-z]+)\s*>=\s*(?P<value>[0-9.]+)\s*$")
# Rates are ratios of integer counts; a target written as a decimal may sit a rounding error above
# the ratio that equals it (0.95 vs 19/20).
TARGET_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Rule:
    text: str  # as the user wrote it, normalised: "youden" or "sensitivity>=0.95"
    metric: str | None  # None for youden
    target: float | None


def parse(text: str) -> Rule:
    """``"youden"`` or ``"<metric>>=<value>"`` -> Rule, or a ValueError saying what is allowed."""
    if str(text).strip().lower() == YOUDEN:
        return Rule(YOUDEN, None, None)
    match = _RULE.match(str(text).lower())
    allowed = f"'{YOUDEN}' or '<metric>>=<value>' with metric one of {METRICS} and 0 < value <= 1"
    if not match or match["metric"] not in METRICS:
        raise ValueError(f"operating point {text!r} is not {allowed}")
    try:
        value = float(match["value"])
    except ValueError as err:
        raise ValueError(f"operating point {text!r} is not {allowed}") from err
    if not 0.0 < value <= 1.0:
        raise ValueError(f"operating point {text!r}: the target must lie in (0, 1], not {value}")
    return Rule(f"{match['metric']}>={value:g}", match["metric"], value)


def parse_all(texts: Sequence[str]) -> list[Rule]:
    rules = [parse(text) for text in texts]
    seen = [rule.text for rule in rules]
    duplicates = sorted({text for text in seen if seen.count(text) > 1})
    if duplicates:
        raise ValueError(f"operating points named twice: {duplicates}")
    return rules


def _candidates(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Distinct scores, highest first, and the four rates when calling every score at or above each."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_positive = scores[order], positive[order]
    last_of_group = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    tp = np.cumsum(sorted_positive)[last_of_group].astype(np.float64)
    fp = np.cumsum(~sorted_positive)[last_of_group].astype(np.float64)
    p, n = positive.sum(), (~positive).sum()
    counts = {"tp": tp, "fp": fp, "fn": p - tp, "tn": n - fp}
    return sorted_scores[last_of_group], predictive_rates(counts)


def _rates_dict(values: dict[str, np.ndarray], index: int) -> dict[str, float | None]:
    return {key: numeric.optional_float(values[key][index]) for key in METRICS}


def choose_one(rule: Rule, positive: np.ndarray, scores: np.ndarray) -> dict:
    """``{"threshold": t or None, "validation": rates at t, "reason": why there is none}`` for one class."""
    if positive.all() or not positive.any():
        side = "stated" if positive.size == 0 else "negative" if positive.all() else "positive"
        return {"threshold": None, "validation": None, "reason": f"no {side} images on validation"}
    thresholds, rates = _candidates(positive, scores)
    if rule.metric is None:
        j = rates["sensitivity"] + rates["specificity"] - 1.0
        best = int(np.argmax(j))  # the first, i.e. the highest, of tied thresholds
    else:
        value = rates[rule.metric]
        feasible = np.flatnonzero(np.nan_to_num(value, nan=-1.0) >= rule.target - TARGET_TOLERANCE)
        if feasible.size == 0:
            reached = np.nanmax(value)
            return {
                "threshold": None,
                "validation": None,
                "reason": f"no threshold reaches {rule.text} on validation (the most is {reached:.3f})",
            }
        best = int(feasible[0] if _HIGHEST_FEASIBLE[rule.metric] else feasible[-1])
    return {"threshold": float(thresholds[best]), "validation": _rates_dict(rates, best), "reason": None}


def choose(
    rules: Sequence[Rule], positive: np.ndarray, scores: np.ndarray, class_names, stated: np.ndarray | None = None
) -> dict:
    """``{rule text: {class: choose_one(...)}}`` on the validation columns (``kinds.Kind.columns``), each
    class on the images that state it (``kinds.Kind.stated``; all when None)."""
    stated = np.ones(positive.shape, bool) if stated is None else stated
    return {
        rule.text: {
            name: choose_one(rule, positive[stated[:, c], c], scores[stated[:, c], c])
            for c, name in enumerate(class_names)
        }
        for rule in rules
    }


def thresholds_of(chosen: dict) -> dict[str, dict[str, float | None]]:
    """``{rule: {class: threshold or None}}``: what predict and the export need of ``choose``'s record."""
    return {rule: {name: row["threshold"] for name, row in per_class.items()} for rule, per_class in chosen.items()}


def _verdict(interval: dict | None, value: float | None, target: float) -> str:
    if interval and interval.get("low") is not None:
        if interval["low"] >= target - TARGET_TOLERANCE:
            return "met"
        return "missed" if interval["high"] < target - TARGET_TOLERANCE else "uncertain"
    if value is None:
        return "undefined"
    return "met (no interval)" if value >= target - TARGET_TOLERANCE else "missed (no interval)"
