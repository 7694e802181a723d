"""Artifacts fitted for a checkpoint name it (step and the digest of its weights) and the dataset, and
their readers check both: after a retrain or a rebuild in the same workdir, predict refuses an older
model's validation fit in one line and the export fits again; a record without the digest (an older
lungjax's) is passed over with a note; a damaged one is one line naming the file, never a traceback.

The reader's rules are tested on made-up records (fast); the modes end to end on copies of the
session's ``tiny_workdir``, which is never changed. A retrain is simulated cheaply: the copy's
checkpoint step 6 is saved again with other weights, as a second run with the same schedule leaves
it; a rebuild by a changed ``dataset_info.json``.
"""

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import CONFIGS, REPO, load_config

from lungjax.data import dataset, tasks
from lungjax.evaluation import evaluate, inference, predict
from lungjax.evaluation.fit import operating_points, validation
from lungjax.export import bundle as export_bundle
from lungjax.runtime import checkpoint, run_info, sharding
from lungjax.serve import bundle_format

STEP = 6  # configs/tiny.py trains 6 steps; its best checkpoint is the last
CLASSES = 6  # its six-class task
FIT_PATH = ("eval", "test", validation.VALIDATION_FIT_FILE)  # what the session's evaluation wrote


def _cli(workdir, overrides, *args) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lungjax.main", f"--config={CONFIGS / 'tiny.py'}", f"--workdir={workdir}"]
    return subprocess.run([*command, *overrides, *args], cwd=REPO, capture_output=True, text=True)


def _save_other_weights(workdir, step: int) -> None:
    """Saves checkpoint ``step`` of ``workdir`` again with its parameters moved: a retrain's model at the same step."""
    manager = checkpoint.make_manager(workdir)
    items = (checkpoint.MODEL, checkpoint.TRAIN, checkpoint.DATA, checkpoint.CONFIG, checkpoint.RUN)
    restore_args = {name: ocp.args.StandardRestore() for name in items[:2]} | {
        name: ocp.args.JsonRestore() for name in items[2:]
    }
    restored, metrics = manager.restore(step, args=ocp.args.Composite(**restore_args)), manager.metrics(step)
    rng = np.random.default_rng(1)
    model = restored[checkpoint.MODEL]
    model["params"] = jax.tree.map(lambda x: x + rng.normal(0, 0.05, x.shape).astype(x.dtype), model["params"])
    manager.delete(step)
    checkpoint.save(
        manager,
        step,
        model_state=model,
        train_state=restored[checkpoint.TRAIN],
        data_state=json.dumps(restored[checkpoint.DATA]).encode(),
        config=restored[checkpoint.CONFIG],
        run=restored[checkpoint.RUN],
        metrics=metrics,
    )
    manager.wait_until_finished()
    manager.close()


@pytest.fixture(scope="module")
def retrained(tiny_workdir, tmp_path_factory):
    """A copy of ``tiny_workdir`` whose checkpoint 6 holds other weights than its evaluation's."""
    workdir = shutil.copytree(tiny_workdir, tmp_path_factory.mktemp("retrained") / "run")
    _save_other_weights(workdir, STEP)
    return workdir


@pytest.fixture(scope="module")
def film(nih_tree):
    return sorted((nih_tree / "images_001" / "images").glob("*.png"))[0]


@pytest.fixture
def workdir_copy(tiny_workdir, tmp_path):
    """A throwaway copy of ``tiny_workdir`` (its dataset, checkpoints and test evaluation: another test
    of the session may have evaluated other splits there, whose fits would match too)."""
    copy = shutil.copytree(tiny_workdir, tmp_path / "run", ignore=shutil.ignore_patterns("export", "predict"))
    for evaluation in (copy / "eval").iterdir():
        if evaluation.name != FIT_PATH[1]:
            shutil.rmtree(evaluation) if evaluation.is_dir() else evaluation.unlink()
    return copy


@pytest.fixture(scope="module")
def restored(tiny_config, tiny_workdir):
    return inference.restore(tiny_config, tiny_workdir, sharding.make_mesh())


def _fitted_for(config, workdir, restored_model):
    builder = dataset.build(restored_model.config.data, workdir)
    return validation.FittedFor(STEP, restored_model.params_sha256, run_info.dataset_fingerprint(builder))


def test_the_evaluation_fit_names_its_checkpoint_and_dataset(tiny_workdir, restored):
    fit = validation.read(tiny_workdir.joinpath(*FIT_PATH))
    report = json.loads((tiny_workdir / "eval" / "test" / "report.json").read_text())
    assert fit["checkpoint_step"] == restored.step == STEP
    assert fit["checkpoint_params_sha256"] == restored.params_sha256 == checkpoint.params_sha256(restored.model_state)
    assert fit["dataset_fingerprint"] == report["dataset_fingerprint"]
    assert len(restored.params_sha256) == 64


def test_the_weights_digest_tells_weights_apart(restored):
    """The same on the host as on the devices; moved by one value one ulp away, or by a leaf's shape alone."""
    state = jax.device_get(restored.model_state)
    assert checkpoint.params_sha256(state) == restored.params_sha256
    leaves, tree = jax.tree.flatten(state)
    nudged = [np.array(leaf) for leaf in leaves]
    nudged[0].flat[0] = np.nextafter(nudged[0].flat[0], np.float32(np.inf))
    assert checkpoint.params_sha256(jax.tree.unflatten(tree, nudged)) != restored.params_sha256
    reshaped = [np.array(leaf) for leaf in leaves]
    reshaped[0] = reshaped[0].reshape(-1, 1)  # the same bytes
    assert checkpoint.params_sha256(jax.tree.unflatten(tree, reshaped)) != restored.params_sha256


def test_predict_refuses_an_evaluation_of_other_weights_at_the_same_step(retrained, tiny_overrides, film):
    result = _cli(retrained, tiny_overrides, "--mode=predict", f"--images={film}")
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    fit_path = retrained.joinpath(*FIT_PATH)
    assert line.startswith(f"lungjax: error: {fit_path} was fitted for other weights at checkpoint step {STEP}")
    assert "run --mode evaluate again" in line
    assert not result.stdout  # no probabilities printed with another model's calls


def test_predict_refuses_an_evaluation_on_another_dataset(workdir_copy, restored):
    """A rebuild since the evaluation changes the dataset's fingerprint (here its dataset_info.json)."""
    builder = dataset.build(restored.config.data, workdir_copy)
    info = Path(builder.data_dir) / run_info.DATASET_INFO
    info.write_text(info.read_text() + "\n")
    with pytest.raises(validation.ValidationFitError, match="was fitted for another dataset") as error:
        predict.evaluation_fit(workdir_copy, restored, tta_crops=1)
    assert str(workdir_copy.joinpath(*FIT_PATH)) in str(error.value) and "\n" not in str(error.value)


def test_an_evaluation_fit_without_the_weights_digest_is_passed_over_with_a_note(workdir_copy, restored, capsys):
    path = workdir_copy.joinpath(*FIT_PATH)
    fit = json.loads(path.read_text())
    for key in ("checkpoint_params_sha256", "dataset_fingerprint"):
        del fit[key]  # as lungjax wrote it before it recorded them
    path.write_text(json.dumps(fit))
    assert predict.evaluation_fit(workdir_copy, restored, tta_crops=1) is None
    (note,) = capsys.readouterr().err.splitlines()
    assert note.startswith(f"note: {path} does not name the weights it was fitted for")
    assert "uncalibrated" in note


DAMAGES = {
    "truncated": lambda text: text[: len(text) // 2],
    "not_json": lambda text: "{" + text,
    "a_list": lambda text: "[1, 2]",
    "missing_key": lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "operating_points"}),
    "temperature_as_text": lambda text: text.replace('"temperatures": [', '"temperatures": ["hot", ', 1),
    "threshold_out_of_range": lambda text: json.dumps(
        {
            **json.loads(text),
            "operating_points": {
                rule: {name: {**row, "threshold": 7.0} for name, row in per_class.items()}
                for rule, per_class in json.loads(text)["operating_points"].items()
            },
        }
    ),
    "step_as_text": lambda text: json.dumps({**json.loads(text), "checkpoint_step": "6"}),
}


MADE_FOR = validation.FittedFor(STEP, "a" * 64, "d" * 64)  # a made-up checkpoint and dataset


@pytest.fixture
def made_up(tmp_path):
    """``(workdir, path)``: a workdir whose one evaluation wrote the fit of made-up validation predictions
    for ``MADE_FOR`` (no model needed)."""
    rng = np.random.default_rng(0)
    predictions = {"label": np.arange(60) % CLASSES, "probs": rng.dirichlet(np.ones(CLASSES), 60).astype(np.float32)}
    fit = validation.fit_on_validation(load_config("tiny"), predictions, tasks.SIX_CLASS, MADE_FOR)
    path = tmp_path.joinpath(*FIT_PATH)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(fit, indent=2))
    return tmp_path, path


def test_find_takes_only_the_fit_of_these_weights_and_dataset(made_up):
    workdir, path = made_up
    fit, notes = validation.find(workdir, MADE_FOR, tasks.SIX_CLASS, tta_crops=1)
    assert fit == json.loads(path.read_text()) and fit["checkpoint_params_sha256"] == "a" * 64 and notes == []
    assert validation.find(workdir, MADE_FOR, tasks.SIX_CLASS, tta_crops=6) == (None, [])  # another evaluation
    later = dataclasses.replace(MADE_FOR, step=STEP + 1)  # a checkpoint that was never evaluated
    assert validation.find(workdir, later, tasks.SIX_CLASS, tta_crops=1) == (None, [])
    retrained = dataclasses.replace(MADE_FOR, params_sha256="b" * 64)
    with pytest.raises(validation.ValidationFitError, match=r"other weights at checkpoint step 6 \(sha256 aaaa"):
        validation.find(workdir, retrained, tasks.SIX_CLASS, tta_crops=1)
    rebuilt = dataclasses.replace(MADE_FOR, dataset_fingerprint="e" * 64)
    with pytest.raises(validation.ValidationFitError, match=r"another dataset \(fingerprint dddd"):
        validation.find(workdir, rebuilt, tasks.SIX_CLASS, tta_crops=1)
    with pytest.raises(validation.ValidationFitError, match="the classes"):
        validation.find(workdir, MADE_FOR, tasks.FULL14, tta_crops=1)


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_evaluation_fit_is_named_in_one_line(made_up, damage):
    workdir, path = made_up
    path.write_text(DAMAGES[damage](path.read_text()))
    with pytest.raises(validation.ValidationFitError, match="damaged") as error:
        validation.find(workdir, MADE_FOR, tasks.SIX_CLASS, tta_crops=1)
    message = str(error.value)
    assert message.startswith(f"{path}: damaged, ") and "\n" not in message
    assert message.endswith("; run --mode evaluate again to rewrite it, or remove it")


def test_a_damaged_fit_of_another_evaluation_does_not_hide_the_good_one(made_up):
    workdir, path = made_up
    other = workdir / "eval" / "train" / path.name  # another split's evaluation, cut short by a full disk
    other.parent.mkdir(parents=True)
    other.write_text(path.read_text()[:40])
    fit, notes = validation.find(workdir, MADE_FOR, tasks.SIX_CLASS, tta_crops=1)
    assert fit == json.loads(path.read_text()) and notes == []
    path.unlink()  # with no good fit left, the damaged one is named
    with pytest.raises(validation.ValidationFitError, match=f"{other}: damaged"):
        validation.find(workdir, MADE_FOR, tasks.SIX_CLASS, tta_crops=1)


def test_predict_with_a_damaged_evaluation_fit_exits_2_in_one_line(workdir_copy, tiny_overrides, film):
    path = workdir_copy.joinpath(*FIT_PATH)
    path.write_text(path.read_text()[:100])
    result = _cli(workdir_copy, tiny_overrides, "--mode=predict", f"--images={film}")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"lungjax: error: {path}: damaged, not valid JSON")


@pytest.fixture(scope="module")
def export_predictor(tiny_config, tiny_workdir):
    """evaluate.predictor without test-time crops on ``tiny_workdir``'s checkpoint, as the export makes it."""
    config = export_bundle._without_crops(tiny_config)
    restored_model, _, predict_split = evaluate.predictor(config, tiny_workdir, sharding.make_mesh(), "best")
    validation_predictions = predict_split("validation")
    return config, restored_model, lambda split: validation_predictions


def test_export_reuses_the_evaluation_fit_only_for_the_operating_points_asked_for(
    export_predictor, tiny_workdir, capsys
):
    config, restored_model, predict_split = export_predictor
    fitted_for = _fitted_for(config, tiny_workdir, restored_model)
    fit, source = export_bundle._validation_fit(config, tiny_workdir, fitted_for, restored_model.task, predict_split)
    assert fit == validation.read(tiny_workdir.joinpath(*FIT_PATH)) and source.startswith("validation_fit.json")
    asked = config.copy_and_resolve_references()
    asked.eval.operating_points = ("youden", "ppv>=0.5")
    fit, source = export_bundle._validation_fit(asked, tiny_workdir, fitted_for, restored_model.task, predict_split)
    assert list(fit["operating_points"]) == ["youden", "ppv>=0.5"]
    assert fit == validation.fit_on_validation(asked, predict_split("validation"), restored_model.task, fitted_for)
    (note,) = capsys.readouterr().err.splitlines()
    assert "config.eval.operating_points asks for ['youden', 'ppv>=0.5']" in note and "fits" in note
    assert "config.eval.operating_points asks for" in source


@pytest.mark.parametrize("case", ["legacy", "damaged", "another_dataset"])
def test_export_fits_again_past_an_evaluation_fit_it_cannot_use(export_predictor, workdir_copy, case, capsys):
    config, restored_model, predict_split = export_predictor
    fitted_for = _fitted_for(config, workdir_copy, restored_model)
    path = workdir_copy.joinpath(*FIT_PATH)
    fit = json.loads(path.read_text())
    if case == "legacy":
        del fit["checkpoint_params_sha256"], fit["dataset_fingerprint"]
    elif case == "another_dataset":
        fit["dataset_fingerprint"] = "0" * 64
    path.write_text(json.dumps(fit)[: None if case != "damaged" else 50])
    refit, source = export_bundle._validation_fit(config, workdir_copy, fitted_for, restored_model.task, predict_split)
    assert refit == validation.fit_on_validation(config, predict_split("validation"), restored_model.task, fitted_for)
    said = {"legacy": "does not name the weights", "damaged": "damaged", "another_dataset": "another dataset"}[case]
    (note,) = capsys.readouterr().err.splitlines()
    assert note.startswith(f"note: {path}") and said in note and said in source


def test_export_after_a_retrain_fits_the_new_model_and_names_it(retrained, tiny_config, tiny_overrides):
    result = _cli(retrained, tiny_overrides, "--mode=export")
    assert result.returncode == 0, result.stderr[-3000:]
    stale = validation.read(retrained.joinpath(*FIT_PATH))
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "was fitted for other weights at checkpoint step 6" in notes[0]
    manifest = json.loads((retrained / "export" / str(STEP) / bundle_format.MANIFEST_FILE).read_text())
    config = export_bundle._without_crops(tiny_config)
    new, _, predict_split = evaluate.predictor(config, retrained, sharding.make_mesh(), "best")
    assert new.params_sha256 != stale["checkpoint_params_sha256"]
    assert manifest["provenance"]["checkpoint_params_sha256"] == new.params_sha256
    expected = validation.fit_on_validation(
        config, predict_split("validation"), new.task, _fitted_for(config, retrained, new)
    )
    decision = manifest["decision"]
    assert decision["thresholds"] == operating_points.thresholds_of(expected["operating_points"])
    assert decision["thresholds"] != operating_points.thresholds_of(stale["operating_points"])
    assert decision["temperature"]["temperatures"] == pytest.approx(expected["temperature"]["temperatures"])
    assert "other weights" in decision["source"]


def test_predict_uses_a_new_evaluation_after_the_retrain(retrained, tiny_config, tmp_path, capsys):
    """The way out the refusal names: evaluating again writes a fit for the new weights, which predict uses."""
    workdir = shutil.copytree(retrained, tmp_path / "run")
    config = tiny_config.copy_and_resolve_references()
    config.eval.n_bootstrap, config.eval.explain_examples = 10, 1
    evaluate.evaluate(config, workdir)
    new = inference.restore(config, workdir, sharding.make_mesh())
    fit = predict.evaluation_fit(workdir, new, tta_crops=1)
    assert fit["checkpoint_params_sha256"] == new.params_sha256
    assert "note:" not in capsys.readouterr().err
