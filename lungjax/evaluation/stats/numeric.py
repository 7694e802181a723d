"""Two conventions every statistic shares: 0/0 is NaN (never a warning), and NaN is None in a report
(JSON has no NaN)."""

from __future__ import annotations

import numpy as np


def divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise ratio that is NaN (not a warning) where the denominator is zero."""
    numerator, denominator = np.broadcast_arrays(np.asarray(numerator, np.float64), np.asarray(denominator, np.float64))
    return np.divide(numerator, denominator, out=np.full(numerator.shape, np.nan), where=denominator > 0)


def optional_float(value: float) -> float | None:
    """NaN -> None and NumPy scalar -> float, so the report is valid JSON."""
    return None if np.isnan(value) else float(value)
