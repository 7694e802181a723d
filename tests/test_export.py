"""``--mode export`` and ``python -m lungjax.serve``: the bundle's contract, its measured parity, and serving it.

One export (through the command line) and one serve run (``python -m lungjax.serve`` on a folder of
PNGs, a DICOM, a blank film and a broken file) for the whole module; every test reads their output.
"""

import csv
import hashlib
import json
import shutil
import subprocess
import sys

import cv2
import jax
import numpy as np
import pytest
from conftest import CONFIGS, REPO, write_dicom
from sklearn.covariance import LedoitWolf

from lungjax.data import dataset, images, radiograph_files, records
from lungjax.evaluation import inference, out_of_distribution
from lungjax.evaluation.fit import ood, operating_points, temperature, validation
from lungjax.export import bundle as export_bundle
from lungjax.export import parity
from lungjax.runtime import sharding
from lungjax.serve import bundle as serve_bundle
from lungjax.serve import bundle_format, predictions
from lungjax.serve.__main__ import main as serve_main

pydicom = pytest.importorskip("pydicom")

STEP = 6  # configs/tiny.py trains 6 steps; its best checkpoint is the last
FEATURES = 64  # configs/tiny.py's ResNet-18 at width 0.125: 512 / 8 pooled features
# What the standalone predictor may load: JAX, NumPy, OpenCV, pydicom, tqdm and these lungjax modules.
SERVE_MAY_IMPORT = {
    "lungjax",
    "lungjax.data",
    "lungjax.data.images",
    "lungjax.data.radiograph_files",
    "lungjax.evaluation",
    "lungjax.evaluation.fit",
    "lungjax.evaluation.fit.decisions",
    "lungjax.evaluation.fit.ood",
    "lungjax.evaluation.fit.temperature",
    "lungjax.folders",
    "lungjax.xla_cpu",
}
TRAINING_STACK = (
    "flax",
    "optax",
    "orbax",
    "grain",
    "tensorflow_datasets",
    "tensorflow",
    "pandas",
    "sklearn",
    "matplotlib",
    "ml_collections",
    "absl",
)
# Runs lungjax.serve as ``python -m`` does, then records every module the process loaded.
SERVE_SCRIPT = """
import json, runpy, sys
modules_file, sys.argv = sys.argv[1], ["lungjax.serve", *sys.argv[2:]]
try:
    runpy.run_module("lungjax.serve", run_name="__main__", alter_sys=True)
except SystemExit as stop:
    code = stop.code
json.dump(sorted(sys.modules), open(modules_file, "w"))
sys.exit(code)
"""


@pytest.fixture(scope="module")
def manifest(exported):
    return json.loads((exported / bundle_format.MANIFEST_FILE).read_text())


@pytest.fixture(scope="module")
def in_process(tiny_config, tiny_workdir):
    """The restored checkpoint and evaluation's predict function: what the export must agree with."""
    mesh = sharding.make_mesh()
    restored = inference.restore(tiny_config, tiny_workdir, mesh)
    predict_fn = inference.make_predict_fn(
        restored.graphdef, mesh, restored.dtype, tta_crops=1, multi_label=restored.task.multi_label
    )
    return restored, lambda images: np.asarray(predict_fn(restored.model_state, images))


@pytest.fixture(scope="module")
def validation_images(in_process, tiny_workdir):
    restored, _ = in_process
    builder = dataset.build(restored.config.data, tiny_workdir)
    source = records.data_source(builder, "validation")
    size = restored.config.image_size
    batches = inference.split_batches(source, global_batch_size=len(source), image_size=size, worker_count=0)
    return next(iter(batches))["image"]


@pytest.fixture(scope="module")
def served(exported, nih_tree, tmp_path_factory):
    """``python -m lungjax.serve`` on a folder: (exit code, stderr, output folder, inputs, modules loaded)."""
    root = tmp_path_factory.mktemp("serve")
    inputs = root / "films"
    (inputs / "more").mkdir(parents=True)
    for png in sorted((nih_tree / "images_001" / "images").glob("*.png"))[:3]:
        shutil.copy(png, inputs / png.name)
    noise = np.random.default_rng(0).integers(0, 4000, (40, 48))
    write_dicom(inputs / "more" / "film.dcm", noise.astype(np.uint16), ViewPosition="PA")
    cv2.imwrite(str(inputs / "more" / "blank.png"), np.full((36, 30), 90, np.uint8))
    (inputs / "more" / "broken.png").write_text("not an image")
    (inputs / "more" / "notes.txt").write_text("neither PNG, JPEG nor DICOM: left out")
    out, modules_file = root / "predictions", root / "modules.json"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            SERVE_SCRIPT,
            str(modules_file),
            f"--export={exported}",
            "--images",
            str(inputs),
            f"--out={out}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    return result.returncode, result.stderr, out, inputs, json.loads(modules_file.read_text())


def test_manifest_holds_the_task_the_evaluation_fit_and_provenance(exported, manifest, tiny_workdir, in_process):
    restored, _ = in_process
    fit = validation.read(tiny_workdir / "eval" / "test" / validation.VALIDATION_FIT_FILE)
    assert fit["checkpoint_params_sha256"] == restored.params_sha256  # the session's workdir was evaluated:
    assert manifest["decision"]["source"].startswith("validation_fit.json")  # the export reuses that record
    assert manifest["format"] == "lungjax-export" and manifest["format_version"] == 3
    assert manifest[bundle_format.MANIFEST_DIGEST] == bundle_format.manifest_sha256(manifest)
    assert manifest["task"]["class_names"] == list(restored.task.class_names)
    assert manifest["task"]["multi_label"] is False
    assert manifest["input"]["shape"] == ["batch", 32, 32, 1] and manifest["input"]["dtype"] == "uint8"
    assert manifest["input"]["stored_size"] == 32 and "1 / 255" in manifest["input"]["pixel_scaling"]
    decision = manifest["decision"]
    assert decision["thresholds"] == operating_points.thresholds_of(fit["operating_points"])
    assert decision["temperature"]["temperatures"] == fit["temperature"]["temperatures"]
    assert "softmax(log(p) / T)" in decision["temperature"]["formula"]
    assert list(manifest["models"]) == ["float32"]  # trained in float32: no bfloat16 file
    model = manifest["models"]["float32"]
    assert model["sha256"] == hashlib.sha256((exported / "model.jax").read_bytes()).hexdigest()
    provenance = manifest["provenance"]
    config_bytes = (exported / bundle_format.CONFIG_FILE).read_bytes()
    assert provenance["config_sha256"] == hashlib.sha256(config_bytes).hexdigest()
    assert json.loads(config_bytes) == json.loads(json.dumps(restored.config.to_dict()))
    assert provenance["checkpoint_step"] == restored.step == STEP
    assert provenance["checkpoint_params_sha256"] == restored.params_sha256
    assert manifest["parity_sha256"] == hashlib.sha256((exported / bundle_format.PARITY_FILE).read_bytes()).hexdigest()
    run_info = json.loads((tiny_workdir / "run_info.json").read_text())
    assert provenance["dataset_fingerprint"] == run_info["dataset_fingerprint"]
    assert provenance["jax_version"] == jax.__version__
    assert provenance["training_sources"] == ["nih"]  # tiny_overrides: the NIH-format tree
    unlike = manifest["out_of_distribution"]
    assert unlike["file"] == bundle_format.OOD_FILE and unlike["false_alarm_rate"] == ood.DEFAULT_FALSE_ALARM_RATE
    assert unlike["sha256"] == hashlib.sha256((exported / bundle_format.OOD_FILE).read_bytes()).hexdigest()
    assert unlike["feature_dimensions"] == FEATURES and unlike["n_train"] > unlike["n_validation"] > 0


def test_parity_is_measured_on_every_validation_image(exported, in_process, validation_images):
    record = json.loads((exported / bundle_format.PARITY_FILE).read_text())["models"]["model.jax"]
    assert record["images"] == len(validation_images) and record["bound"] == parity.FLOAT32_BOUND
    assert record["within"] and record["max_abs_difference"] <= parity.FLOAT32_BOUND
    # Measured again here, from the file's bytes, against evaluation's own predict function (this
    # process's XLA flags and batch shape may differ from the export's: rounding apart, the same figure).
    model = jax.export.deserialize(bytearray((exported / "model.jax").read_bytes()))
    _, reference = in_process
    difference = np.abs(np.asarray(model.call(validation_images)[0]) - reference(validation_images)).max()
    assert difference <= parity.FLOAT32_BOUND and abs(difference - record["max_abs_difference"]) < 1e-6


def test_batch_dimension_is_symbolic(exported, validation_images):
    model = jax.export.deserialize(bytearray((exported / "model.jax").read_bytes()))
    assert not isinstance(model.in_avals[0].shape[0], int) and model.platforms == ("cpu", "cuda")
    one, five = np.asarray(model.call(validation_images[:1])[0]), np.asarray(model.call(validation_images[:5])[0])
    assert one.shape == (1, 6) and five.shape == (5, 6)
    assert np.asarray(model.call(validation_images[:5])[1]).shape == (5, FEATURES)
    np.testing.assert_allclose(one[0], five[0], atol=1e-6)
    np.testing.assert_allclose(five.sum(axis=1), 1.0, atol=1e-5)


def test_a_changed_model_file_is_refused(exported, tmp_path, capsys):
    copy = shutil.copytree(exported, tmp_path / "bundle")
    data = bytearray((copy / "model.jax").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.jax").write_bytes(bytes(data))
    with pytest.raises(serve_bundle.BundleError, match="sha256 .* differs from the manifest's"):
        serve_bundle.load(copy)
    assert serve_main(["--export", str(copy), "--images", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "refusing to load it" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_failed_parity_check_names_the_difference():
    measured = {"float32": {"max_abs_difference": 3e-4, "bound": 1e-5, "within": False, "images": 18}}
    with pytest.raises(export_bundle.ExportError, match="differs from the in-process one by 0.0003 .* nothing"):
        export_bundle._check(measured)


def test_serve_writes_one_record_per_file(served, manifest, in_process):
    code, stderr, out, inputs, _ = served
    assert code == 1, stderr  # one file could not be read
    assert "left out 1 other file" in stderr and "5 of 6 images classified" in stderr
    assert stderr.count("lungjax.serve: the model was trained on: nih\n") == 1
    assert "100%" in stderr  # the progress bar
    records_ = [json.loads(line) for line in (out / predictions.JSONL_FILE).read_text().splitlines()]
    with (out / predictions.CSV_FILE).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    files = [r["file"] for r in records_]
    assert files == [row["file"] for row in rows] == sorted(files)  # folders walked in name order
    by_name = {r["file"].rsplit("/", 1)[1]: r for r in records_}
    assert set(by_name) == {*(p.name for p in inputs.glob("*.png")), "blank.png", "broken.png", "film.dcm"}
    broken = by_name["broken.png"]
    assert broken["status"] == "error" and broken["file"] in broken["error"] and broken["probabilities"] is None
    assert by_name["film.dcm"]["source"] == "dicom"
    blank_warnings = by_name["blank.png"]["warnings"]
    assert blank_warnings[0].startswith("The image is nearly uniform")
    assert rows[files.index(by_name["blank.png"]["file"])]["warnings"] == predictions.WARNING_SEPARATOR.join(
        blank_warnings
    )
    names = manifest["task"]["class_names"]
    thresholds, temperatures = manifest["decision"]["thresholds"], manifest["decision"]["temperature"]["temperatures"]
    ok = [r for r in records_ if r["status"] == "ok"]
    assert len(ok) == 5
    _, reference = in_process
    films = np.stack([images.model_input(radiograph_files.read(r["file"]).pixels, 32, 32) for r in ok])
    expected = reference(films)
    probs = np.array([[r["probabilities"][name] for name in names] for r in ok])
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    calibrated = np.array([[r["calibrated"][name] for name in names] for r in ok])
    np.testing.assert_allclose(calibrated, temperature.apply(probs, temperatures, False), rtol=0, atol=1e-12)
    for record, row in zip(ok, probs, strict=True):
        for rule, per_class in thresholds.items():
            called = [n for n, p in zip(names, row, strict=True) if per_class[n] is not None and p >= per_class[n]]
            assert record["called"][rule] == called
            assert rows[files.index(record["file"])][f"called:{rule}"] == "|".join(called)


@pytest.fixture(scope="module")
def in_process_features(in_process, tiny_workdir):
    """The restored model's features (``make_predict_fn(with_features=True)``) of the whole training and
    validation splits (fewer films than ``out_of_distribution.MAX_FILMS``), and the function."""
    restored, _ = in_process
    mesh = sharding.make_mesh()
    predict_fn = inference.make_predict_fn(restored.graphdef, mesh, restored.dtype, with_features=True)
    builder = dataset.build(restored.config.data, tiny_workdir)

    def features_of(films):
        return np.asarray(predict_fn(restored.model_state, films)[1], np.float64)

    splits = {}
    for split in ("train", "validation"):
        source = records.data_source(builder, split)
        assert len(source) < out_of_distribution.MAX_FILMS
        batches = inference.split_batches(source, global_batch_size=len(source), image_size=32, worker_count=0)
        splits[split] = features_of(next(iter(batches))["image"])
    return splits, features_of


def _mahalanobis(features: np.ndarray, mean: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    centred = features - mean
    return np.sqrt(np.einsum("nd,de,ne->n", centred, np.linalg.inv(covariance), centred))


def test_the_out_of_distribution_fit_is_the_training_films_and_a_validation_quantile(exported, in_process_features):
    """The bundle's mean and covariance against the training films' features (Ledoit-Wolf, scikit-learn's)
    and its threshold against np.quantile of the validation films' float64 Mahalanobis distances."""
    splits, _ = in_process_features
    with np.load(exported / bundle_format.OOD_FILE, allow_pickle=False) as arrays:
        mean, covariance = arrays["mean"], arrays["covariance"]
    summary = json.loads((exported / bundle_format.MANIFEST_FILE).read_text())["out_of_distribution"]
    assert (summary["n_train"], summary["n_validation"]) == (len(splits["train"]), len(splits["validation"]))
    reference = LedoitWolf().fit(splits["train"])
    np.testing.assert_allclose(mean, reference.location_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(covariance, reference.covariance_, rtol=1e-3, atol=1e-6)
    distances = _mahalanobis(splits["validation"], mean, covariance)
    quantile = np.quantile(distances, 1 - summary["false_alarm_rate"])
    assert summary["threshold"] == pytest.approx(quantile, rel=1e-4)


def test_served_scores_are_the_in_process_distances(served, exported, in_process_features):
    _, _, out, _, _ = served
    _, features_of = in_process_features
    with np.load(exported / bundle_format.OOD_FILE, allow_pickle=False) as arrays:
        mean, covariance = arrays["mean"], arrays["covariance"]
    threshold = json.loads((exported / bundle_format.MANIFEST_FILE).read_text())["out_of_distribution"]["threshold"]
    ok = [json.loads(line) for line in (out / predictions.JSONL_FILE).read_text().splitlines()]
    ok = [r for r in ok if r["status"] == "ok"]
    films = np.stack([images.model_input(radiograph_files.read(r["file"]).pixels, 32, 32) for r in ok])
    expected = _mahalanobis(features_of(films), mean, covariance)
    np.testing.assert_allclose([r["out_of_distribution"] for r in ok], expected, rtol=1e-4)
    for record, distance in zip(ok, expected, strict=True):
        assert any(w.startswith("Unlike the training films (nih)") for w in record["warnings"]) == (
            distance > threshold
        )


def test_serve_imports_none_of_the_training_stack(served):
    _, _, _, _, modules = served
    loaded = {name.split(".")[0] for name in modules}
    assert not loaded & set(TRAINING_STACK)
    # SciPy's LAPACK alone, and by JAX's hand: calling an exported function initialises JAX's CPU linear
    # algebra kernels, which are scipy.linalg's Cython BLAS and LAPACK (jax depends on scipy).
    assert {name.split(".")[1] for name in modules if name.startswith("scipy.") and "._" not in name} <= {
        "linalg",
        "version",
    }
    assert {name for name in modules if name.split(".")[0] == "lungjax"} <= SERVE_MAY_IMPORT | {
        name for name in modules if name.startswith("lungjax.serve")
    }
    assert "pydicom" in loaded  # read lazily, for the DICOM film


@pytest.mark.parametrize("in_the_way", ["export", f"export/{STEP}"])
def test_a_file_where_the_bundle_goes_is_one_line_exit_2_and_kept(tmp_path, tiny_workdir, tiny_overrides, in_the_way):
    """``<workdir>/export`` or ``export/<step>`` that is a file: refused before anything is written (the
    step's folder once the checkpoint names the step), the file as it was."""
    workdir = tmp_path / "run"
    shutil.copytree(tiny_workdir, workdir, ignore=shutil.ignore_patterns("export"))
    (workdir / in_the_way).parent.mkdir(exist_ok=True)
    (workdir / in_the_way).write_text("a file of the user's")
    before = sorted(workdir.rglob("*"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lungjax.main",
            f"--config={CONFIGS / 'tiny.py'}",
            f"--workdir={workdir}",
            "--mode=export",
            *tiny_overrides,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"lungjax: error: {workdir / in_the_way} is a file, not a folder: move it away, then run again "
        "(nothing was written)"
    ), result.stderr[-3000:]
    assert (workdir / in_the_way).read_text() == "a file of the user's"
    assert sorted(workdir.rglob("*")) == before
