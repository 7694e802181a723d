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
    distance above which an input is called unlike the training films."""

    mean: np.ndarray  # (D,)
    covariance: np.ndarray  # (D, D)
    shrinkage: float
    threshold: float
    false_alarm_rate: float
    n_train: int
    n_validation: int

    def score(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance (N,) of each row of (N, D) ``features`` to the training films."""
        centred = np.atleast_2d(np.asarray(features, np.float64)) - self.mean
        factor = np.linalg.cholesky(self.covariance)
        whitened = np.linalg.solve(factor, centred.T)
        return np.sqrt((whitened**2).sum(axis=0))

    def is_unlike(self, features: np.ndarray) -> np.ndarray:
        """(N,) bool: the distance is above the validation threshold."""
        return self.score(features) > self.threshold

    def to_dict(self) -> dict:
        """The fitted record as JSON-ready data (for the export's manifest)."""
        return {
            "method": "Mahalanobis distance of penultimate features, Ledoit-Wolf shrunk covariance",
            "mean": self.mean.tolist(),
            "covariance": self.covariance.tolist(),
            "shrinkage": self.shrinkage,
            "threshold": self.threshold,
            "false_alarm_rate": self.false_alarm_rate,
            "threshold_chosen_on": "validation",
            "n_train": self.n_train,
            "n_validation": self.n_validation,
        }

    @classmethod
    def from_dict(cls, record: dict) -> OutOfDistribution:
        mean, covariance = np.asarray(record["mean"], np.float64), np.asarray(record["covariance"], np.float64)
        if covariance.shape != (mean.size, mean.size):
            raise ValueError(
                f"out-of-distribution record: covariance {covariance.shape} does not fit mean {mean.shape}"
            )
        return cls(
            mean,
            covariance,
            float(record["shrinkage"]),
            float(record["threshold"]),
            float(record["false_alarm_rate"]),
            int(record["n_train"]),
            int(record["n_validation"]),
        )


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
