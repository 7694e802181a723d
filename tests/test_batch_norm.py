"""The hand-written BatchNorm gradient (``models.batch_norm``) against Flax's BatchNorm differentiated by JAX."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lungjax.models import batch_norm
from lungjax.models.resnet import create_model


def assert_close(actual, desired, err_msg=""):
    """Within 1e-5, relative and absolute (scaled by the largest magnitude: BatchNorm's input gradient
    is a difference of large terms, whose rounding is relative to those terms)."""
    scale = max(1.0, float(np.max(np.abs(desired))))
    np.testing.assert_allclose(actual, desired, rtol=1e-5, atol=1e-5 * scale, err_msg=err_msg)


def layers(features, dtype=jnp.float32):
    """Flax's BatchNorm and ours with equal (random, non-trivial) scale, bias and running statistics."""
    made = []
    for cls, extra in ((nnx.BatchNorm, {}), (batch_norm.BatchNorm, {"fewer_passes": True})):
        layer = cls(features, momentum=0.9, epsilon=1.001e-5, dtype=dtype, rngs=nnx.Rngs(0), **extra)
        keys = jax.random.split(jax.random.key(1), 4)
        layer.scale[...] = jax.random.normal(keys[0], (features,))
        layer.bias[...] = jax.random.normal(keys[1], (features,))
        layer.mean[...] = jax.random.normal(keys[2], (features,))
        layer.var[...] = jax.random.uniform(keys[3], (features,), minval=0.5, maxval=2.0)
        made.append(layer)
    return made


def outputs_and_gradients(layer, x, residual, weights, train):
    """The block tail ``relu(bn(x) + residual)`` weighted and summed, its gradients with respect to the
    input, scale and bias, the output and the running statistics after the call."""
    graphdef, params, stats = nnx.split(layer, nnx.Param, nnx.BatchStat)

    def loss(x, params):
        model = nnx.merge(graphdef, params, stats, copy=True)
        y = model(x, use_running_average=not train)
        return jnp.sum(jax.nn.relu(y.astype(jnp.float32) + residual) * weights), (y, nnx.state(model, nnx.BatchStat))

    (_, (y, new_stats)), (dx, dparams) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(x, params)
    return {
        "y": y,
        "mean": new_stats["mean"][...],
        "var": new_stats["var"][...],
        "dx": dx,
        "dscale": dparams["scale"][...],
        "dbias": dparams["bias"][...],
    }


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", [(4, 6, 5, 8), (3, 16)])
def test_fewer_pass_batch_norm_equals_flax_forward_gradients_and_running_statistics(shape, train):
    keys = jax.random.split(jax.random.key(0), 3)
    x = 3.0 * jax.random.normal(keys[0], shape) + 1.5  # an offset mean, as conv outputs have
    residual, weights = jax.random.normal(keys[1], shape), jax.random.normal(keys[2], shape)
    flax_layer, ours = layers(shape[-1])
    expected = outputs_and_gradients(flax_layer, x, residual, weights, train)
    got = outputs_and_gradients(ours, x, residual, weights, train)
    for name in expected:
        assert got[name].dtype == expected[name].dtype, name
        assert_close(got[name], expected[name], name)
    assert np.any(np.asarray(expected["dx"]) != 0)
    if train:  # the running statistics moved towards the batch's
        batch_mean = np.asarray(x).reshape(-1, shape[-1]).mean(0)
        np.testing.assert_allclose(got["mean"], 0.9 * np.asarray(flax_layer.mean[...]) + 0.1 * batch_mean, rtol=1e-5)


def test_fewer_pass_batch_norm_in_bfloat16_keeps_flax_dtypes_and_values():
    shape = (4, 6, 5, 8)
    x = (3.0 * jax.random.normal(jax.random.key(0), shape) + 1.5).astype(jnp.bfloat16)
    residual, weights = jax.random.normal(jax.random.key(1), shape), jax.random.normal(jax.random.key(2), shape)
    flax_layer, ours = layers(shape[-1], jnp.bfloat16)
    expected = outputs_and_gradients(flax_layer, x, residual, weights, True)
    got = outputs_and_gradients(ours, x, residual, weights, True)
    for name in expected:
        assert got[name].dtype == expected[name].dtype, name
        scale = float(np.max(np.abs(np.asarray(expected[name], np.float32))))
        np.testing.assert_allclose(
            np.asarray(got[name], np.float32), np.asarray(expected[name], np.float32), atol=2e-2 * scale, err_msg=name
        )


@pytest.mark.slow  # two ResNet gradients compiled: about 40 s on 2 shared cores
def test_a_resnet_with_fewer_pass_batch_norm_trains_the_same_numbers():
    """Same parameters; train-mode logits, every parameter's gradient and the new running statistics
    within 1e-5 of the model with Flax's BatchNorm."""
    x = jax.random.uniform(jax.random.key(0), (4, 32, 32, 1))
    labels = jnp.arange(4) % 6
    results = []
    for flag in (False, True):
        model = create_model("resnet18", num_classes=6, width=0.125, fewer_pass_batch_norm=flag)
        assert model.stem.bn.fewer_passes == flag and model.stages[3][1].bn2.fewer_passes == flag
        graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)

        def loss(params, graphdef=graphdef, stats=stats):
            model = nnx.merge(graphdef, params, stats, copy=True)
            logits = model(x, train=True)
            log_p = jax.nn.log_softmax(logits)
            return -jnp.mean(jnp.take_along_axis(log_p, labels[:, None], 1)), (logits, nnx.state(model, nnx.BatchStat))

        (_, aux), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        results.append((aux, grads))
    (flax_aux, flax_grads), (our_aux, our_grads) = results
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path((flax_aux, flax_grads)), jax.tree.leaves((our_aux, our_grads)), strict=True
    ):
        assert_close(b, a, jax.tree_util.keystr(path))
