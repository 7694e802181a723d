"""The loss against a NumPy float64 reference, and class weights against scikit-learn."""

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from lungjax import step
from lungjax.train import class_weights


def reference_loss(logits, labels, weights, smoothing=0.0, gamma=0.0):
    """Keras' class-weighted categorical cross-entropy (sum over batch size), float64."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    num_classes = logits.shape[1]
    targets = np.eye(num_classes)[labels] * (1 - smoothing) + smoothing / num_classes
    focal = (1 - np.exp(log_p)) ** gamma
    per_example = -(targets * focal * log_p).sum(axis=1) * weights[labels]
    return per_example.mean()


@pytest.mark.parametrize("smoothing,gamma", [(0.0, 0.0), (0.1, 0.0), (0.0, 2.0), (0.1, 1.5)])
def test_loss_matches_float64_reference(smoothing, gamma):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(32, 6)) * 3
    labels = rng.integers(0, 6, size=32)
    weights = rng.uniform(0.5, 3.0, size=6)
    got = step.weighted_cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(labels),
                                      jnp.asarray(weights, jnp.float32), label_smoothing=smoothing,
                                      focal_gamma=gamma)
    np.testing.assert_allclose(float(got), reference_loss(logits, labels, weights, smoothing, gamma), rtol=1e-5)


def test_masked_loss_ignores_padding():
    rng = np.random.default_rng(1)
    logits, labels = rng.normal(size=(8, 6)), rng.integers(0, 6, size=8)
    weights = np.ones(6)
    mask = np.arange(8) < 5
    got = step.weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weights),
                                      mask=jnp.asarray(mask))
    np.testing.assert_allclose(float(got), reference_loss(logits[:5], labels[:5], weights), rtol=1e-5)


class _Config:
    def __init__(self, class_weights):
        self.class_weights = class_weights


def test_balanced_weights_equal_sklearn():
    counts = [4215, 1093, 3955, 4844, 2194, 3260]
    labels = np.repeat(np.arange(6), counts)
    expected = compute_class_weight("balanced", classes=np.arange(6), y=labels)
    np.testing.assert_allclose(class_weights(_Config("balanced"), counts), expected, rtol=1e-12)
    np.testing.assert_array_equal(class_weights(_Config("none"), counts), np.ones(6))


def test_bad_class_weights_are_refused():
    with pytest.raises(ValueError, match="class_weights"):
        class_weights(_Config([1.0, 2.0]), [10] * 6)
