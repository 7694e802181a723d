"""Evaluation of the shared tiny workdir: predictions, the report against scikit-learn, isolation."""

import json
import os
import shutil
import subprocess
import sys

import cv2
import jax
import ml_collections
import numpy as np
import pandas as pd
import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, REPO, browser_or_skip, check_number_cells
from sklearn import metrics as skm

from lungjax import trees
from lungjax.config import base as config_base
from lungjax.config.base import base_config
from lungjax.data import dataset, labels, nih, records
from lungjax.evaluation import evaluate, inference, kinds
from lungjax.evaluation.fit import operating_points, temperature
from lungjax.evaluation.fit import validation as validation_fit
from lungjax.evaluation.sections import comparison, schema
from lungjax.evaluation.stats import youden
from lungjax.runtime import checkpoint, sharding

TRAINING_MODULES = ("lungjax.training",)


def _with_eval(config, **changes):
    config = config.copy_and_resolve_references()
    config.eval.update(changes)
    return config


def _read(path):
    """Labels, probabilities (float32 as the model gave them, widened) and the frame of a predictions.csv."""
    frame = pd.read_csv(path)
    return (
        frame["true_class"].map(labels.CLASS_NAMES.index).to_numpy(),
        frame[list(labels.CLASS_NAMES)].to_numpy(np.float32).astype(np.float64),
        frame,
    )


@pytest.fixture(scope="module")
def test_report(tiny_workdir):
    out = tiny_workdir / "eval" / "test"
    return json.loads((out / "report.json").read_text()), out


def test_predictions_cover_the_split_once_in_order(tiny_workdir, tiny_config, test_report):
    config = tiny_config
    builder = dataset.build(config.data, tiny_workdir)
    source = records.data_source(builder, "test")
    names = [source[i]["image_name"] for i in range(len(source))]
    names = [n.decode() if isinstance(n, bytes) else n for n in names]
    assert len(source) % config.eval.batch_size  # the last batch is padded
    _, _, frame = _read(test_report[1] / "predictions.csv")
    assert frame["image_name"].tolist() == names
    assert test_report[0]["n_images"] == len(names)


def test_report_equals_scikit_learn_on_the_saved_predictions(test_report):
    report, out = test_report
    y, probs, frame = _read(out / "predictions.csv")
    predicted = probs.argmax(axis=1)
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(y, predicted))
    assert report["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, predicted))
    # float32 rows sum to 1 within 1e-7, which scikit-learn's strict check warns about: renormalise.
    normalised = probs / probs.sum(axis=1, keepdims=True)
    assert report["log_loss"] == pytest.approx(skm.log_loss(y, normalised, labels=range(6)), rel=1e-6)
    assert report["confusion_matrix"] == skm.confusion_matrix(y, predicted, labels=range(6)).tolist()
    aucs = [skm.roc_auc_score(y == k, probs[:, k]) for k in range(labels.NUM_CLASSES)]
    assert report["macro_auc"] == pytest.approx(np.mean(aucs))
    assert report["n_patients"] == frame["patient_id"].nunique()
    precision, recall, f1, _ = skm.precision_recall_fscore_support(y, predicted, labels=range(6), zero_division=np.nan)
    thresholds = report["at_thresholds"]["thresholds"]
    for k, name in enumerate(labels.CLASS_NAMES):
        row = report["per_class"][name]
        assert row["auc"] == pytest.approx(aucs[k])
        assert row["pr_auc"] == pytest.approx(skm.average_precision_score(y == k, probs[:, k]))
        assert row["sensitivity"] == pytest.approx(recall[k])
        assert row["specificity"] == pytest.approx(skm.recall_score(y != k, predicted != k))
        assert row["f1"] == pytest.approx(f1[k])
        assert row["precision"] == (None if np.isnan(precision[k]) else pytest.approx(precision[k]))
        called = probs[:, k] >= thresholds[name]
        at = report["at_thresholds"]["per_class"][name]
        assert at["sensitivity"] == pytest.approx(skm.recall_score(y == k, called))
        assert at["specificity"] == pytest.approx(skm.recall_score(y != k, ~called))
    intervals = report["confidence_intervals"]
    assert intervals["method"] == "percentile bootstrap over patients"
    assert intervals["accuracy"]["low"] <= report["accuracy"] <= intervals["accuracy"]["high"]


def test_thresholds_are_chosen_on_validation(tiny_workdir, tiny_config, test_report):
    """Evaluating the validation split writes its predictions; the test report's thresholds are theirs."""
    validation = evaluate.evaluate(_with_eval(tiny_config, split="validation", n_bootstrap=0), tiny_workdir)
    assert validation["split"] == "validation" and validation["confidence_intervals"] is None
    y, probs, _ = _read(tiny_workdir / "eval" / "validation" / "predictions.csv")
    expected = youden.youden_thresholds(y, probs, labels.CLASS_NAMES)
    report = test_report[0]
    assert report["at_thresholds"]["chosen_on"] == "validation"
    assert report["at_thresholds"]["thresholds"] == expected
    assert validation["at_thresholds"]["thresholds"] == expected
    assert report["at_thresholds"]["on_validation"] == youden.youden_j(y, probs, expected, labels.CLASS_NAMES)


def test_report_md_plots_and_pointing_game(tiny_workdir, tiny_config, test_report):
    report, out = test_report
    for name in (
        "roc.png",
        "pr.png",
        "confusion_matrix.png",
        "reliability.png",
        "training_curves.png",
        "gradcam_worst.png",
        "gradcam_boxed.png",
    ):
        assert (out / name).read_bytes().startswith(b"\x89PNG"), name
    text = (out / "report.md").read_text()
    for expected in (
        "| Accuracy | 0.550 |",
        "| Macro ROC-AUC | 0.870 |",
        "| Cardiomegaly sensitivity | 0.850 |",
        "| Pneumothorax specificity | 0.860 |",
        "**Split: patient-disjoint**",
        "pointing game",
    ):
        assert expected in text
    assert report["patient_disjoint"] and report["patients_crossing_splits"] == 0
    builder = dataset.build(tiny_config.data, tiny_workdir)
    source = records.data_source(builder, "test")
    boxed = sum(source[i]["bbox"][2] > 0 for i in range(len(source)))
    game = report["explain"]["pointing_game"]
    assert boxed > 0 and game["n"] == boxed
    assert 0 < game["chance"] < 1 and 0 <= game["hit_rate"] <= 1


def _imported_after(script: str, args=()) -> set[str]:
    """Module names imported by a fresh interpreter after running ``script``."""
    code = script + "\nimport sys\nprint('MODULES', ' '.join(sorted(sys.modules)))\n"
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return set(result.stdout.split("MODULES ")[1].split())


EVALUATE_SCRIPT = (
    "from absl import app\nfrom lungjax import main\ntry:\n    app.run(main.main)\n"
    "except SystemExit as exit:\n    assert not exit.code, exit.code\n"
)


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_workdir, tiny_overrides):
    """``--mode compare`` of a copy of the tiny workdir (its best checkpoint) against the original's step 3:
    the workdir, its report and the modules the run imported."""
    workdir = tmp_path_factory.mktemp("compared") / "run"
    shutil.copytree(tiny_workdir, workdir, ignore=shutil.ignore_patterns("eval"))
    args = [
        f"--config={REPO / 'configs' / 'tiny.py'}",
        f"--workdir={workdir}",
        "--mode=compare",
        f"--config.eval.compare_to={tiny_workdir}",
        "--config.eval.compare_checkpoint=3",
        *tiny_overrides,
    ]
    modules = _imported_after(EVALUATE_SCRIPT, args)
    return workdir, json.loads((workdir / "eval" / "test" / "report.json").read_text()), modules


def test_evaluate_and_compare_import_no_training_code(compared):
    """``--mode compare`` (evaluation and more) loads none of our training modules, and optax only
    because flax.nnx does."""
    evaluated = compared[2]
    assert "lungjax.evaluation.evaluate" in evaluated and "lungjax.evaluation.sections.comparison" in evaluated
    assert not {m for m in evaluated if m.startswith(TRAINING_MODULES)}
    flax_itself = _imported_after("from flax import nnx")
    assert {m for m in evaluated if m.startswith("optax")} <= flax_itself


def test_compare_mode_scores_both_checkpoints_on_the_same_images(compared, tiny_workdir, tiny_config):
    workdir, report, _ = compared
    comparison = report["comparison"]
    assert comparison["run_b"] == f"{tiny_workdir} step 3" and report["checkpoint_step"] == 6
    assert comparison["n_images"] == report["n_images"]
    restored, _, predict = evaluate.predictor(tiny_config, tiny_workdir, sharding.make_mesh(), "3")
    step3 = predict("test")
    assert restored.step == 3 and step3["image_name"].tolist() == report_names(workdir)
    for k, (name, row) in enumerate(comparison["per_class"].items()):
        assert row["auroc_a"] == pytest.approx(report["per_class"][name]["auc"])
        assert row["auroc_b"] == pytest.approx(skm.roc_auc_score(step3["label"] == k, step3["probs"][:, k]), abs=1e-7)
    y = pd.read_csv(workdir / "eval" / "test" / "predictions.csv")["true_class"].map(labels.CLASS_NAMES.index)
    assert comparison["mcnemar"]["both_correct"] + comparison["mcnemar"]["both_wrong"] + comparison["mcnemar"][
        "only_a_correct"
    ] + comparison["mcnemar"]["only_b_correct"] == len(y)
    assert (workdir / "eval" / "test" / "comparison_roc.png").read_bytes().startswith(b"\x89PNG")


def report_names(workdir) -> list[str]:
    return pd.read_csv(workdir / "eval" / "test" / "predictions.csv")["image_name"].tolist()


class _NoBestManager:
    """A checkpoint manager whose saves recorded no validation score."""

    directory = "somewhere"

    def all_steps(self):
        return [3, 6]

    def latest_step(self):
        return 6

    def best_step(self):
        return None


def test_resolve_step_choices(caplog):
    manager = _NoBestManager()
    assert inference.resolve_step(manager, "latest") == 6
    assert inference.resolve_step(manager, "3") == 3
    assert inference.resolve_step(manager, 3) == 3
    with caplog.at_level("WARNING"):
        assert inference.resolve_step(manager, "best") == 6
    assert "instead of the best" in caplog.text
    with pytest.raises(ValueError, match="saved step"):
        inference.resolve_step(manager, "4")
    assert base_config().eval.checkpoint == "best"


def test_tta_windows_and_constant_image(tiny_workdir, tiny_config):
    windows = inference.tta_windows(32, 6)
    assert windows[0] == (0, 0, 32) and len(set(windows)) == 6
    assert all(0 <= top and top + side <= 32 and 0 <= left and left + side <= 32 for top, left, side in windows)
    with pytest.raises(ValueError, match="tta_crops"):
        inference.tta_windows(32, 7)
    mesh = sharding.make_mesh()
    restored = inference.restore(tiny_config, tiny_workdir, mesh)
    single = inference.make_predict_fn(restored.graphdef, mesh, restored.dtype)
    multi = inference.make_predict_fn(restored.graphdef, mesh, restored.dtype, tta_crops=6)
    constant = np.full((2, 32, 32, 1), 120, np.uint8)  # every crop of it is the same image
    np.testing.assert_allclose(
        multi(restored.model_state, constant), single(restored.model_state, constant), rtol=1e-5, atol=1e-6
    )
    noise = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 1), dtype=np.uint8)
    probs = np.asarray(jax.device_get(multi(restored.model_state, noise)))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(probs, single(restored.model_state, noise), atol=1e-7)


def _cli(args, cwd=REPO) -> subprocess.CompletedProcess:
    """``python -m lungjax.main ARGS`` on 2 CPU devices."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    return subprocess.run(
        [sys.executable, "-m", "lungjax.main", *args], cwd=cwd, capture_output=True, text=True, env=env
    )


def _assert_one_line_error(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("lungjax: error")]
    assert errors == [result.stderr.strip().splitlines()[-1]] and message in errors[0], result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, messages",
    [
        (
            ["--config.eval.split=val", "--config.eval.operating_points=('youden', 'ppv>=2')"],
            [
                "config.eval.split: 'val' is not allowed; allowed: one of 'test'",
                "config.eval.operating_points: ('youden', 'ppv>=2') is not allowed; allowed: a non-empty tuple",
            ],
        ),
        (["--config.eval.checkpoint=99"], ["config.eval.checkpoint must be one of ('best', 'latest') or a saved step"]),
        (["--config.eval.batch_size=3"], ["config.eval.batch_size: 3 does not split over the 2 devices"]),
        (["--config.model.width=0.5"], ["config.model.width: 0.5, checkpoint 0.125"]),
    ],
)
def test_evaluate_mode_refuses_bad_input_in_one_line(tiny_workdir, tiny_overrides, overrides, messages):
    """Every bad value of one run is named in its one line (config problems are listed together)."""
    config = f"--config={REPO / 'configs' / 'tiny.py'}"
    result = _cli([config, f"--workdir={tiny_workdir}", "--mode=evaluate", *tiny_overrides, *overrides])
    for message in messages:
        _assert_one_line_error(result, message)


def _listing(root) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))}


def _copy_run(tiny_workdir, to, *leave_out):
    shutil.copytree(tiny_workdir, to, ignore=shutil.ignore_patterns("eval", "export", *leave_out))
    return to


@pytest.mark.slow
def test_compare_with_a_run_whose_dataset_is_not_built_is_one_line_and_builds_nothing_there(
    tmp_path, tiny_workdir, tiny_overrides
):
    """The dataset of the run compared with is that run's to build: never built inside its workdir."""
    run_a, run_b = _copy_run(tiny_workdir, tmp_path / "a"), _copy_run(tiny_workdir, tmp_path / "b", "tfds")
    before = _listing(run_b)
    config = f"--config={REPO / 'configs' / 'tiny.py'}"
    result = _cli(
        [config, f"--workdir={run_a}", "--mode=compare", f"--config.eval.compare_to={run_b}", *tiny_overrides]
    )
    _assert_one_line_error(
        result, f"the dataset of the run in {run_b} is not built (no patient_32 in {run_b / 'tfds'}): run --mode "
    )
    assert f"prepare (or evaluate) with --workdir={run_b} first" in result.stderr
    assert _listing(run_b) == before and not (run_a / "eval").exists()


@pytest.mark.slow
def test_compare_refuses_a_run_built_from_other_pixels_under_the_same_names(
    tmp_path, tiny_workdir, tiny_config, nih_tree
):
    """Run b's dataset is rebuilt from a copy of the download with one test film's pixels changed (names,
    labels and everything else the same): the comparison is refused, naming that film."""
    run_a, run_b = _copy_run(tiny_workdir, tmp_path / "a"), _copy_run(tiny_workdir, tmp_path / "b", "tfds")
    test_names = sorted(_names(dataset.build(tiny_config.data, run_a), "test"))
    other_tree = tmp_path / "nih_other"
    shutil.copytree(nih_tree, other_tree)
    (film,) = list(other_tree.rglob(test_names[0]))
    cv2.imwrite(str(film), 255 - cv2.imread(str(film), cv2.IMREAD_GRAYSCALE))
    nih.build_dataset(other_tree, run_b / "tfds", dataset.builder_config(tiny_config.data), num_workers=1)
    config = _with_eval(tiny_config, compare_to=str(run_b), n_bootstrap=0, explain_examples=0)
    with pytest.raises(
        comparison.CompareError,
        match=rf"1 of the {len(test_names)} evaluated images have other pixels .* \['{test_names[0]}'\]",
    ):
        evaluate.evaluate(config, run_a)
    assert not (run_a / "eval").exists()


def _names(builder, split):
    source = records.data_source(builder, split)
    names = [source[i]["image_name"] for i in range(len(source))]
    return [name.decode() if isinstance(name, bytes) else name for name in names]


@pytest.mark.slow
@pytest.mark.parametrize("workdir", ["missing", "empty"])
def test_evaluate_mode_without_a_checkpoint_is_one_line(tmp_path, workdir):
    (tmp_path / "empty").mkdir()
    result = _cli([f"--config={REPO / 'configs' / 'tiny.py'}", f"--workdir={tmp_path / workdir}", "--mode=evaluate"])
    _assert_one_line_error(result, "no checkpoint in")


def test_validation_fit_is_chosen_on_validation_and_held_on_test(compared, tiny_config):
    """The temperatures and thresholds are those of the validation predictions, applied to test unchanged."""
    workdir, report, _ = compared
    fit = json.loads((workdir / "eval" / "test" / validation_fit.VALIDATION_FIT_FILE).read_text())
    _, _, predict = evaluate.predictor(tiny_config, workdir, sharding.make_mesh(), "best")
    validation = predict("validation")
    expected_t = temperature.fit(validation["label"], validation["probs"], labels.CLASS_NAMES, False)
    assert fit["temperature"]["temperatures"] == pytest.approx(expected_t["temperatures"])
    positive, scores = kinds.SINGLE_LABEL.columns(validation["label"], validation["probs"], labels.CLASS_NAMES)
    rules = operating_points.parse_all(tiny_config.eval.operating_points)
    expected = operating_points.thresholds_of(operating_points.choose(rules, positive, scores, labels.CLASS_NAMES))
    assert operating_points.thresholds_of(fit["operating_points"]) == expected
    y, probs, _ = _read(workdir / "eval" / "test" / "predictions.csv")
    for rule, thresholds in expected.items():
        for k, name in enumerate(labels.CLASS_NAMES):
            row = report["operating_points"]["per_rule"][rule][name]
            if thresholds[name] is None:
                assert row["contract"] in ("unmet on validation", "undefined")
                continue
            called = probs[:, k] >= thresholds[name]
            assert row["test"]["sensitivity"]["value"] == pytest.approx(skm.recall_score(y == k, called))
            assert row["test"]["specificity"]["value"] == pytest.approx(skm.recall_score(y != k, ~called))
    calibration = report["calibration"]
    assert calibration["before_log_loss"]["value"] == pytest.approx(report["log_loss"], rel=1e-6)
    after = temperature.apply(probs, fit["temperature"]["temperatures"], False)
    assert calibration["after_log_loss"]["value"] == pytest.approx(skm.log_loss(y, after, labels=range(6)), rel=1e-5)
    cells = report["subgroups"]["attributes"]
    assert sum(cell["images"] for cell in cells["sex"].values()) == report["n_images"]
    assert (workdir / "eval" / "test" / "reliability_calibrated.png").read_bytes().startswith(b"\x89PNG")


def test_html_report_opens_offline_and_shows_report_json_numbers(compared, tmp_path):
    """In a real headless browser: no console error, no request outside the file, every number cell
    equal to report.json, all sections present, and a screenshot that is not blank."""
    sync_api = browser_or_skip()
    workdir, report, _ = compared
    page_path = workdir / "eval" / "test" / "report.html"
    errors, requests = [], []
    with sync_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("request", lambda request: requests.append(request.url))
        page.goto(page_path.as_uri(), wait_until="load")
        cells = page.eval_on_selector_all(
            "td[data-keys]", "cells => cells.map(c => [c.textContent, JSON.parse(c.dataset.keys)])"
        )
        headings = page.eval_on_selector_all("h2", "hs => hs.map(h => h.textContent)")
        images = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.naturalWidth, i.src.slice(0, 22)])")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert not errors, errors
    assert [url for url in requests if not url.startswith(("file:", "data:"))] == []
    assert len(cells) > 100
    check_number_cells(cells, report)
    for title in ("Subgroup audit", "Operating points", "Calibration", "Comparison with another run", "Run identity"):
        assert title in headings
    assert images and all(width > 0 and src == "data:image/png;base64," for width, src in images)
    shot = cv2.imread(str(tmp_path / "report.png"), cv2.IMREAD_GRAYSCALE)
    assert shot.shape[0] > 2000 and (shot < 200).mean() > 0.02 and shot.std() > 20


def test_a_config_that_changes_what_the_checkpoint_fixes_is_refused_naming_the_keys(tiny_config):
    """Model, data and image size are the checkpoint's: a change is refused, never silently ignored;
    ``eval.*`` and the seed are the command line's."""
    saved = ml_collections.ConfigDict(config_base.complete(tiny_config.to_dict()))
    changed = tiny_config.copy_and_resolve_references()
    changed.eval.n_bootstrap, changed.seed = 7, 3
    changed.data.build_workers, changed.data.manual_dir = 2, "/elsewhere"  # resume may change these too
    changed.model.stem_space_to_depth = not saved.model.stem_space_to_depth  # the same function
    inference.check_fits(changed, saved, 6)
    changed.model.width, changed.image_size, changed.data.stored_size = 0.5, 64, 64
    with pytest.raises(checkpoint.CheckpointError) as refused:
        inference.check_fits(changed, saved, 6)
    message = str(refused.value)
    assert "config.model.width: 0.5, checkpoint 0.125" in message
    assert "config.image_size: 64, checkpoint 32" in message and "config.data.stored_size: 64" in message


def test_an_older_checkpoints_config_gains_the_missing_keys_at_their_defaults_in_its_own_order():
    saved = {"seed": 4, "model": {"name": "resnet18"}, "removed_key": 1}
    completed = config_base.complete(saved)
    assert completed["seed"] == 4 and completed["model"]["name"] == "resnet18" and completed["removed_key"] == 1
    assert completed["model"]["stem_space_to_depth"] is False  # a key newer than that checkpoint
    assert list(completed)[:3] == ["seed", "model", "removed_key"]
    assert list(completed["model"])[0] == "name"
    assert set(trees.flatten(completed)) == set(trees.flatten(base_config())) | {"removed_key"}


def test_report_json_carries_its_version_and_the_schemas_sections_in_order(compared):
    _, report, _ = compared
    assert report["report_version"] == schema.REPORT_VERSION
    assert list(report) == schema.expected_keys(schema.SINGLE_LABEL_METRICS, set(report))
    assert "comparison" in report and set(report["config"]) == set(base_config())
