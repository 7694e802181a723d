"""Parity: each exported file, deserialised from its bytes, against the in-process model on the same images.

The reference is ``inference.make_predict_fn`` (test-time crops 1) on the restored checkpoint, the
code evaluation scores with; the figure is the largest absolute difference of any probability on
the validation images (the first ``max_images`` of them), measured, not assumed. The float32 file
must agree within ``FLOAT32_BOUND``: the same operations in float32 differ by rounding alone. The
bfloat16 file keeps 8 significant bits, so a different fusion or summation order in XLA can move a
probability by a few thousandths: it must agree within ``BFLOAT16_BOUND``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax
import numpy as np

FLOAT32_BOUND = 1e-5
BFLOAT16_BOUND = 1e-2
BOUNDS = {"float32": FLOAT32_BOUND, "bfloat16": BFLOAT16_BOUND}


def measure(
    pairs: dict[str, tuple[bytes, Callable]], batches: Iterable[dict[str, np.ndarray]], max_images: int
) -> dict[str, dict]:
    """``{precision: {"max_abs_difference", "bound", "within", "images"}}`` for ``{precision: (exported
    bytes, in-process images -> probabilities)}`` over padded eval batches (``mask`` marks real rows)."""
    exported = {name: jax.jit(jax.export.deserialize(bytearray(data)).call) for name, (data, _) in pairs.items()}
    worst, seen = dict.fromkeys(pairs, 0.0), 0
    for batch in batches:
        rows = min(int(batch["mask"].sum()), max_images - seen)  # padding rows come last
        if rows <= 0:
            break
        for name, (_, reference) in pairs.items():
            probabilities = exported[name](batch["image"])[0]  # the features beside them are the OOD score's
            difference = np.abs(np.asarray(probabilities) - np.asarray(reference(batch["image"])))
            worst[name] = max(worst[name], float(difference[:rows].max()))
        seen += rows
    return {
        name: {
            "max_abs_difference": worst[name],
            "bound": BOUNDS[name],
            "within": worst[name] <= BOUNDS[name],
            "images": seen,
        }
        for name in pairs
    }
