"""The config schema and its validation."""

# Config files written for earlier lungjax versions import the schema from here.
from lungjax.config.base import base_config

__all__ = ["base_config"]
