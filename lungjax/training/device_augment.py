"""The training augmentation applied inside the jitted step: a batched bilinear gather and intensity change.

The host path (``lungjax.data.augment``: one OpenCV warp per image, then ``convertScaleAbs``) costs
the host most of its CPU per image; here the host only decodes, and each record's transform, drawn
on the host from the same RNG in the same order, arrives with the batch as arrays. The arithmetic
mirrors OpenCV's: output->input matrix, bilinear interpolation, edge pixels repeated outside the image
(``BORDER_REPLICATE``), rounding to whole grey levels after the warp, contrast about the warped
image's mean, brightness, absolute value and saturation to [0, 255]. Only OpenCV's fixed-point
interpolation (1/32-pixel coordinates, 15-bit weights) is not reproduced, so pixels can differ by
a grey level where a value lies near a rounding boundary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def warp(images: jax.Array, matrices: jax.Array, out_size: int) -> jax.Array:
    """``(N, H, W, 1)`` uint8 and ``(N, 2, 3)`` output->input matrices -> ``(N, out, out)`` float32
    grey levels, bilinear with edge replication, rounded to whole levels as OpenCV's uint8 output is."""
    n, height, width = images.shape[:3]
    flat = images.reshape(n, height * width).astype(jnp.float32)
    grid = jnp.arange(out_size, dtype=jnp.float32)
    ys, xs = grid[:, None], grid[None, :]
    m = matrices.astype(jnp.float32)[:, :, :, None, None]  # (N, 2, 3, 1, 1)
    x = m[:, 0, 0] * xs + m[:, 0, 1] * ys + m[:, 0, 2]  # (N, out, out)
    y = m[:, 1, 0] * xs + m[:, 1, 1] * ys + m[:, 1, 2]
    x0, y0 = jnp.floor(x), jnp.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)

    def pixels(row, col):
        index = jnp.clip(row, 0, height - 1) * width + jnp.clip(col, 0, width - 1)
        return jnp.take_along_axis(flat, index.reshape(n, -1), axis=1).reshape(index.shape)

    top = pixels(y0, x0) * (1 - fx) + pixels(y0, x0 + 1) * fx
    bottom = pixels(y0 + 1, x0) * (1 - fx) + pixels(y0 + 1, x0 + 1) * fx
    return jnp.round(top * (1 - fy) + bottom * fy)


def adjust_intensity(levels: jax.Array, intensity: jax.Array) -> jax.Array:
    """``(N, H, W)`` grey levels and ``(N, 2)`` (contrast, brightness in grey levels) -> grey levels:
    contrast about each image's mean, then brightness, saturated to whole levels in [0, 255]."""
    contrast, brightness = intensity[:, 0, None, None], intensity[:, 1, None, None]
    beta = (1.0 - contrast) * jnp.mean(levels, axis=(1, 2), keepdims=True) + brightness
    return jnp.clip(jnp.round(jnp.abs(contrast * levels + beta)), 0.0, 255.0)


def augment(images: jax.Array, matrices: jax.Array, intensity: jax.Array, out_size: int) -> jax.Array:
    """A training batch's augmented images, ``(N, out, out, 1)`` float32 grey levels (as the host
    path's uint8, before ``models.images_to_input`` scales them)."""
    return adjust_intensity(warp(images, matrices, out_size), intensity)[..., None]
