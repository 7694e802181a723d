"""External validation from predictions: the train x test matrix against scikit-learn on stated entries,
the gap's independent bootstraps, the refusal of an unshared label, the transfer of operating points and
calibration, the external report's files and page."""

import json

import numpy as np
import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, browser_or_skip, check_number_cells
from sklearn import metrics as skm

from lungjax.evaluation.fit import operating_points, temperature
from lungjax.evaluation.render import cross_dataset as render_cross_dataset
from lungjax.evaluation.sections import cross_dataset
from lungjax.evaluation.stats import bootstrap, separability
from lungjax.evaluation.stats.calibration import finding_ece

LABELS = ("Cardiomegaly", "Effusion", "Nodule")
N_BOOTSTRAP = 60


def _predictions(rng, n_patients, prevalence, signal, stated_share, n_labels=3):
    """Films of ``n_patients`` patients (1-3 each), labels at ``prevalence``, probabilities that follow the
    labels with ``signal``, and a mask stating ``stated_share`` of the entries."""
    patient_ids = np.repeat(np.arange(n_patients), rng.integers(1, 4, n_patients)).astype(str)
    n = len(patient_ids)
    label = (rng.random((n, n_labels)) < prevalence).astype(np.float32)
    logits = signal * (label - 0.5) + rng.normal(size=(n, n_labels))
    probs = 1.0 / (1.0 + np.exp(-logits))
    mask = (rng.random((n, n_labels)) < stated_share).astype(np.float32)
    return {"label": label * mask, "label_mask": mask, "probs": probs.astype(np.float32), "patient_id": patient_ids}


def _validation_fit(rng, labels):
    validation = _predictions(rng, 80, 0.3, 2.0, 1.0, len(labels))
    rules = operating_points.parse_all(["youden", "sensitivity>=0.8"])
    positive = validation["label"] > 0.5
    return {
        "class_names": list(labels),
        "operating_points": operating_points.choose(rules, positive, validation["probs"].astype(np.float64), labels),
        "temperature": temperature.fit(validation["label"], validation["probs"], labels, True),
    }


@pytest.fixture(scope="module")
def matrix():
    rng = np.random.default_rng(7)
    runs = [
        cross_dataset.Run("site A", ("a",), LABELS, _predictions(rng, 60, 0.3, 2.5, 0.9), _validation_fit(rng, LABELS)),
        cross_dataset.Run("A + B", ("a", "b"), LABELS, _predictions(rng, 60, 0.3, 2.5, 0.9), None),
    ]
    sources = {"a": LABELS, "b": LABELS, "c": ("No Finding", "Cardiomegaly", "Effusion", "Edema")}
    tests = []
    for run in runs:
        for source, source_labels in sources.items():
            predictions = _predictions(rng, 50, 0.25 if source == "a" else 0.4, 1.5, 0.8)
            if "Nodule" not in source_labels:
                predictions["label_mask"][:, 2] = 0
                predictions["label"][:, 2] = 0
            tests.append(cross_dataset.TestSet(run.name, source, source_labels, predictions))
    features = rng.normal(size=(60, 8)) + np.repeat([0.0, 3.0], 30)[:, None]  # two sources far apart
    shortcut = {
        "penultimate features": separability.shortcut_probe(
            features, np.repeat(["a", "b"], 30), np.tile(np.arange(30), 2), n_bootstrap=N_BOOTSTRAP
        )
    }
    ood = {"site A": {"threshold": 2.0, "false_alarm_rate": 0.05, "per_source": {"b": np.linspace(0.0, 4.0, 41)}}}
    report = cross_dataset.cross_dataset_report(
        runs, tests, n_bootstrap=N_BOOTSTRAP, seed=3, shortcut=shortcut, ood=ood
    )
    return runs, tests, report


def test_each_matrix_cell_is_scikit_learns_auroc_on_the_stated_entries(matrix):
    runs, tests, report = matrix
    cells = 0
    for test in tests:
        for c, label in enumerate(LABELS):
            stated = test.predictions["label_mask"][:, c] == 1
            cell = report["per_label"][label]["matrix"].get(test.run, {}).get(test.source)
            if label not in test.source_labels:
                assert cell is None
                continue
            expected = skm.roc_auc_score(test.predictions["label"][stated, c], test.predictions["probs"][stated, c])
            assert cell["auroc"] == pytest.approx(expected, abs=1e-12)
            assert cell["n_stated"] == stated.sum() and cell["ci"]["low"] < cell["auroc"] < cell["ci"]["high"]
            assert cell["internal"] == (test.source in next(r for r in runs if r.name == test.run).trained_on)
            prevalence = report["per_label"][label]["prevalence"][test.source]["value"]
            if test.run == runs[0].name:  # the first run's evaluation names each source's prevalence
                assert prevalence == pytest.approx(test.predictions["label"][stated, c].mean())
            cells += 1
    assert cells == 2 * (3 + 3 + 2)


def _resampled_aurocs(predictions, c, seed):
    """The bootstrap by explicit resampling: draw patients with replacement as ``bootstrap_replicates``
    draws them, gather their stated films (repeats included), score with scikit-learn."""
    _, index = np.unique(predictions["patient_id"], return_inverse=True)
    n_patients = index.max() + 1
    draws = np.random.default_rng(seed).integers(0, n_patients, size=(N_BOOTSTRAP, n_patients))
    stated = predictions["label_mask"][:, c] == 1
    films_of = [np.flatnonzero((index == p) & stated) for p in range(n_patients)]
    out = []
    for draw in draws:
        films = np.concatenate([films_of[p] for p in draw])
        y, s = predictions["label"][films, c], predictions["probs"][films, c]
        out.append(skm.roc_auc_score(y, s) if 0 < y.sum() < len(y) else np.nan)
    return np.array(out)


def test_the_gap_is_external_minus_internal_with_independent_patient_bootstraps(matrix):
    runs, tests, report = matrix
    run, test = runs[0], next(t for t in tests if t.run == runs[0].name and t.source == "b")
    c = LABELS.index("Effusion")
    gap = report["per_label"]["Effusion"]["gap"][run.name]["b"]
    external = report["per_label"]["Effusion"]["matrix"][run.name]["b"]["auroc"]
    internal = report["per_label"]["Effusion"]["internal"][run.name]["auroc"]
    assert gap["value"] == pytest.approx(external - internal)
    differences = _resampled_aurocs(test.predictions, c, 3) - _resampled_aurocs(run.internal, c, 3 + 1)
    assert gap["ci"] == pytest.approx(bootstrap.interval(differences))
    assert "a" not in report["per_label"]["Effusion"]["gap"][run.name]  # internal: no gap
    assert "independently" in report["bootstrap"]["gap"]


def test_every_report_says_which_source_trained_and_which_tested_and_what_was_left_out(matrix):
    _, _, report = matrix
    assert "site A: trained on a, tested on b (external)" in report["statements"]
    assert "A + B: trained on a + b, tested on b (internal)" in report["statements"]
    left_out = {(row["run"], row["source"], row["label"]): row["reason"] for row in report["left_out"]}
    assert left_out[("site A", "c", "Nodule")] == "c does not state it"
    assert left_out[("site A", "c", "Edema")] == "site A was not trained on it"
    assert report["shortcut"]["penultimate features"]["separable"]
    assert report["shortcut"]["penultimate features"]["warning"].startswith("WARNING: a linear probe")
    unlike = report["out_of_distribution"]["site A"]["per_source"]["b"]
    assert (unlike["n_unlike"], unlike["n_films"]) == (20, 41) and unlike["ci"]["low"] < 20 / 41 < unlike["ci"]["high"]
    assert report["references"]["cohen2020"]["auroc"] == {"Cardiomegaly": 0.87, "Effusion": 0.89, "Nodule": 0.67}
    json.dumps(report, allow_nan=False)


def test_a_label_the_two_do_not_share_is_refused_in_one_line(matrix):
    runs, tests, _ = matrix
    pair = [t for t in tests if t.run == "site A" and t.source == "c"]
    with pytest.raises(ValueError) as refused:
        cross_dataset.cross_dataset_report(runs[:1], pair, labels=["Nodule"], n_bootstrap=0)
    assert "'Nodule'" in str(refused.value) and "site A->c" in str(refused.value) and "\n" not in str(refused.value)
    shared = cross_dataset.cross_dataset_report(runs[:1], pair, labels=["Effusion"], n_bootstrap=0)
    assert shared["labels"] == ["Effusion"]


def test_validation_thresholds_and_temperatures_transfer_unchanged_to_the_external_films(matrix):
    runs, tests, report = matrix
    run, test = runs[0], next(t for t in tests if t.run == "site A" and t.source == "c")
    transfer = report["transfer"]["site A"]["c"]
    assert list(transfer["calibration"]["per_finding"]) == ["Cardiomegaly", "Effusion"]
    for c, label in enumerate(("Cardiomegaly", "Effusion")):
        stated = test.predictions["label_mask"][:, c] == 1
        y, p = test.predictions["label"][stated, c] > 0.5, test.predictions["probs"][stated, c].astype(np.float64)
        for rule, per_label in run.validation_fit["operating_points"].items():
            threshold = per_label[label]["threshold"]
            row = transfer["operating_points"][rule][label]
            assert row["threshold"] == threshold
            assert row["test"]["sensitivity"]["value"] == pytest.approx(skm.recall_score(y, p >= threshold))
            assert row["test"]["ppv"]["value"] == pytest.approx(skm.precision_score(y, p >= threshold))
        figures = transfer["calibration"]["per_finding"][label]
        assert figures["before_ece"]["value"] == pytest.approx(finding_ece(y, p))
        t = run.validation_fit["temperature"]["temperatures"][c]
        assert figures["after_ece"]["value"] == pytest.approx(
            finding_ece(y, temperature.apply(p[:, None], [t], True)[:, 0])
        )
    assert transfer["operating_points"]["sensitivity>=0.8"]["Effusion"]["contract"] in ("met", "missed", "uncertain")
    assert report["transfer"]["A + B"]["c"] == {"note": "A + B has no validation fit: nothing to transfer"}


def test_the_external_report_is_written_as_json_markdown_and_html_with_its_figures(matrix, tmp_path):
    _, _, report = matrix
    page = render_cross_dataset.write_external_report(tmp_path / "external", report)
    folder = page.parent
    assert json.loads((folder / "report.json").read_text()) == json.loads(json.dumps(report))
    markdown = (folder / "report.md").read_text()
    assert "site A: trained on a, tested on b (external)" in markdown and "## Labels left out" in markdown
    for label in report["labels"]:
        assert (folder / render_cross_dataset.heatmap_name(label)).read_bytes().startswith(b"\x89PNG")
    assert (folder / render_cross_dataset.SUMMARY_FIGURE).read_bytes().startswith(b"\x89PNG")
    assert not list(folder.glob("*.partial"))


def test_external_report_html_opens_offline_and_shows_report_json_numbers(matrix, tmp_path):
    """As for report.html: in a headless browser, no error, no request, every number cell equal to the JSON."""
    sync_api = browser_or_skip()
    _, _, report = matrix
    page_path = render_cross_dataset.write_external_report(tmp_path / "external", report)
    written = json.loads((page_path.parent / "report.json").read_text())
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
        images = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
        browser.close()
    assert not errors, errors
    assert [url for url in requests if not url.startswith(("file:", "data:"))] == []
    assert len(cells) > 60
    check_number_cells(cells, written)
    titles = ("Transfer of operating points and calibration", "Shortcut check", "Unlike the training films")
    for title in (*LABELS, *titles, "Labels left out", "References"):
        assert title in headings
    assert len(images) == len(LABELS) + 1 and all(width > 0 for width in images)
