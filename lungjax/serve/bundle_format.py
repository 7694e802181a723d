"""The exported bundle's format: its name, version and files, the one definition that ``--mode export``
writes (:mod:`lungjax.export`) and ``python -m lungjax.serve`` reads.

``FORMAT_VERSION`` changes whenever a file or a manifest key changes meaning; a reader refuses a
version it does not know. Here, in the serving package, because serve must not import the export
(which needs the training stack's model code) while the export may import this small module.

Version 2 seals the manifest: ``manifest_sha256`` is the sha256 of its canonical JSON without that
key (``manifest_sha256``), and the manifest holds the sha256 of every other file of the bundle, so one
digest checked covers the whole bundle and any edit to any file is refused. Version 1 bundles had no
such digest: an edit to their manifest cannot be detected, so they are refused with "export again".

Version 3 adds the out-of-distribution score: each model file returns the pooled penultimate features
beside the probabilities, ``OOD_FILE`` holds the training films' feature mean and covariance (float64
arrays: at ResNet-50's 2048 features a 32 MiB matrix, which JSON would make four times larger and
unreadable, so it is a file of its own, covered by its sha256 in the manifest), and the manifest's
``out_of_distribution`` section holds the threshold and what it means; ``provenance.training_sources``
names the sources the model was trained on. Version 2 bundles have neither: "export again".
"""

from __future__ import annotations

import hashlib
import json

FORMAT = "lungjax-export"
FORMAT_VERSION = 3
MANIFEST_FILE = "manifest.json"
MANIFEST_DIGEST = "manifest_sha256"  # the manifest's key for its own digest
CONFIG_FILE = "config.json"
PARITY_FILE = "parity.json"
OOD_FILE = "ood.npz"  # the out-of-distribution score's arrays
MODEL_FILES = {"float32": "model.jax", "bfloat16": "model_bf16.jax"}  # precision -> file
PRECISIONS = tuple(MODEL_FILES)
# What each older version lacks, for the reader's refusal.
OLDER_VERSIONS = {
    1: "without the manifest's own digest, so an edit to it cannot be detected",
    2: "without the out-of-distribution score and the training sources",
}


def manifest_sha256(manifest: dict) -> str:
    """sha256 of ``manifest`` without its ``MANIFEST_DIGEST`` key, as canonical JSON (keys sorted, no
    spaces, ASCII): the same for every reader whatever the file's layout. A value JSON cannot hold
    (NaN, infinity) raises ValueError."""
    body = {key: value for key, value in manifest.items() if key != MANIFEST_DIGEST}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()
