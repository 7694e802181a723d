"""An exported bundle, loaded for serving: the manifest, then the model file, refused unless its bytes
hash to the manifest's sha256 (a changed or truncated file must never be run as if it were the
model that passed the export's parity check)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from lungjax.data import images
from lungjax.serve.bundle_format import FORMAT, FORMAT_VERSION, MANIFEST_FILE


class BundleError(Exception):
    """A bundle that cannot be served; the message names the file and the reason."""


@dataclasses.dataclass(frozen=True)
class Bundle:
    directory: Path
    manifest: dict
    precision: str
    predict: Callable[[np.ndarray], np.ndarray]  # uint8 (N, S, S, 1) -> float32 (N, C), compiled per N

    @property
    def class_names(self) -> list[str]:
        return self.manifest["task"]["class_names"]

    @property
    def multi_label(self) -> bool:
        return self.manifest["task"]["multi_label"]

    @property
    def label_space(self) -> dict[str, str] | None:
        """A label set's labels and their one-line definitions (None for NIH's tasks)."""
        return self.manifest["task"].get("label_space")

    @property
    def image_size(self) -> int:
        return self.manifest["input"]["image_size"]

    @property
    def thresholds(self) -> dict[str, dict[str, float | None]]:
        return self.manifest["decision"]["thresholds"]

    @property
    def temperatures(self) -> list[float]:
        return self.manifest["decision"]["temperature"]["temperatures"]

    def prepare(self, gray: np.ndarray) -> np.ndarray:
        """(H, W) uint8 -> (S, S, 1) uint8: the manifest's preprocessing, as the builder then the pipeline do it."""
        return images.model_input(gray, self.manifest["input"]["stored_size"], self.image_size)


def load(directory: str | Path, precision: str = "float32") -> Bundle:
    """Reads and checks ``directory``'s manifest and model file; a BundleError says what is wrong."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
    except OSError as err:
        raise BundleError(f"{manifest_path}: cannot read ({err.strerror}): is {directory} an exported bundle?") from err
    except json.JSONDecodeError as err:
        raise BundleError(f"{manifest_path}: not valid JSON ({err})") from err
    found = (manifest.get("format"), manifest.get("format_version"))
    if found != (FORMAT, FORMAT_VERSION):
        raise BundleError(f"{manifest_path}: format {found}, this lungjax serves {(FORMAT, FORMAT_VERSION)} only")
    entry = manifest["models"].get(precision)
    if entry is None:
        raise BundleError(f"{directory} has no {precision} model; it has: {', '.join(manifest['models'])}")
    model_path = directory / entry["file"]
    try:
        data = model_path.read_bytes()
    except OSError as err:
        raise BundleError(f"{model_path}: cannot read ({err.strerror})") from err
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise BundleError(
            f"{model_path}: sha256 {digest} differs from the manifest's {entry['sha256']}: the file changed after "
            "the export, so it is not the model that passed the parity check; refusing to load it (export again)"
        )
    exported = jax.export.deserialize(bytearray(data))
    return Bundle(directory, manifest, precision, jax.jit(exported.call))
