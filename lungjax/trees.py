"""Nested mappings as flat keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``): how configs, saved configs and
model weights are compared by name."""

from __future__ import annotations

from typing import Any


def flatten(tree, separator: str = ".", prefix: str = "") -> dict[str, Any]:
    """Descends every mapping (dicts, ConfigDicts); anything else, lists included, is a leaf."""
    flat = {}
    for key, value in tree.items():
        if hasattr(value, "items"):
            flat.update(flatten(value, separator, f"{prefix}{key}{separator}"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
