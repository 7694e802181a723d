"""The inference function as ``jax.export`` bytes: the model's weights baked in, the batch left symbolic.

The function is ``inference.make_predict_fn``'s without test-time crops and with the features: the
same pixel scaling (``models.images_to_input``), the model in inference mode, the float32 softmax or
sigmoid, and the pooled penultimate features beside them (for the out-of-distribution score). It is
lowered for CPU and CUDA at once, so one file serves both; the batch dimension is a symbol, so
any batch size runs (each new size compiles once where it is called).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from lungjax import models

PLATFORMS = ("cpu", "cuda")
BATCH_SYMBOL = "batch"


def inference_function(graphdef: nnx.GraphDef, model_state: dict, dtype, *, multi_label: bool):
    """``uint8 (N, S, S, 1) -> (float32 (N, C) probabilities, float32 (N, D) features)``, the features
    being the pooled penultimate ones the out-of-distribution score reads (``features_and_logits``),
    closing over host copies of the weights (constants once exported)."""
    state = jax.device_get(model_state)
    to_probabilities = jax.nn.sigmoid if multi_label else functools.partial(jax.nn.softmax, axis=-1)

    def probabilities_and_features(images):
        model = nnx.merge(graphdef, state["params"], state["batch_stats"])
        features, logits = model.features_and_logits(models.images_to_input(images, dtype), train=False)
        return to_probabilities(logits.astype(jnp.float32)), features.astype(jnp.float32)

    return probabilities_and_features


def serialize(fn, image_size: int) -> bytes:
    """``fn`` exported for ``PLATFORMS`` on uint8 ``(batch, image_size, image_size, 1)`` inputs."""
    (batch,) = jax.export.symbolic_shape(BATCH_SYMBOL)
    spec = jax.ShapeDtypeStruct((batch, image_size, image_size, 1), jnp.uint8)
    return bytes(jax.export.export(jax.jit(fn), platforms=PLATFORMS)(spec).serialize())
