"""What a model's probabilities decide for one image, given what was fitted on validation.

Pure Python over NumPy rows, importing nothing heavy, so that ``--mode predict`` and the standalone
predictor (``lungjax.serve``) apply one rule: a class is called at an operating point when its
uncalibrated probability is at least that point's threshold; a class without a threshold there (its
target was unreachable on validation) is never called at it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def called(
    probs: Sequence[float], thresholds: Mapping[str, Mapping[str, float | None]], class_names: Sequence[str]
) -> dict[str, list[str]]:
    """``{operating point: [class names called]}`` for one image's probabilities."""
    return {
        rule: [
            name
            for name, p in zip(class_names, probs, strict=True)
            if per_class.get(name) is not None and p >= per_class[name]
        ]
        for rule, per_class in thresholds.items()
    }
