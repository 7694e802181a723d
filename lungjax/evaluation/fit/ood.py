"""Is an input unlike the training films? The Mahalanobis distance of its penultimate features to the
training set's, with a threshold chosen on validation.

NumPy only, so that the standalone predictor can import it and apply the very record that was fitted.

* The covariance is Ledoit-Wolf shrunk towards a scaled identity (Ledoit and Wolf 2004, the closed form
  scikit-learn's ``LedoitWolf`` computes): penultimate features have hundreds of dimensions and the
  sample covariance of a few thousand films is ill-conditioned or singular, so its inverse would
  amplify noise along the directions the training films happen not to vary in. The shrinkage weight
  is estimated from the data, so there is no ridge constant to tune.
* The threshold is the ``1 - false_alarm_rate`` quantile of the distances of the validation films
  (films the fit did not see): an in-distribution film is then flagged at about the chosen rate.
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass

import numpy as np

DEFAULT_FALSE_ALARM_RATE = 0.05


def ledoit_wolf(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(mean, shrunk covariance, shrinkage) of (N, D) features, the maximum-likelihood covariance
    (divided by N) shrunk towards ``mu I`` with ``mu`` its mean eigenvalue."""
    x = np.asarray(features, np.float64)
    n, d = x.shape
    mean = x.mean(axis=0)
    centred = x - mean
    sample = centred.T @ centred / n
    mu = np.trace(sample) / d
    delta = ((sample - mu * np.eye(d)) ** 2).sum() / d
    squared = centred**2
    beta = ((squared.T @ squared).sum() / n - (sample**2).sum()) / (d * n)
    shrinkage = 0.0 if delta == 0 else float(min(beta, delta) / delta)
    covariance = (1.0 - shrinkage) * sample
    covariance[np.diag_indices(d)] += shrinkage * mu
    return mean, covariance, shrinkage


@dataclass(frozen=True)
class OutOfDistribution:
    """A fitted out-of-distribution score: the training features' mean and shrunk covariance, and the
    distance above which an input is called unlike the training films.

    An export stores it in two parts (``bundle_format``): the arrays (``to_npz``: the mean and the
    covariance, float64, too large for readable JSON at thousands of features) and the scalars
    (``summary``, in the manifest, where a person reads the threshold); ``from_parts`` joins them."""

    mean: np.ndarray  # (D,)
    covariance: np.ndarray  # (D, D)
    shrinkage: float
    threshold: float
    false_alarm_rate: float
    n_train: int
    n_validation: int

    @functools.cached_property
    def _cholesky(self) -> np.ndarray:
        """The covariance's lower Cholesky factor, computed once per record (D^3 / 3 at D = 2048 is not free)."""
        return np.linalg.cholesky(self.covariance)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance (N,) of each row of (N, D) ``features`` to the training films."""
        centred = np.atleast_2d(np.asarray(features, np.float64)) - self.mean
        whitened = np.linalg.solve(self._cholesky, centred.T)
        return np.sqrt((whitened**2).sum(axis=0))

    def is_unlike(self, features: np.ndarray) -> np.ndarray:
        """(N,) bool: the distance is above the validation threshold."""
        return self.score(features) > self.threshold

    def summary(self) -> dict:
        """The scalars and what they mean, JSON-ready (the export's manifest)."""
        return {
            "method": "Mahalanobis distance of the penultimate features to the training films', Ledoit-Wolf "
            "shrunk covariance",
            "score": "sqrt((f - mean)^T covariance^-1 (f - mean)) for the pooled features f the model gives",
            "feature_dimensions": int(self.mean.size),
            "shrinkage": self.shrinkage,
            "threshold": self.threshold,
            "false_alarm_rate": self.false_alarm_rate,
            "threshold_chosen_on": f"validation: the {1 - self.false_alarm_rate:g} quantile of its films' distances",
            "n_train": self.n_train,
            "n_validation": self.n_validation,
        }

    def to_npz(self) -> bytes:
        """The arrays as an uncompressed ``.npz`` (float64 ``mean`` and ``covariance``; no pickled objects)."""
        buffer = io.BytesIO()
        np.savez(buffer, mean=self.mean, covariance=self.covariance)
        return buffer.getvalue()

    @classmethod
    def from_parts(cls, summary: dict, npz: bytes) -> OutOfDistribution:
        """The record ``summary`` and ``to_npz`` wrote; a ValueError in one line for arrays or scalars that
        cannot be one (wrong shapes, non-finite values, a covariance that is not positive definite)."""
        try:
            with np.load(io.BytesIO(npz)) as arrays:  # NumPy refuses pickled objects unless allowed
                mean, covariance = np.asarray(arrays["mean"], np.float64), np.asarray(arrays["covariance"], np.float64)
        except (OSError, ValueError, KeyError, EOFError) as err:
            raise ValueError(f"not the mean and covariance as .npz ({type(err).__name__}: {err})") from err
        if mean.ndim != 1 or covariance.shape != (mean.size, mean.size):
            raise ValueError(f"covariance {covariance.shape} does not fit mean {mean.shape}")
        if mean.size != summary.get("feature_dimensions"):
            raise ValueError(f"{mean.size} features, the summary says {summary.get('feature_dimensions')}")
        if not (np.isfinite(mean).all() and np.isfinite(covariance).all()):
            raise ValueError("the mean or the covariance holds a value that is not finite")
        threshold, rate = summary.get("threshold"), summary.get("false_alarm_rate")
        if not (_is_number(threshold) and threshold >= 0 and _is_number(rate) and 0.0 < rate < 1.0):
            raise ValueError(f"threshold {threshold!r} and false_alarm_rate {rate!r}: not a distance and a rate")
        for key in ("shrinkage", "n_train", "n_validation"):
            if not _is_number(summary.get(key)):
                raise ValueError(f"{key} is {summary.get(key)!r}, not a number")
        record = cls(
            mean,
            covariance,
            float(summary["shrinkage"]),
            float(threshold),
            float(rate),
            int(summary["n_train"]),
            int(summary["n_validation"]),
        )
        try:
            record._cholesky  # noqa: B018  (computed now so that a bad covariance is refused before the first image)
        except np.linalg.LinAlgError as err:
            raise ValueError("the covariance is not positive definite") from err
        return record


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fit(
    train_features: np.ndarray, validation_features: np.ndarray, false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE
) -> OutOfDistribution:
    """The score fitted on the training films' features, thresholded on the validation films'."""
    train = np.asarray(train_features, np.float64)
    validation = np.asarray(validation_features, np.float64)
    if train.ndim != 2 or validation.ndim != 2 or train.shape[1] != validation.shape[1]:
        raise ValueError(f"features must be (N, D) with one D, got {train.shape} and {validation.shape}")
    if len(train) < 2 or len(validation) < 1:
        raise ValueError(f"need at least 2 training and 1 validation films, got {len(train)} and {len(validation)}")
    if not 0.0 < false_alarm_rate < 1.0:
        raise ValueError(f"false_alarm_rate must lie in (0, 1), got {false_alarm_rate}")
    mean, covariance, shrinkage = ledoit_wolf(train)
    unfitted = OutOfDistribution(mean, covariance, shrinkage, np.inf, false_alarm_rate, len(train), len(validation))
    threshold = float(np.quantile(unfitted.score(validation), 1.0 - false_alarm_rate))
    return OutOfDistribution(mean, covariance, shrinkage, threshold, false_alarm_rate, len(train), len(validation))
