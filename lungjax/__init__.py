"""lungjax: a JAX/Flax training engine for chest radiographs (NIH ChestX-ray14)."""

__version__ = "0.1.0"
