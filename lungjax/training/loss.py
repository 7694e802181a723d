"""The training losses: class-weighted cross-entropy (one class per image) and positive-weighted
binary cross-entropy per finding (multi-label, optionally masked to the entries a source states),
each with label smoothing and an optional focal term.

Separate from the step so it can be checked against a NumPy float64 reference on its own.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lungjax.evaluation.stats.class_weights import compute_class_weights


def class_weights(
    config, train_counts: list[int], *, images: int | np.ndarray = 0, multi_label: bool = False
) -> np.ndarray:
    """``balanced``, ``none``, or an explicit list, one number per class.

    Single-label: per-class weights, ``balanced`` being scikit-learn's formula on the training split
    (``train_counts`` images per class). Multi-label: per-finding weights of the positive term,
    ``balanced`` being negatives / positives on the training split (``train_counts`` positives per
    finding of ``images``; a finding without positives gets 1), as in CheXNet's weighted loss. A masked
    task counts stated entries only: ``images`` is then per label the training images that state it,
    and ``train_counts`` the stated positives.
    """
    if config.class_weights == "balanced":
        counts = np.asarray(train_counts)
        if multi_label:
            return np.where(counts > 0, (images - counts) / np.maximum(counts, 1), 1.0).astype(np.float64)
        return compute_class_weights(np.repeat(np.arange(len(counts)), counts), len(counts))
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


def weighted_binary_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    positive_weights: jax.Array,
    *,
    label_smoothing: float = 0.0,
    focal_gamma: float = 0.0,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Per finding, sigmoid binary cross-entropy with a weighted positive term, averaged over examples
    and findings (PyTorch's ``BCEWithLogitsLoss(pos_weight=w)``).

    Per element: ``-(w_c q (1 - p)^gamma log p + (1 - q) p^gamma log(1 - p))`` with ``p = sigmoid(z)``
    and smoothed targets ``q = (1 - eps) y + eps / 2`` (each finding is a two-class problem).
    ``gamma = 0`` is plain cross-entropy; ``gamma > 0`` the focal loss. Always float32. With ``mask``
    (1 where a source states the entry) the mean runs over stated entries only: their sum over their
    count, and 0 for a batch that states none.
    """
    logits = logits.astype(jnp.float32)
    targets = labels.astype(jnp.float32) * (1.0 - label_smoothing) + label_smoothing / 2
    log_p, log_not_p = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
    positive, negative = targets * log_p, (1.0 - targets) * log_not_p
    if focal_gamma:
        positive = positive * (-jnp.expm1(log_p)) ** focal_gamma
        negative = negative * jnp.exp(log_p) ** focal_gamma
    elements = -(positive_weights * positive + negative)
    if mask is None:
        return elements.mean()
    mask = mask.astype(jnp.float32)
    return (elements * mask).sum() / jnp.maximum(mask.sum(), 1.0)
