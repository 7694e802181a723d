"""The training loss: class-weighted cross-entropy with label smoothing and an optional focal term.

Separate from the step so it can be checked against a NumPy float64 reference on its own.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lungjax.evaluation import metrics


def class_weights(config, train_counts: list[int]) -> np.ndarray:
    """``balanced`` (scikit-learn's formula on the training split), ``none``, or an explicit list."""
    if config.class_weights == "balanced":
        counts = np.asarray(train_counts)
        return metrics.compute_class_weights(np.repeat(np.arange(len(counts)), counts), len(counts))
    if config.class_weights == "none":
        return np.ones(len(train_counts))
    weights = np.asarray(config.class_weights, dtype=np.float64)
    if weights.shape != (len(train_counts),) or (weights <= 0).any():
        raise ValueError(
            f"config.class_weights must be 'balanced', 'none' or {len(train_counts)} "
            f"positive numbers, got {config.class_weights!r}"
        )
    return weights


def weighted_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    class_weights: jax.Array,
    *,
    label_smoothing: float = 0.0,
    focal_gamma: float = 0.0,
) -> jax.Array:
    """Class-weighted cross-entropy, as Keras computes it with ``class_weight``.

    Per example: ``w[y] * -sum_c q_c (1 - p_c)^gamma log p_c`` with smoothed targets
    ``q = (1 - eps) onehot(y) + eps / C``; then averaged over the examples, not
    normalised by the weights (Keras' ``sum_over_batch_size``). ``gamma = 0`` is plain
    cross-entropy; ``gamma > 0`` is the focal loss. Always float32, whatever the compute dtype.
    """
    num_classes = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    if focal_gamma:
        log_probs = log_probs * (1.0 - jnp.exp(log_probs)) ** focal_gamma
    per_example = -jnp.sum(targets * log_probs, axis=-1) * class_weights[labels]
    return per_example.mean()
