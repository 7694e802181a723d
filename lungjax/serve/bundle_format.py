"""The exported bundle's format: its name, version and files, the one definition that ``--mode export``
writes (:mod:`lungjax.export`) and ``python -m lungjax.serve`` reads.

``FORMAT_VERSION`` changes whenever a file or a manifest key changes meaning; a reader refuses a
version it does not know. Here, in the serving package, because serve must not import the export
(which needs the training stack's model code) while the export may import this small module.

Version 2 seals the manifest: ``manifest_sha256`` is the sha256 of its canonical JSON without that
key (``manifest_sha256``), and the manifest holds the sha256 of every other file of the bundle, so one
digest checked covers the whole bundle and any edit to any file is refused. Version 1 bundles had no
such digest: an edit to their manifest cannot be detected, so they are refused with "export again".
"""

from __future__ import annotations

import hashlib
import json

FORMAT = "lungjax-export"
FORMAT_VERSION = 2
MANIFEST_FILE = "manifest.json"
MANIFEST_DIGEST = "manifest_sha256"  # the manifest's key for its own digest
CONFIG_FILE = "config.json"
PARITY_FILE = "parity.json"
MODEL_FILES = {"float32": "model.jax", "bfloat16": "model_bf16.jax"}  # precision -> file
PRECISIONS = tuple(MODEL_FILES)


def manifest_sha256(manifest: dict) -> str:
    """sha256 of ``manifest`` without its ``MANIFEST_DIGEST`` key, as canonical JSON (keys sorted, no
    spaces, ASCII): the same for every reader whatever the file's layout. A value JSON cannot hold
    (NaN, infinity) raises ValueError."""
    body = {key: value for key, value in manifest.items() if key != MANIFEST_DIGEST}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()
