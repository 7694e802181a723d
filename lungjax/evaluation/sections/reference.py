"""The figures of the reference this engine re-implements, which the six-class report sets beside its own."""

from __future__ import annotations


def reference_figures() -> dict:
    """The reference Keras ResNet50's published test figures (per-image split, argmax decisions)."""
    return {
        "accuracy": 0.55,
        "macro_auc": 0.87,
        "per_class": {
            "Cardiomegaly": {"sensitivity": 0.85, "specificity": 0.96},
            "Pneumothorax": {"sensitivity": 0.77, "specificity": 0.86},
        },
    }
