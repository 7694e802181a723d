"""Temperature scaling: one temperature for the six classes' softmax, one per finding for the 14 sigmoids.

NumPy only, so that the standalone predictor (``lungjax.serve``) applies the very formula evaluation
fitted. The temperature divides the model's log-odds, recovered from the probabilities it wrote:
``log p`` for a softmax (equal to the logits up to a per-row constant, which softmax ignores) and
``log(p / (1 - p))`` for a sigmoid. With test-time crops the probabilities are a mean over views
and these are the log-odds of that mean. Probabilities are clipped to float32's resolution first
(a float32 sigmoid reaches 1.0 at a logit of about 17), so a saturated output stays finite.

Fitting minimises the validation negative log-likelihood over log T by golden-section search on
``[log MIN_TEMPERATURE, log MAX_TEMPERATURE]``: the NLL is convex in 1/T, hence unimodal in log T.
"""

from __future__ import annotations

import math

import numpy as np

MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
SEARCH_TOLERANCE = 1e-7  # on log T: the fitted T is within about 1e-7 relative of the optimum
EPS = float(np.finfo(np.float32).eps)
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def log_odds(probs: np.ndarray, multi_label: bool) -> np.ndarray:
    """(N, C) probabilities -> the log-odds a temperature divides (see the module docstring)."""
    p = np.clip(np.asarray(probs, np.float64), EPS, 1.0 - EPS)
    return np.log(p / (1.0 - p)) if multi_label else np.log(p)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def apply(probs: np.ndarray, temperatures: np.ndarray | list[float], multi_label: bool) -> np.ndarray:
    """Calibrated probabilities: ``softmax(log p / T)`` (one T), or ``sigmoid(logit p / T_c)`` per finding."""
    temperatures = np.asarray(temperatures, np.float64)
    z = log_odds(probs, multi_label)
    if multi_label:
        return 1.0 / (1.0 + np.exp(-z / temperatures))
    return _softmax(z / temperatures[0])


def _nll_single(z: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    scaled = z / temperature
    top = scaled.max(axis=1)
    log_norm = top + np.log(np.exp(scaled - top[:, None]).sum(axis=1))
    return float((log_norm - scaled[np.arange(len(labels)), labels]).mean())


def _nll_binary(z: np.ndarray, positive: np.ndarray, temperature: float) -> float:
    scaled = z / temperature
    # -log sigmoid(s) for positives, -log sigmoid(-s) for negatives, both as logaddexp(0, -+s)
    return float(np.logaddexp(0.0, np.where(positive, -scaled, scaled)).mean())


def _golden_section(nll) -> float:
    """The temperature minimising ``nll(T)`` over log T in the allowed range."""
    low, high = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    a, b = high - _GOLDEN * (high - low), low + _GOLDEN * (high - low)
    fa, fb = nll(math.exp(a)), nll(math.exp(b))
    while high - low > SEARCH_TOLERANCE:
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - _GOLDEN * (high - low)
            fa = nll(math.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + _GOLDEN * (high - low)
            fb = nll(math.exp(b))
    return math.exp((low + high) / 2.0)


def fit(
    labels: np.ndarray, probs: np.ndarray, class_names, multi_label: bool, stated: np.ndarray | None = None
) -> dict:
    """Temperatures fitted on validation predictions, with the reason for each one left at 1.

    Returns ``{"temperatures": [T] or [T_c per finding], "not_fitted": {name: reason}, "at_bound":
    [names]}``. A finding without positives or without negatives on validation has no optimum (the
    NLL falls as T goes to 0), so its temperature stays 1 with the reason. A fit that lands on a
    bound of the search range is named in ``at_bound``: the true optimum may lie beyond it. With
    ``stated`` (N, C), a masked task's ``label_mask``, each finding is fitted on the images that state it.
    """
    labels = np.asarray(labels)
    z = log_odds(probs, multi_label)
    bounds = (MIN_TEMPERATURE, MAX_TEMPERATURE)
    if not multi_label:
        t = _golden_section(lambda temperature: _nll_single(z, labels.astype(np.int64), temperature))
        at_bound = ["all classes"] if any(math.isclose(t, b, rel_tol=1e-5) for b in bounds) else []
        return {"temperatures": [t], "not_fitted": {}, "at_bound": at_bound}
    temperatures, not_fitted, at_bound = [], {}, []
    stated = np.ones(labels.shape, bool) if stated is None else np.asarray(stated).astype(bool)
    for c, name in enumerate(class_names):
        positive, column = labels[stated[:, c], c].astype(bool), z[stated[:, c], c]
        if positive.all() or not positive.any():
            temperatures.append(1.0)
            side = "stated" if positive.size == 0 else "negative" if positive.all() else "positive"
            not_fitted[name] = f"no {side} validation images"
            continue
        t = _golden_section(
            lambda temperature, column=column, positive=positive: _nll_binary(column, positive, temperature)
        )
        temperatures.append(t)
        if any(math.isclose(t, b, rel_tol=1e-5) for b in bounds):
            at_bound.append(name)
    return {"temperatures": temperatures, "not_fitted": not_fitted, "at_bound": at_bound}
