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


def with_defaults(tree: dict, defaults: dict) -> dict:
    """``tree`` with every key of ``defaults`` that it lacks, at any depth: its own keys keep their values
    and order, the added ones follow them. How a config saved by an older lungjax gains the keys it
    did not know (``lungjax.config.base.complete``)."""
    out = dict(tree)
    for key, default in defaults.items():
        if key not in out:
            out[key] = default
        elif hasattr(out[key], "items") and hasattr(default, "items"):
            out[key] = with_defaults(out[key], default)
    return out
