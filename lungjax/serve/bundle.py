"""An exported bundle, loaded for serving, trusted as a whole or not at all. Before the first image:

* the manifest is this format's version and hashes to its own ``manifest_sha256`` (any edit to it, a
  class name reversed or a threshold changed, is refused: it is not what the export checked);
* every file it names (the model files, the config, the parity record, the out-of-distribution
  arrays) hashes to the manifest's
  sha256 of it (a changed or truncated model must never be run as if it passed the parity check);
* the manifest's contract is whole: distinct class names, one threshold per class at each operating
  point and each in [0, 1] or absent, one temperature (single-label) or one per finding, each finite
  and in the fitted range, sizes in range, the training sources named, the out-of-distribution arrays
  and threshold readable (``fit.ood``);
* the model agrees with it: one uint8 input of shape (N, S, S, 1) with S the manifest's image size
  and N free, two float32 outputs, the probabilities (N, C) with C the number of class names and the
  features (N, D) with D the out-of-distribution score's.

Any disagreement is a ``BundleError`` naming the file and what differs (serve: one line, exit 2).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from lungjax.data import images
from lungjax.evaluation.fit import ood, temperature
from lungjax.serve.bundle_format import (
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_DIGEST,
    MANIFEST_FILE,
    MODEL_FILES,
    OLDER_VERSIONS,
    OOD_FILE,
    PARITY_FILE,
    manifest_sha256,
)

SHA256 = re.compile(r"^[0-9a-f]{64}$")
EXPORT_AGAIN = "export the checkpoint again with `python -m lungjax.main --mode export`"


class BundleError(Exception):
    """A bundle that cannot be served; the message names the file and the reason."""


@dataclasses.dataclass(frozen=True)
class Bundle:
    directory: Path
    manifest: dict
    precision: str
    # uint8 (N, S, S, 1) -> (float32 (N, C) probabilities, float32 (N, D) features), compiled per N
    predict: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    unlike: ood.OutOfDistribution  # the out-of-distribution score of the features

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
    def training_sources(self) -> list[str]:
        return self.manifest["provenance"]["training_sources"]

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
    """Reads and checks ``directory``'s manifest, files and model (the module docstring); a BundleError
    says what is wrong."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_FILE
    manifest = _sealed_manifest(manifest_path)
    problem = _contract_problem(manifest)
    if problem is not None:
        raise BundleError(f"{manifest_path}: {problem}; {EXPORT_AGAIN}")
    if precision not in manifest["models"]:
        raise BundleError(f"{directory} has no {precision} model; it has: {', '.join(manifest['models'])}")
    files = {entry["file"]: entry["sha256"] for entry in manifest["models"].values()}
    files |= {CONFIG_FILE: manifest["provenance"]["config_sha256"], PARITY_FILE: manifest["parity_sha256"]}
    files |= {OOD_FILE: manifest["out_of_distribution"]["sha256"]}
    contents = {name: _checked_bytes(directory / name, digest) for name, digest in files.items()}
    try:
        unlike = ood.OutOfDistribution.from_parts(manifest["out_of_distribution"], contents[OOD_FILE])
    except ValueError as err:  # a faulty export: the digests matched
        raise BundleError(f"{directory / OOD_FILE}: {err}; {EXPORT_AGAIN}") from err
    models = {
        kind: _model(directory / entry["file"], contents[entry["file"]], manifest)
        for kind, entry in manifest["models"].items()
    }
    return Bundle(directory, manifest, precision, jax.jit(models[precision].call), unlike)


def _model(path: Path, data: bytes, manifest: dict):
    """The deserialised model file, refused unless its signature is the one the manifest promises."""
    try:
        exported = jax.export.deserialize(bytearray(data))
    except Exception as err:  # flatbuffers and JAX raise many types for bytes they cannot read
        raise BundleError(f"{path}: not a jax.export model ({type(err).__name__}); {EXPORT_AGAIN}") from err
    disagreement = _model_disagreement(exported, manifest)
    if disagreement is not None:
        raise BundleError(f"{path} does not fit {path.parent / MANIFEST_FILE}: {disagreement}; {EXPORT_AGAIN}")
    return exported


def _sealed_manifest(path: Path) -> dict:
    """The manifest, refused unless it is this format's version and its own digest matches."""
    try:
        manifest = json.loads(path.read_bytes())
    except OSError as err:
        raise BundleError(f"{path}: cannot read ({err.strerror}): is {path.parent} an exported bundle?") from err
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise BundleError(f"{path}: not valid JSON ({err}); {EXPORT_AGAIN}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not a {FORMAT} manifest: is {path.parent} a bundle written by lungjax's export?")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        older = _is_int(version) and version in OLDER_VERSIONS
        why = (
            f"an older lungjax wrote it, {OLDER_VERSIONS[version]}"
            if older
            else "this lungjax does not know that version"
        )
        raise BundleError(
            f"{path}: bundle format version {json.dumps(version)}, this lungjax serves version {FORMAT_VERSION} "
            f"only ({why}); {EXPORT_AGAIN}"
        )
    recorded = manifest.get(MANIFEST_DIGEST)
    changed = (
        "the manifest was changed after the export, so its class names, thresholds or input may not be the "
        f"model's; refusing the bundle ({EXPORT_AGAIN})"
    )
    try:
        digest = manifest_sha256(manifest)
    except ValueError as err:  # NaN or infinity, which the export never writes
        raise BundleError(f"{path}: holds a number JSON cannot (NaN or infinity): {changed}") from err
    if recorded != digest:
        raise BundleError(
            f"{path}: its sha256 {digest} differs from its recorded {MANIFEST_DIGEST} {json.dumps(recorded)}: {changed}"
        )
    return manifest


def _checked_bytes(path: Path, digest: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise BundleError(f"{path}: cannot read ({err.strerror})") from err
    found = hashlib.sha256(data).hexdigest()
    if found != digest:
        raise BundleError(
            f"{path}: sha256 {found} differs from the manifest's {digest}: the file changed after the export, so it "
            f"is not the one that passed the parity check; refusing to load it ({EXPORT_AGAIN})"
        )
    return data


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_probability(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def _at(manifest: dict, *keys: str):
    """``manifest[k1][k2]...``, or None where a level is missing or not an object."""
    value = manifest
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _contract_problem(manifest: dict) -> str | None:
    """What in a (sealed) manifest serve could not run on, or None: a bundle whose digest was recomputed
    after an edit, or one written by a faulty export, is refused here rather than mid-run."""
    names, multi_label = _at(manifest, "task", "class_names"), _at(manifest, "task", "multi_label")
    if not (isinstance(names, list) and names and all(isinstance(n, str) and n for n in names)):
        return f"task.class_names is {json.dumps(names)[:80]}, not a list of class names"
    if len(set(names)) != len(names):
        return f"task.class_names names a class twice: {names}"
    if not isinstance(multi_label, bool):
        return f"task.multi_label is {json.dumps(multi_label)}, not true or false"
    sizes = {key: _at(manifest, "input", key) for key in ("image_size", "stored_size")}
    for key, size in sizes.items():
        if not (_is_int(size) and images.MIN_SIZE <= size <= images.MAX_SIZE):
            return f"input.{key} is {json.dumps(size)}, not an integer in {images.MIN_SIZE}..{images.MAX_SIZE}"
    if sizes["image_size"] > sizes["stored_size"]:
        return f"input.image_size {sizes['image_size']} exceeds input.stored_size {sizes['stored_size']}"
    models = manifest.get("models")
    if not (isinstance(models, dict) and models):
        return f"models is {json.dumps(models)[:80]}, not the model files"
    for precision, entry in models.items():
        if precision not in MODEL_FILES:
            return f"models names a precision {precision!r}, not one of {list(MODEL_FILES)}"
        if _at(entry, "file") != MODEL_FILES[precision]:
            return (
                f"models.{precision}.file is {json.dumps(_at(entry, 'file'))}, not {json.dumps(MODEL_FILES[precision])}"
            )
        if not SHA256.match(str(_at(entry, "sha256"))):
            return f"models.{precision}.sha256 is {json.dumps(_at(entry, 'sha256'))[:80]}, not a sha256"
    sources = _at(manifest, "provenance", "training_sources")
    if not (isinstance(sources, list) and sources and all(isinstance(s, str) and s for s in sources)):
        return f"provenance.training_sources is {json.dumps(sources)[:80]}, not a list of source names"
    digests = {
        "provenance.config_sha256": _at(manifest, "provenance", "config_sha256"),
        "parity_sha256": manifest.get("parity_sha256"),
        "out_of_distribution.sha256": _at(manifest, "out_of_distribution", "sha256"),
    }
    if _at(manifest, "out_of_distribution", "file") != OOD_FILE:
        found = json.dumps(_at(manifest, "out_of_distribution", "file"))
        return f"out_of_distribution.file is {found}, not {json.dumps(OOD_FILE)}"
    for key, digest in digests.items():
        if not SHA256.match(str(digest)):
            return f"{key} is {json.dumps(digest)}, not a sha256"
    thresholds = _at(manifest, "decision", "thresholds")
    if not isinstance(thresholds, dict):
        return f"decision.thresholds is {json.dumps(thresholds)[:80]}, not {{operating point: {{class: threshold}}}}"
    for rule, per_class in thresholds.items():
        if not isinstance(per_class, dict) or list(per_class) != names:
            found = list(per_class) if isinstance(per_class, dict) else per_class
            return f"operating point {rule!r} has thresholds for {json.dumps(found)[:200]}, not one per class {names}"
        for name, value in per_class.items():
            if value is not None and not _is_probability(value):
                return f"operating point {rule!r}: the threshold of {name!r} is {json.dumps(value)}, not in [0, 1]"
    temperatures = _at(manifest, "decision", "temperature", "temperatures")
    count = len(names) if multi_label else 1
    low, high = temperature.MIN_TEMPERATURE, temperature.MAX_TEMPERATURE
    if not (
        isinstance(temperatures, list)
        and len(temperatures) == count
        and all(isinstance(t, (int, float)) and not isinstance(t, bool) and low <= t <= high for t in temperatures)
    ):
        return (
            f"decision.temperature.temperatures is {json.dumps(temperatures)[:200]}, not {count} temperature(s) "
            f"in [{low:g}, {high:g}] ({'one per finding' if multi_label else 'one for the softmax'})"
        )
    return None


def _model_disagreement(exported, manifest: dict) -> str | None:
    """How the deserialised model's signature differs from what the manifest promises, or None."""
    size, classes = manifest["input"]["image_size"], len(manifest["task"]["class_names"])
    dimensions = manifest["out_of_distribution"]["feature_dimensions"]
    if len(exported.in_avals) != 1 or len(exported.out_avals) != 2:
        return (
            f"the model takes {len(exported.in_avals)} inputs and gives {len(exported.out_avals)} outputs, not one "
            "input and two outputs (the probabilities and the features)"
        )
    (given,), (out, features) = exported.in_avals, exported.out_avals
    if given.dtype != np.uint8 or len(given.shape) != 4 or tuple(given.shape[1:]) != (size, size, 1):
        return (
            f"the model takes {given.dtype} {_shape(given.shape)}, the manifest's input is uint8 (N, {size}, {size}, 1)"
        )
    if _is_int(given.shape[0]):
        return f"the model takes batches of exactly {given.shape[0]} images, the format's batch dimension is free"
    if out.dtype != np.float32 or len(out.shape) != 2 or out.shape[1] != classes:
        return (
            f"the model gives {out.dtype} {_shape(out.shape)}, the manifest names {classes} classes: "
            f"float32 (N, {classes}) is due"
        )
    if features.dtype != np.float32 or len(features.shape) != 2 or features.shape[1] != dimensions:
        return (
            f"the model gives features float32 {_shape(features.shape)}, the out-of-distribution score reads "
            f"float32 (N, {dimensions})"
        )
    return None


def _shape(shape) -> str:
    return "(" + ", ".join("N" if not _is_int(d) else str(d) for d in shape) + ")"
