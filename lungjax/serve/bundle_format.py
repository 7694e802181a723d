"""The exported bundle's format: its name, version and files, the one definition that ``--mode export``
writes (:mod:`lungjax.export`) and ``python -m lungjax.serve`` reads.

``FORMAT_VERSION`` changes whenever a file or a manifest key changes meaning; a reader refuses a
version it does not know. Here, in the serving package, because serve must not import the export
(which needs the training stack's model code) while the export may import this small module.
"""

from __future__ import annotations

FORMAT = "lungjax-export"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
CONFIG_FILE = "config.json"
PARITY_FILE = "parity.json"
MODEL_FILES = {"float32": "model.jax", "bfloat16": "model_bf16.jax"}  # precision -> file
PRECISIONS = tuple(MODEL_FILES)
