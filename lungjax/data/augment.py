"""Training augmentation: a random affine warp that also resizes, and a random intensity change.

One OpenCV warp per image does the resize from the stored size too, so each image is resampled once.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Ranges of random transforms, with Keras ``ImageDataGenerator`` meanings.

    rotation in degrees (uniform ±), shift as a fraction of the size (±), shear angle in degrees
    (±; Keras' ``shear_range`` is in degrees), zoom factor range 1±zoom drawn per axis, brightness
    as a fraction of full scale (±), contrast as a factor range 1±contrast. Borders repeat the edge
    pixel (Keras' ``fill_mode="nearest"``). ``horizontal_flip`` mirrors half of the images; only the
    ``chexnet`` preset does, because its paper did: a mirrored chest puts the heart on the right,
    which is itself a finding (dextrocardia), so lungjax's own presets never flip.
    """

    rotation: float = 0.0
    shift: float = 0.0
    shear: float = 0.0
    zoom: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    horizontal_flip: bool = False


AUGMENTATIONS = {
    "none": Augmentation(),
    "light": Augmentation(rotation=5.0, shift=0.05, zoom=0.05, brightness=0.1, contrast=0.1),
    # The reference's ImageDataGenerator(rotation_range=30, width/height_shift_range=0.2,
    # shear_range=0.2, zoom_range=0.3).
    "seed": Augmentation(rotation=30.0, shift=0.2, shear=0.2, zoom=0.3),
    # CheXNet (Rajpurkar et al. 2017): "random horizontal flipping", nothing else.
    "chexnet": Augmentation(horizontal_flip=True),
}


def augmentation(name: str) -> Augmentation:
    if name not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {sorted(AUGMENTATIONS)}, got {name!r}")
    return AUGMENTATIONS[name]


def affine_matrix(aug: Augmentation, in_size: int, out_size: int, rng: np.random.Generator | None) -> np.ndarray:
    """2x3 matrix mapping output pixel coordinates to input coordinates (resize + random affine).

    The linear part is ``scale * rotation @ shearing @ diag(zoom)``; composed in Python floats
    (a few small NumPy products cost ~50 us a record, more than the warp's share of the budget).
    """
    scale = in_size / out_size
    a, b, c, d = scale, 0.0, 0.0, scale  # linear = [[a, b], [c, d]]
    shift_x = shift_y = 0.0
    if rng is not None:
        theta = math.radians(rng.uniform(-aug.rotation, aug.rotation))
        shear = math.radians(rng.uniform(-aug.shear, aug.shear))
        zoom_x, zoom_y = rng.uniform(1 - aug.zoom, 1 + aug.zoom, size=2)
        cos_t, sin_t = math.cos(theta), math.sin(theta)
        # rotation @ shearing = [[cos, -cos sin_s - sin cos_s], [sin, -sin sin_s + cos cos_s]]
        sin_s, cos_s = math.sin(shear), math.cos(shear)
        r00, r01 = cos_t, -cos_t * sin_s - sin_t * cos_s
        r10, r11 = sin_t, -sin_t * sin_s + cos_t * cos_s
        a, b = scale * r00 * float(zoom_x), scale * r01 * float(zoom_y)
        c, d = scale * r10 * float(zoom_x), scale * r11 * float(zoom_y)
        shift_x, shift_y = (float(v) * in_size for v in rng.uniform(-aug.shift, aug.shift, size=2))
        if aug.horizontal_flip and rng.random() < 0.5:  # drawn last: the other presets' draws are unchanged
            a, c = -a, -c  # output x about the centre -> -x
    centre_in, centre_out = (in_size - 1) / 2, (out_size - 1) / 2
    return np.array(
        [[a, b, centre_in + shift_x - (a + b) * centre_out], [c, d, centre_in + shift_y - (c + d) * centre_out]]
    )


def warp(image: np.ndarray, matrix: np.ndarray, out_size: int) -> np.ndarray:
    """Applies an output->input affine ``matrix`` to a 2-D uint8 image."""
    return cv2.warpAffine(
        image,
        matrix,
        (out_size, out_size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )


def draw_intensity(aug: Augmentation, rng: np.random.Generator) -> tuple[float, float]:
    """``(contrast factor, brightness in grey levels)``, drawn in that order."""
    contrast = rng.uniform(1 - aug.contrast, 1 + aug.contrast)
    brightness = rng.uniform(-aug.brightness, aug.brightness) * 255.0
    return float(contrast), float(brightness)


def adjust_intensity(
    image: np.ndarray, contrast: float, brightness: float, out: np.ndarray | None = None
) -> np.ndarray:
    """Contrast about the image mean, then brightness; saturates to uint8 (into ``out``)."""
    beta = (1.0 - contrast) * cv2.mean(image)[0] + brightness
    return cv2.convertScaleAbs(image, out, alpha=contrast, beta=beta)


def draw(aug: Augmentation, in_size: int, out_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One record's random transform: the 2x3 output->input matrix and ``(contrast, brightness)``.

    The only place the draws are made, in one order, for the host path (``augment_image``) and the
    device path (the train step's warp) alike: the same records get the same transforms either way.
    Without an intensity change in the preset nothing more is drawn and the pair is the identity (1, 0).
    """
    matrix = affine_matrix(aug, in_size, out_size, rng)
    intensity = draw_intensity(aug, rng) if aug.brightness or aug.contrast else (1.0, 0.0)
    return matrix, np.array(intensity)


def augment_image(image: np.ndarray, aug: Augmentation, out_size: int, rng: np.random.Generator) -> np.ndarray:
    """2-D uint8 at any size -> (out_size, out_size, 1) uint8, warped and (if the preset says so) relit."""
    matrix, (contrast, brightness) = draw(aug, image.shape[0], out_size, rng)
    image = warp(image, matrix, out_size)
    if aug.brightness or aug.contrast:
        adjust_intensity(image, contrast, brightness, out=image)  # in place: no second allocation
    return image[..., None]
