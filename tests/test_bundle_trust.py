"""A bundle is served whole or not at all: every edit to its manifest or files, and any disagreement
between the manifest and the model, is refused before the first image in one line (exit 2).

Each case edits a copy of the session's export (``exported``). A careless edit leaves the manifest's
own digest stale; a thorough editor recomputes it (``reseal``), and then the contract and the model's
signature are what catch a bundle that cannot be served right.
"""

import hashlib
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lungjax.export import serialize
from lungjax.serve import bundle, bundle_format
from lungjax.serve.__main__ import main as serve_main

CLASSES = 6  # configs/tiny.py: the six-class task
SIZE = 32  # its image size
FEATURES = 64  # its pooled features (ResNet-18 at width 0.125)
FREE = None  # a batch dimension left symbolic, as the export leaves it


def _model_file(
    outputs: int, *, dtype=np.uint8, size: int = SIZE, batch: int | None = FREE, features: int | None = FEATURES
) -> bytes:
    """A model exported as the export does (CPU and CUDA) on ``(batch, size, size, 1)`` inputs of ``dtype``,
    giving ``outputs`` float32 columns and ``features`` float32 features (none: no second output): its
    first pixels, scaled (any function of the input will do)."""

    def first_pixels(images):
        flat = images.reshape(images.shape[0], -1).astype(jnp.float32) / 255.0
        return flat[:, :outputs] if features is None else (flat[:, :outputs], flat[:, :features])

    n = jax.export.symbolic_shape(serialize.BATCH_SYMBOL)[0] if batch is FREE else batch
    spec = jax.ShapeDtypeStruct((n, size, size, 1), dtype)
    return bytes(jax.export.export(jax.jit(first_pixels), platforms=serialize.PLATFORMS)(spec).serialize())


@pytest.fixture
def copy(exported, tmp_path):
    return shutil.copytree(exported, tmp_path / "bundle")


def _edit(directory, change=None, *, model: bytes | None = None, reseal: bool) -> None:
    """Applies ``change`` to the manifest and puts ``model`` in as model.jax with its sha256 in the manifest;
    ``reseal``: recomputes the manifest's own digest, as a thorough editor would."""
    path = directory / bundle_format.MANIFEST_FILE
    manifest = json.loads(path.read_text())
    if change is not None:
        change(manifest)
    if model is not None:
        (directory / "model.jax").write_bytes(model)
        manifest["models"]["float32"]["sha256"] = hashlib.sha256(model).hexdigest()
    if reseal:
        manifest[bundle_format.MANIFEST_DIGEST] = bundle_format.manifest_sha256(manifest)
    path.write_text(json.dumps(manifest, indent=2))


def _refused(directory, tmp_path, capsys) -> str:
    """Serves ``directory``: it must exit 2 with one line, having written nothing; returns the line."""
    film = tmp_path / "film.png"
    film.write_bytes(b"never read: the bundle is refused first")
    code = serve_main(["--export", str(directory), "--images", str(film), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    (line,) = err.strip().splitlines()
    assert line.startswith("lungjax.serve: error: ") and not (tmp_path / "out").exists()
    return line


def _first_threshold(manifest: dict, value) -> None:
    next(iter(manifest["decision"]["thresholds"].values()))[manifest["task"]["class_names"][0]] = value


def _set(*keys, value):
    def change(manifest: dict) -> None:
        target = manifest
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


def test_the_bundle_as_exported_is_served(copy):
    loaded = bundle.load(copy)
    assert loaded.class_names == json.loads((copy / "manifest.json").read_text())["task"]["class_names"]
    probs, features = loaded.predict(np.zeros((2, SIZE, SIZE, 1), np.uint8))
    assert np.asarray(probs).shape == (2, CLASSES) and np.asarray(features).shape == (2, FEATURES)
    assert loaded.unlike.mean.shape == (FEATURES,) and loaded.training_sources == ["nih"]


CARELESS_EDITS = {
    "class_names_reversed": lambda m: m["task"]["class_names"].reverse(),
    "one_class_name_missing": lambda m: m["task"]["class_names"].pop(),
    "a_class_renamed": lambda m: m["task"]["class_names"].__setitem__(0, "Pneumonia"),
    "a_threshold_changed": lambda m: _first_threshold(m, 0.01),
    "a_threshold_not_a_number": lambda m: _first_threshold(m, float("nan")),  # json writes NaN
    "a_temperature_changed": _set("decision", "temperature", "temperatures", value=[1.0]),
    "multi_label_flipped": _set("task", "multi_label", value=True),
    "stored_size_changed": _set("input", "stored_size", value=64),
    "model_of_the_other_task_with_its_sha256": "a model of 14 outputs",
}


@pytest.mark.parametrize("edit", sorted(CARELESS_EDITS))
def test_an_edited_manifest_is_refused(copy, tmp_path, capsys, edit):
    change = CARELESS_EDITS[edit]
    if isinstance(change, str):
        _edit(copy, model=_model_file(14), reseal=False)
    else:
        _edit(copy, change, reseal=False)
    line = _refused(copy, tmp_path, capsys)
    assert line.startswith(f"lungjax.serve: error: {copy / 'manifest.json'}: ")
    assert "the manifest was changed after the export" in line and bundle.EXPORT_AGAIN in line


def _drop_class(manifest: dict) -> None:
    """One class fewer everywhere the manifest names the classes: only the model still gives six outputs."""
    gone = manifest["task"]["class_names"].pop()
    for per_class in manifest["decision"]["thresholds"].values():
        del per_class[gone]


def _image_size_64(manifest: dict) -> None:
    manifest["input"]["image_size"] = manifest["input"]["stored_size"] = 64


# case -> (manifest change, model file maker, what the refusal says), each resealed
RESEALED = {
    "one_class_fewer": (_drop_class, None, r"the model gives float32 \(N, 6\), the manifest names 5 classes"),
    "model_of_the_other_task": (None, lambda: _model_file(14), r"gives float32 \(N, 14\), the manifest names 6"),
    "model_of_another_image_size": (
        _image_size_64,
        None,
        r"the model takes uint8 \(N, 32, 32, 1\), the manifest's input is uint8 \(N, 64, 64, 1\)",
    ),
    "model_of_float_input": (None, lambda: _model_file(CLASSES, dtype=np.float32), r"takes float32 \(N, 32, 32, 1\)"),
    "model_of_a_fixed_batch": (None, lambda: _model_file(CLASSES, batch=8), "batches of exactly 8 images"),
    "not_a_model": (None, lambda: b"not a jax.export model", "not a jax.export model"),
    "model_without_features": (None, lambda: _model_file(CLASSES, features=None), "not one input and two outputs"),
    "model_of_other_features": (
        None,
        lambda: _model_file(CLASSES, features=FEATURES // 2),
        rf"features float32 \(N, {FEATURES // 2}\), the out-of-distribution score reads float32 \(N, {FEATURES}\)",
    ),
    "no_training_sources": (_set("provenance", "training_sources", value=[]), None, "not a list of source names"),
    "an_ood_file_elsewhere": (
        _set("out_of_distribution", "file", value="../ood.npz"),
        None,
        'out_of_distribution.file is "../ood.npz", not "ood.npz"',
    ),
    "an_ood_threshold_as_text": (
        _set("out_of_distribution", "threshold", value="4"),
        None,
        "ood.npz: threshold '4' and false_alarm_rate .*: not a distance and a rate",
    ),
    "class_names_reversed": (
        lambda m: m["task"]["class_names"].reverse(),
        None,
        "operating point '.*' has thresholds for .*, not one per class",
    ),
    "a_class_named_twice": (
        lambda m: m["task"]["class_names"].__setitem__(1, m["task"]["class_names"][0]),
        None,
        "names a class twice",
    ),
    "a_threshold_out_of_range": (lambda m: _first_threshold(m, 1.5), None, r"is 1.5, not in \[0, 1\]"),
    "a_threshold_as_text": (lambda m: _first_threshold(m, "0.5"), None, r'is "0.5", not in \[0, 1\]'),
    "temperature_zero": (_set("decision", "temperature", "temperatures", value=[0.0]), None, "not 1 temperature"),
    "a_temperature_per_class_for_a_softmax": (
        _set("decision", "temperature", "temperatures", value=[1.0] * CLASSES),
        None,
        r"not 1 temperature\(s\)",
    ),
    "no_decision": (lambda m: m.pop("decision"), None, "decision.thresholds is null"),
    "no_models": (lambda m: m.pop("models"), None, "models is null"),
    "a_model_file_elsewhere": (
        _set("models", "float32", "file", value="../model.jax"),
        None,
        'models.float32.file is "../model.jax", not "model.jax"',
    ),
    "stored_size_huge": (_set("input", "stored_size", value=10**9), None, "input.stored_size is 1000000000"),
    "image_size_over_stored_size": (_set("input", "image_size", value=40), None, "exceeds input.stored_size"),
    "class_names_not_a_list": (_set("task", "class_names", value="Atelectasis"), None, "task.class_names is"),
}


@pytest.mark.parametrize("case", sorted(RESEALED))
def test_a_resealed_manifest_that_disagrees_with_its_model_is_refused(copy, tmp_path, capsys, case):
    change, model, said = RESEALED[case]
    _edit(copy, change, model=model and model(), reseal=True)
    with pytest.raises(bundle.BundleError, match=said):
        bundle.load(copy)
    assert bundle.EXPORT_AGAIN in _refused(copy, tmp_path, capsys)


@pytest.mark.parametrize("name", [bundle_format.CONFIG_FILE, bundle_format.PARITY_FILE])
def test_an_edited_file_beside_the_model_is_refused(copy, tmp_path, capsys, name):
    path = copy / name
    path.write_text(path.read_text().replace("\n", "\n ", 1))
    line = _refused(copy, tmp_path, capsys)
    assert f"{path}: sha256 " in line and "differs from the manifest's" in line


def test_an_altered_out_of_distribution_file_is_refused(copy, tmp_path, capsys):
    """A covariance scaled up would hide every film from the warning: its digest refuses it."""
    path = copy / bundle_format.OOD_FILE
    with np.load(path, allow_pickle=False) as arrays:
        mean, covariance = arrays["mean"], arrays["covariance"]
    np.savez(path, mean=mean, covariance=covariance * 100)
    line = _refused(copy, tmp_path, capsys)
    assert f"{path}: sha256 " in line and "differs from the manifest's" in line


@pytest.mark.parametrize(
    "text, said",
    [
        ("", "not valid JSON"),
        ('{"format": "lungjax-export", "format_version": 2', "not valid JSON"),
        ("[1, 2, 3]", "not a lungjax-export manifest"),
        ('{"format": "something-else"}', "not a lungjax-export manifest"),
        ('{"format": "lungjax-export", "format_version": 4}', "format version 4, this lungjax serves version 3 only"),
        ('{"format": "lungjax-export", "format_version": 3}', "recorded manifest_sha256 null"),
    ],
)
def test_a_manifest_that_is_not_one_is_refused(copy, tmp_path, capsys, text, said):
    (copy / bundle_format.MANIFEST_FILE).write_text(text)
    assert said in _refused(copy, tmp_path, capsys)


def test_a_bundle_of_format_version_1_is_refused_with_export_again(copy, tmp_path, capsys):
    """What lungjax exported before the manifest was sealed: no digest of itself, of the parity record or
    of the weights."""
    manifest = json.loads((copy / bundle_format.MANIFEST_FILE).read_text())
    for key in (bundle_format.MANIFEST_DIGEST, "parity_sha256"):
        del manifest[key]
    del manifest["provenance"]["checkpoint_params_sha256"]
    manifest["format_version"] = 1
    (copy / bundle_format.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    line = _refused(copy, tmp_path, capsys)
    assert "bundle format version 1, this lungjax serves version 3 only (an older lungjax wrote it" in line
    assert line.endswith("export the checkpoint again with `python -m lungjax.main --mode export`")


def test_a_bundle_of_format_version_2_is_refused_with_export_again(copy, tmp_path, capsys):
    """What lungjax exported before the out-of-distribution score: a sealed manifest, a model of one output."""

    def version_2(manifest: dict) -> None:
        manifest["format_version"] = 2
        del manifest["out_of_distribution"], manifest["provenance"]["training_sources"]

    _edit(copy, version_2, model=_model_file(CLASSES, features=None), reseal=True)
    (copy / bundle_format.OOD_FILE).unlink()
    line = _refused(copy, tmp_path, capsys)
    assert (
        "bundle format version 2, this lungjax serves version 3 only (an older lungjax wrote it, without the " in line
    )
    assert "out-of-distribution score" in line and line.endswith(bundle.EXPORT_AGAIN)
