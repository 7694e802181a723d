"""External validation end to end: a tiny run trained on phantom hospital A, evaluated on hospital B
(``--mode evaluate`` with ``config.eval.source``) and scored by ``--mode external`` on A and B; every
matrix cell against scikit-learn on the evaluation's own predictions.csv, the statements, the pixel probe,
and the refusals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import load_config
from sklearn.metrics import roc_auc_score

from lungjax.config import check
from lungjax.data import union
from lungjax.evaluation import evaluate, external, external_sources

LABELS = ("Atelectasis", "Effusion", "Infiltration")


def site_config(site: str, root):
    config = load_config("tiny")
    config.data.source, config.data.sources = "hospital", (("hospital", 1.0, f"phantom:{site}"),)
    config.data.data_dir = str(root / "tfds")
    config.data.phantom_patients, config.data.labels = 60, LABELS
    config.eval.n_bootstrap = 20
    return config


@pytest.fixture(scope="module")
def site_a_run(tmp_path_factory):
    from lungjax.training import loop as train

    root = tmp_path_factory.mktemp("external")
    config = site_config("A", root)
    assert train.train(config, root / "A")
    return root, config


@pytest.mark.slow
def test_an_external_evaluation_and_the_matrix_agree_with_scikit_learn(site_a_run):
    root, config = site_a_run
    config.eval.source, config.eval.manual_dir = "hospital", "phantom:B"
    report = evaluate.evaluate(config, root / "A")
    assert report["external"]["statement"] == "external evaluation: trained on hospital-A, tested on hospital-B"
    assert report["external"]["shared_labels"] == list(LABELS) and report["external"]["left_out"] == []
    out = root / "A" / "eval" / "hospital-B" / "test"
    assert "External evaluation: trained on hospital-A, tested on hospital-B" in (out / "report.md").read_text()
    rows = pd.read_csv(out / "predictions.csv", keep_default_na=False, dtype=str)
    assert rows["patient_id"].str.startswith("H").all() and len(rows) == report["n_images"]

    matrix_config = site_config("A", root)
    matrix_config.external.runs = (str(root / "A"),)
    matrix_config.external.tests = (("hospital", "phantom:A"), ("hospital", "phantom:B"))
    matrix_config.external.probe_films = 40
    matrix = external.external_report(matrix_config, root / "matrix")
    assert matrix["statements"] == [
        "A: trained on hospital-A, tested on hospital-A (internal)",
        "A: trained on hospital-A, tested on hospital-B (external)",
    ]
    scored = [label for label in matrix["labels"] if "hospital-B" in matrix["per_label"][label]["matrix"]["A"]]
    assert scored  # the others are left out with a reason (no positive or no negative stated film)
    for label in scored:
        cell = matrix["per_label"][label]["matrix"]["A"]["hospital-B"]
        stated = rows[f"true {label}"] != ""
        truth = rows.loc[stated, f"true {label}"].astype(int)
        scores = rows.loc[stated, label].astype(np.float32).astype(np.float64)
        assert cell["n_stated"] == int(stated.sum()) and not cell["internal"]
        assert cell["auroc"] == pytest.approx(roc_auc_score(truth, scores), abs=1e-6), label
    for label in set(LABELS) - set(scored):
        assert any(row["label"] == label and row["source"] == "hospital-B" for row in matrix["left_out"])
    probe = matrix["shortcut"]["raw pixels (block means)"]
    own_test = len(union.split(union.open_built(site_config("A", root).data, root / "A"), "test"))
    assert probe["sources"] == ["hospital-A", "hospital-B"]
    assert probe["n_films"] == min(own_test, 40) + min(len(rows), 40)  # the first films of each test split
    assert set(matrix["shortcut"]) == {"raw pixels (block means)", "A's penultimate features"}
    assert matrix["shortcut"]["A's penultimate features"]["n_features"] == 64  # resnet18 at width 0.125: 512 x 0.125
    unlike = matrix["out_of_distribution"]["A"]
    assert {part: row["n_films"] for part, row in unlike["per_source"].items()} == {
        "hospital-A": own_test,
        "hospital-B": len(rows),
    }
    assert 0 < unlike["false_alarm_rate"] < 1 and unlike["threshold"] > 0
    assert (root / "matrix" / "external" / "report.html").is_file()
    assert (root / "matrix" / "tfds" / "hospital-B").is_dir()  # the test sources are built in the matrix's workdir


@pytest.mark.slow
def test_the_matrix_refuses_a_run_without_a_label_set_and_a_label_no_pair_shares(
    site_a_run, tiny_workdir, nih_tree, tmp_path
):
    root, config = site_a_run
    config = site_config("A", root)
    config.external.runs, config.external.tests = (str(tiny_workdir),), (("hospital", "phantom:B"),)
    with pytest.raises(external_sources.ExternalError, match="trains data.task='six_class'; an external matrix"):
        external.external_report(config, tmp_path)
    one = load_config("tiny")  # tiny_workdir's own config
    one.data.source, one.data.manual_dir = "nih", str(nih_tree)
    one.eval.source, one.eval.manual_dir = "hospital", "phantom:B"
    with pytest.raises(external_sources.ExternalError, match="config.eval.source takes a run that trains a label set"):
        evaluate.evaluate(one, tiny_workdir)
    assert not (tiny_workdir / "tfds" / "hospital-B").exists()  # refused before building anything
    config.external.runs, config.external.labels = (str(root / "A"),), ("Nodule",)
    with pytest.raises(ValueError, match=r"labels \['Nodule'\] are not shared by any trained run and external"):
        external.external_report(config, tmp_path)
    assert not (tmp_path / "external").exists()


def test_external_config_keys_are_checked_in_one_line_each():
    config = load_config("tiny")
    config.eval.source = "hospital"
    (problem,) = check.problems(config)
    assert problem.startswith("config.eval.manual_dir: '' is not allowed; allowed: the source's folder")
    config.eval.manual_dir, config.eval.compare_to = "phantom:Q", "/runs/other"
    problems = check.problems(config)
    assert problems[0].startswith("config.eval.manual_dir: 'phantom:Q' is not allowed; allowed: 'phantom' or")
    assert problems[1].startswith("config.eval.compare_to: '/runs/other' is not allowed with eval.source")
    config = load_config("tiny")
    config.external.tests = (("nih", "/data/nih"),)
    (problem,) = check.problems(config)
    assert problem.startswith("config.external.tests: (('nih', '/data/nih'),) is not allowed; allowed: a tuple of")
    config.external.tests = (("hospital", ""),)
    (problem,) = check.problems(config)
    assert problem.startswith("config.external.tests ('hospital'): '' is not allowed")
    config.external.tests = (("hospital", "/a/export"), ("hospital", "/b/export"))
    (problem,) = check.problems(config)
    assert problem.startswith("config.external.tests: the test sources 'hospital-export' are named more than once")


def test_changing_the_external_keys_does_not_refuse_a_resume():
    from lungjax.runtime import checkpoint

    assert checkpoint.is_safe("external.runs") and checkpoint.is_safe("eval.source")


def test_a_run_is_named_by_the_parts_it_trained_on():
    config = load_config("tiny")
    assert external_sources.trained_on(config) == ("phantom",)
    config.data.source, config.data.manual_dir = "chexpert", "/data/CheXpert-v1.0"
    assert external_sources.trained_on(config) == ("chexpert-CheXpert-v1.0",)
    config.data.sources = (("hospital", 1.0, "phantom:A"), ("chexpert", 2.0))
    assert external_sources.trained_on(config) == ("hospital-A", "chexpert-CheXpert-v1.0")
