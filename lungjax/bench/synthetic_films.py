"""Film-sized synthetic radiographs for the decode benchmark and its test (no flags: importable anywhere)."""

from __future__ import annotations

import numpy as np


def synthetic_film(height: int = 2500, width: int = 2048, seed: int = 0) -> np.ndarray:
    """A film-sized 8-bit image with structure at every scale: smooth anatomy-like bands, a dense disc,
    rib-like edges and noise, so JPEG compresses it as it does a radiograph, not as a flat field."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    body = 120 + 60 * np.sin(x / 180) * np.cos(y / 240) + 40 * ((x - width / 2) ** 2 + (y - height / 2) ** 2 < 6e5)
    ribs = 20 * (np.sin(y / 35 + 0.3 * np.sin(x / 200)) > 0.6)
    film = body + ribs + rng.normal(0, 8, (height, width))
    return np.clip(film, 0, 255).astype(np.uint8)
