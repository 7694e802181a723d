"""BatchNorm whose training-mode gradient is written out by hand (``jax.custom_vjp``): fewer passes over memory.

On the GPU, BatchNorm's statistics were a third of ResNet-50's step (BENCHMARKS.md), and they are
memory-bound: what counts is how often the activations are read. Forward, Flax's BatchNorm already
takes both moments in one reduction; its autodiff backward, though, differentiates the mean, the
mean of squares and the normalisation separately. By hand, the backward is one combined reduction
(the sums of ``g`` and ``g * x_hat`` over the batch, in one pass) and one elementwise pass for the
input's gradient, into which XLA can fold the ReLU's mask and the residual's addition.

Same parameters, same statistics, same running-average update, same arithmetic forward (Flax's
``_compute_stats`` and ``_normalize`` in the same order and dtypes); evaluation mode is Flax's own
code. Off unless ``fewer_passes`` is set (``config.model.fewer_pass_batch_norm``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx


def _moments(xf: jax.Array, axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """Flax's fast variance: ``E[x]`` and ``max(0, E[x^2] - E[x]^2)`` from one pass, in float32."""
    mean, mean_sq = jnp.mean(xf, axes), jnp.mean(xf * xf, axes)
    return mean, jnp.maximum(0.0, mean_sq - mean * mean)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def normalize_with_batch_statistics(x, scale, bias, epsilon: float, out_dtype):
    """``(y, mean, var)``: ``x`` (N, ..., C) normalised by its own statistics over all axes but the last."""
    return _forward(x, scale, bias, epsilon, out_dtype)[0]


def _forward(x, scale, bias, epsilon, out_dtype):
    axes = tuple(range(x.ndim - 1))
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean, var = _moments(xf, axes)
    inv = jax.lax.rsqrt(var + epsilon)
    y = ((x - mean) * (inv * scale) + bias).astype(out_dtype)  # Flax's _normalize, operation for operation
    return (y, mean, var), (x, mean, inv, scale, bias)


def _backward(epsilon, out_dtype, residuals, cotangents):
    """Gradients of ``y``, ``mean`` and ``var`` given theirs, with ``x_hat = (x - mean) * inv``:
    ``d_bias = sum(g)``, ``d_scale = sum(g * x_hat)`` (one reduction), and
    ``dx = scale * inv * (g - d_bias / n - x_hat * d_scale / n) + (d_mean + 2 d_var (x - mean)) / n``
    (one elementwise pass; the mean's and variance's cotangents are zero in a training step)."""
    del epsilon, out_dtype
    x, mean, inv, scale, bias = residuals
    g, d_mean, d_var = cotangents
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    centred = x.astype(mean.dtype) - mean
    x_hat = centred * inv
    g = g.astype(mean.dtype)
    d_bias, d_scale = jnp.sum(g, axes), jnp.sum(g * x_hat, axes)
    dx = (scale * inv) * (g - d_bias / n - x_hat * (d_scale / n)) + (d_mean + 2.0 * d_var * centred) / n
    return dx.astype(x.dtype), d_scale.astype(scale.dtype), d_bias.astype(bias.dtype)


normalize_with_batch_statistics.defvjp(_forward, _backward)


class BatchNorm(nnx.BatchNorm):
    """``nnx.BatchNorm`` (over the last axis, with scale and bias), whose training mode uses
    ``normalize_with_batch_statistics`` when ``fewer_passes`` is set; a drop-in: same variables."""

    def __init__(self, *args, fewer_passes: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.fewer_passes = fewer_passes

    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        training = (self.use_running_average if use_running_average is None else use_running_average) is False
        if not (self.fewer_passes and training) or mask is not None or self.axis_name is not None:
            return super().__call__(x, use_running_average, mask=mask)
        x, scale, bias = self.promote_dtype((x, self.scale[...], self.bias[...]), dtype=self.dtype)
        out_dtype = jnp.result_type(x, scale, bias) if self.dtype is None else self.dtype
        y, mean, var = normalize_with_batch_statistics(x, scale, bias, self.epsilon, out_dtype)
        mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
        self.mean[...] = self.momentum * self.mean[...] + (1 - self.momentum) * mean
        self.var[...] = self.momentum * self.var[...] + (1 - self.momentum) * var
        return y


def use_fewer_passes(model: nnx.Module, fewer_passes: bool) -> None:
    """Sets ``fewer_passes`` on every ``BatchNorm`` of ``model`` (a model's constructor calls it once)."""
    for _, module in nnx.iter_modules(model):
        if isinstance(module, BatchNorm):
            module.fewer_passes = fewer_passes
