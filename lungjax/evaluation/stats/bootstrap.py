"""The patient bootstrap: several films of one patient are not independent, so intervals resample
patients, never images; replicates are image weights, scored in bounded blocks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

CI_LEVEL = 0.95
# Bootstrap replicates are scored in blocks of at most this many (replicate, image) weights
# (32 MB of float64), so memory stays bounded however large the test set is.
BOOTSTRAP_BLOCK_ELEMENTS = 4_000_000


def patient_bootstrap_weights(
    patient_index: np.ndarray, n_patients: int, n_draws: int, rng: np.random.Generator
) -> np.ndarray:
    """Image weights (n_draws, N): how often each image's patient was drawn in each replicate.

    Drawing ``n_patients`` patients with replacement and giving every film of a drawn patient the
    patient's draw count is the same as resampling whole patients; weights avoid materialising
    the resampled index sets.
    """
    draws = rng.integers(0, n_patients, size=(n_draws, n_patients))
    offsets = np.arange(n_draws)[:, None] * n_patients
    patient_counts = np.bincount((draws + offsets).ravel(), minlength=n_draws * n_patients)
    return patient_counts.reshape(n_draws, n_patients)[:, patient_index].astype(np.float64)


def interval(values: np.ndarray) -> dict[str, float | int | None]:
    """Percentile interval over the replicates where the metric is defined."""
    used = values[~np.isnan(values)]
    if used.size == 0:
        return {"low": None, "high": None, "n_used": 0}
    tail = 100.0 * (1.0 - CI_LEVEL) / 2.0
    low, high = np.percentile(used, [tail, 100.0 - tail])
    return {"low": float(low), "high": float(high), "n_used": int(used.size)}


def bootstrap_replicates(
    replicate: Callable[[np.ndarray], dict[str, np.ndarray]], patient_ids: np.ndarray, n_bootstrap: int, seed: int
) -> dict[str, np.ndarray]:
    """``replicate(weights)`` over ``n_bootstrap`` patient resamples, each key's values stacked.

    ``weights`` is a (B, N) block of image weights (``patient_bootstrap_weights``); blocks hold at
    most ``BOOTSTRAP_BLOCK_ELEMENTS`` weights, which bounds memory, and draw from one generator in
    order, so the replicates do not depend on the block size.
    """
    _, patient_index = np.unique(patient_ids, return_inverse=True)
    n_patients = int(patient_index.max()) + 1
    rng = np.random.default_rng(seed)
    block = max(1, BOOTSTRAP_BLOCK_ELEMENTS // len(patient_index))
    blocks = [
        replicate(patient_bootstrap_weights(patient_index, n_patients, min(block, n_bootstrap - start), rng))
        for start in range(0, n_bootstrap, block)
    ]
    return {key: np.concatenate([b[key] for b in blocks]) for key in blocks[0]}
