"""Input checks of the evaluation's predictions: a precise message early beats a shape error deep inside a
metric. Single-label: ``labels`` (N,) int, ``probs`` (N, C) rows summing to one. Multi-label: ``labels``
(N, C) 0/1, ``probs`` (N, C) independent sigmoids."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# Softmax outputs in float32 sum to one within ~1e-6; this only rejects logits and unnormalised
# scores.
ROW_SUM_TOLERANCE = 1e-3
PRESENT, ABSENT = 0, 1  # class indices of a finding's binary view


def check_predictions(
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str] | None = None,
    patient_ids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate the evaluation inputs and return them as (int64 labels, float64 probs).

    Raising early with a precise message beats a confusing shape error deep inside a metric.
    ``class_names=None`` takes the number of classes from ``probs``.
    """
    probs = np.asarray(probs)
    if probs.ndim != 2:
        raise ValueError(f"probs must be 2-D (N, C), got shape {probs.shape}")
    num_classes = probs.shape[1] if class_names is None else len(class_names)
    if probs.shape[1] != num_classes:
        raise ValueError(f"probs has {probs.shape[1]} columns but there are {num_classes} class_names")
    labels = check_labels(labels, num_classes)
    if probs.shape[0] != labels.shape[0]:
        raise ValueError(f"length mismatch: {labels.shape[0]} labels but {probs.shape[0]} rows of probs")
    if patient_ids is not None and np.shape(patient_ids) != labels.shape:
        raise ValueError(f"length mismatch: {labels.shape[0]} labels but patient_ids has shape {np.shape(patient_ids)}")
    probs = probs.astype(np.float64)
    if np.isnan(probs).any():
        raise ValueError(f"probs contains NaN in {int(np.isnan(probs).any(axis=1).sum())} rows")
    if (probs < 0).any() or (probs > 1).any():
        raise ValueError("probs must lie in [0, 1]; pass softmax probabilities, not logits")
    row_sums = probs.sum(axis=1)
    if np.abs(row_sums - 1.0).max() > ROW_SUM_TOLERANCE:
        raise ValueError(
            f"rows of probs must sum to 1 (within {ROW_SUM_TOLERANCE}); found sums in "
            f"[{row_sums.min():.4g}, {row_sums.max():.4g}]"
        )
    return labels, probs


def check_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """1-D, non-empty integer labels in [0, num_classes) -> int64 array."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {labels.shape}")
    if labels.size == 0:
        raise ValueError("empty input: labels has no elements")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    out_of_range = (labels < 0) | (labels >= num_classes)
    if out_of_range.any():
        raise ValueError(f"labels out of range [0, {num_classes}): {np.unique(labels[out_of_range]).tolist()}")
    return labels.astype(np.int64)


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


def check_stated(stated: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """A masked task's ``label_mask`` (N, C), 1 where the source states the entry, as bool; every entry
    stated when None (NIH's tasks state every finding of every image)."""
    if stated is None:
        return np.ones(shape, bool)
    stated = np.asarray(stated)
    if stated.shape != shape:
        raise ValueError(f"label_mask must have the labels' shape {shape}, got {stated.shape}")
    if ((stated != 0) & (stated != 1)).any():
        raise ValueError(
            f"label_mask must be 0 or 1, found {np.unique(stated[(stated != 0) & (stated != 1)]).tolist()}"
        )
    return stated.astype(bool)


def binary_view(positive: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One finding as a two-class single-label problem: labels (N,) with PRESENT/ABSENT, probs (N, 2)."""
    return np.where(positive, PRESENT, ABSENT), np.stack([prob, 1.0 - prob], axis=1)


def check_thresholds(thresholds: Mapping[str, float], class_names: Sequence[str]) -> np.ndarray:
    """Thresholds dict -> array in class order; every class exactly once, finite values."""
    missing = [name for name in class_names if name not in thresholds]
    unknown = [name for name in thresholds if name not in class_names]
    if missing or unknown:
        raise ValueError(f"thresholds must name every class: missing {missing}, unknown {unknown}")
    values = np.array([thresholds[name] for name in class_names], dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"thresholds must be finite, got {dict(thresholds)}")
    return values


def check_finding_thresholds(thresholds: Mapping[str, float | None], class_names: Sequence[str]) -> np.ndarray:
    """Thresholds in finding order, every finding named once; None (no threshold) becomes NaN."""
    missing = [name for name in class_names if name not in thresholds]
    unknown = [name for name in thresholds if name not in class_names]
    if missing or unknown:
        raise ValueError(f"thresholds must name every class: missing {missing}, unknown {unknown}")
    chosen = [name for name in class_names if thresholds[name] is not None]
    values = check_thresholds({name: thresholds[name] for name in chosen}, chosen) if chosen else np.empty(0)
    out = np.full(len(class_names), np.nan)
    out[[class_names.index(name) for name in chosen]] = values
    return out
