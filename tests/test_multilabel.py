"""lungjax.evaluation.sections.multi_label and the statistics it uses against scikit-learn and brute force,
the patient bootstrap against an explicit resampling loop, and the multi-label report, published tables and
per-finding figures built on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.image import imread
from sklearn import metrics as skm

from lungjax.data.labels import FINDINGS14
from lungjax.evaluation.render import document, markdown, plots
from lungjax.evaluation.sections import published
from lungjax.evaluation.sections.multi_label import multilabel_report
from lungjax.evaluation.stats.calibration import FINDING_ECE_BINS as ECE_BINS
from lungjax.evaluation.stats.calibration import finding_ece
from lungjax.evaluation.stats.ranking import weighted_auroc, weighted_average_precision
from lungjax.evaluation.stats.youden import youden_j_multilabel, youden_thresholds_multilabel


def render_multilabel_markdown(report, figures=()):
    return markdown.to_markdown(document.multilabel_document(report, figures))


NUM_FINDINGS = len(FINDINGS14)
FEW_DRAWS = 200


def random_predictions(n: int, seed: int, num_findings: int = NUM_FINDINGS) -> tuple[np.ndarray, np.ndarray]:
    """0/1 labels at a spread of prevalences and informative but noisy sigmoid probabilities."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, num_findings)) < np.linspace(0.05, 0.4, num_findings)).astype(np.uint8)
    logits = rng.normal(size=(n, num_findings)) + 1.5 * labels - 1.5
    return labels, 1.0 / (1.0 + np.exp(-logits))


def tied_predictions(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities on a grid of eleven values (0 and 1 included), so every column is full of ties."""
    labels, probs = random_predictions(n, seed)
    return labels, np.round(probs * 10) / 10


PREDICTIONS = {"random": random_predictions(500, seed=1), "ties": tied_predictions(500, seed=2)}


@pytest.fixture(params=sorted(PREDICTIONS))
def predictions(request) -> tuple[np.ndarray, np.ndarray]:
    return PREDICTIONS[request.param]


def test_point_metrics_equal_sklearn(predictions):
    labels, probs = predictions
    report = multilabel_report(labels, probs, FINDINGS14, patient_ids=np.arange(len(labels)), n_bootstrap=0)
    assert report["n_images"] == report["n_patients"] == len(labels)
    assert report["confidence_intervals"] is None and "at_thresholds" not in report
    for c, name in enumerate(FINDINGS14):
        entry, truth, scores = report["per_finding"][name], labels[:, c], probs[:, c]
        assert entry["support"] == truth.sum() and entry["prevalence"] == pytest.approx(truth.mean())
        assert entry["auroc"] == pytest.approx(skm.roc_auc_score(truth, scores))
        assert entry["pr_auc"] == pytest.approx(skm.average_precision_score(truth, scores))
        assert entry["log_loss"] == pytest.approx(skm.log_loss(truth, scores, labels=[0, 1]))
        assert entry["brier"] == pytest.approx(skm.brier_score_loss(truth, scores))
        assert "note" not in entry
    assert report["means_over"] == list(FINDINGS14)
    assert report["mean_auroc"] == pytest.approx(skm.roc_auc_score(labels, probs, average="macro"))
    assert report["mean_pr_auc"] == pytest.approx(skm.average_precision_score(labels, probs, average="macro"))
    json.dumps(report, allow_nan=False)


def test_weighted_replicates_equal_sklearn_with_sample_weights():
    """The bootstrap scores replicates through image weights; each must be sklearn's weighted metric."""
    rng = np.random.default_rng(3)
    for trial in range(60):
        n = int(rng.integers(5, 80))
        positive = rng.random(n) < rng.uniform(0.1, 0.9)
        scores = rng.integers(0, 6, n) / 5 if trial % 2 else rng.random(n)
        weights = rng.integers(0, 4, size=(4, n)).astype(np.float64)
        auroc = weighted_auroc(positive, scores, weights)
        average_precision = weighted_average_precision(positive, scores, weights)
        for w, a, ap in zip(weights, auroc, average_precision, strict=True):
            if (w * positive).sum() == 0:
                assert np.isnan(a) and np.isnan(ap)
                continue
            assert ap == pytest.approx(skm.average_precision_score(positive, scores, sample_weight=w))
            if (w * ~positive).sum() == 0:
                assert np.isnan(a)
            else:
                assert a == pytest.approx(skm.roc_auc_score(positive, scores, sample_weight=w))


def explicit_percentile_bootstrap(labels, probs, n_draws, seed):
    """The intervals by brute force: resample images (every image its own patient) with the draws the
    report makes, score each replicate with sklearn, skip the undefined ones."""
    n = len(labels)
    draws = np.random.default_rng(seed).integers(0, n, size=(n_draws, n))
    auroc = np.full((n_draws, labels.shape[1]), np.nan)
    average_precision = np.full((n_draws, labels.shape[1]), np.nan)
    for r, idx in enumerate(draws):
        for c in range(labels.shape[1]):
            truth, scores = labels[idx, c], probs[idx, c]
            if truth.any():
                average_precision[r, c] = skm.average_precision_score(truth, scores)
                if not truth.all():
                    auroc[r, c] = skm.roc_auc_score(truth, scores)

    def interval(values):
        used = values[~np.isnan(values)]
        low, high = np.percentile(used, [2.5, 97.5])
        return {"low": pytest.approx(low), "high": pytest.approx(high), "n_used": used.size}

    return {
        "mean_auroc": interval(auroc.mean(axis=1)),
        "mean_pr_auc": interval(average_precision.mean(axis=1)),
        "per_finding": [
            {"auroc": interval(auroc[:, c]), "pr_auc": interval(average_precision[:, c])}
            for c in range(labels.shape[1])
        ],
    }


def test_intervals_equal_an_explicit_resampling_loop():
    labels, probs = tied_predictions(60, seed=4)
    labels, probs = labels[:, :4], probs[:, :4]
    labels[:, 0] = 0
    labels[:2, 0] = 1  # two positives: absent from some replicates, which are skipped
    names, draws = FINDINGS14[:4], 100
    report = multilabel_report(labels, probs, names, patient_ids=np.arange(60), n_bootstrap=draws, seed=5)
    intervals = report["confidence_intervals"]
    expected = explicit_percentile_bootstrap(labels, probs, draws, seed=5)
    assert intervals["mean_auroc"] == expected["mean_auroc"]
    assert intervals["mean_pr_auc"] == expected["mean_pr_auc"]
    for name, finding in zip(names, expected["per_finding"], strict=True):
        assert intervals["per_finding"][name] == finding
    assert intervals["mean_auroc"]["n_used"] <= intervals["per_finding"][names[0]]["auroc"]["n_used"] < draws
    assert (intervals["level"], intervals["n_bootstrap"], intervals["seed"]) == (0.95, draws, 5)


def interval_width(report: dict, key: str = "mean_auroc") -> float:
    interval = report["confidence_intervals"][key]
    return interval["high"] - interval["low"]


def test_repeated_films_of_a_patient_do_not_narrow_the_interval():
    """Twenty copies of each film with the patient's id carry one patient's evidence: the same interval as
    the original films, not the one an image-level bootstrap would give."""
    films_per_patient = 20
    labels, probs = random_predictions(150, seed=6, num_findings=3)
    names = FINDINGS14[:3]
    original = multilabel_report(labels, probs, names, patient_ids=np.arange(150), n_bootstrap=FEW_DRAWS)
    repeated = np.repeat(labels, films_per_patient, 0), np.repeat(probs, films_per_patient, 0)
    patient_ids = np.repeat(np.arange(150), films_per_patient)
    by_patient = multilabel_report(*repeated, names, patient_ids=patient_ids, n_bootstrap=FEW_DRAWS)
    by_image = multilabel_report(*repeated, names, patient_ids=np.arange(len(patient_ids)), n_bootstrap=FEW_DRAWS)
    assert by_patient["n_patients"] == 150 and by_image["n_patients"] == 3000
    for key in ("mean_auroc", "mean_pr_auc"):
        assert by_patient["confidence_intervals"][key] == pytest.approx(original["confidence_intervals"][key])
        assert interval_width(by_patient, key) > 2.5 * interval_width(by_image, key)


def test_intervals_are_seeded_and_contain_the_point_estimate():
    labels, probs = random_predictions(300, seed=7)
    patient_ids = np.arange(300) // 3
    first, again, other = (
        multilabel_report(labels, probs, FINDINGS14, patient_ids=patient_ids, n_bootstrap=100, seed=seed)
        for seed in (0, 0, 1)
    )
    assert first == again and first["confidence_intervals"] != other["confidence_intervals"]
    assert first["n_patients"] == 100
    intervals = first["confidence_intervals"]
    assert intervals["mean_auroc"]["low"] <= first["mean_auroc"] <= intervals["mean_auroc"]["high"]
    for name in FINDINGS14:
        for key in ("auroc", "pr_auc"):
            interval = intervals["per_finding"][name][key]
            assert interval["low"] <= first["per_finding"][name][key] <= interval["high"]


def test_at_thresholds_equal_sklearn(predictions):
    labels, probs = predictions
    thresholds = dict(zip(FINDINGS14, np.linspace(0.1, 0.8, NUM_FINDINGS), strict=True))
    thresholds["Hernia"] = 1.5  # nothing is called: precision is 0/0
    report = multilabel_report(
        labels, probs, FINDINGS14, patient_ids=np.arange(len(labels)), thresholds=thresholds, n_bootstrap=0
    )
    assert report["at_thresholds"]["thresholds"] == pytest.approx(thresholds)
    for c, name in enumerate(FINDINGS14):
        truth, called = labels[:, c] == 1, probs[:, c] >= thresholds[name]
        tn, fp, fn, tp = skm.confusion_matrix(truth, called, labels=[False, True]).ravel()
        entry = report["at_thresholds"]["per_finding"][name]
        assert entry["sensitivity"] == pytest.approx(skm.recall_score(truth, called))
        assert entry["specificity"] == pytest.approx(tn / (tn + fp))
        assert entry["f1"] == pytest.approx(skm.f1_score(truth, called))
        precision = skm.precision_score(truth, called, zero_division=np.nan)
        assert entry["precision"] == (None if np.isnan(precision) else pytest.approx(precision))
    json.dumps(report, allow_nan=False)


def brute_force_youden(positive: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(threshold, J): the highest threshold among the distinct scores maximising TPR - FPR."""
    best_j, best_t = -np.inf, None
    for t in np.unique(scores)[::-1]:
        called = scores >= t
        j = called[positive].mean() - called[~positive].mean()
        if j > best_j:
            best_j, best_t = j, t
    return best_t, best_j


def test_youden_thresholds_and_j_equal_brute_force(predictions):
    labels, probs = predictions
    thresholds = youden_thresholds_multilabel(labels, probs, FINDINGS14)
    reached = youden_j_multilabel(labels, probs, thresholds, FINDINGS14)
    assert list(thresholds) == list(reached) == list(FINDINGS14)
    for c, name in enumerate(FINDINGS14):
        positive = labels[:, c] == 1
        threshold, j = brute_force_youden(positive, probs[:, c])
        assert thresholds[name] == threshold
        assert reached[name] == {
            "youden_j": pytest.approx(j),
            "positives": positive.sum(),
            "negatives": (~positive).sum(),
        }


def test_a_finding_without_positives_has_no_threshold_and_the_others_keep_theirs():
    labels, probs = random_predictions(100, seed=8)
    labels[:, FINDINGS14.index("Hernia")] = 0
    thresholds = youden_thresholds_multilabel(labels, probs, FINDINGS14)
    assert thresholds["Hernia"] is None and all(thresholds[n] is not None for n in FINDINGS14 if n != "Hernia")
    report = multilabel_report(labels, probs, FINDINGS14, patient_ids=np.arange(100), thresholds=thresholds)
    at = report["at_thresholds"]
    assert at["thresholds"]["Hernia"] is None and set(at["per_finding"]["Hernia"].values()) == {None}
    called = probs[:, 0] >= thresholds["Atelectasis"]
    assert at["per_finding"]["Atelectasis"]["sensitivity"] == pytest.approx(skm.recall_score(labels[:, 0], called))
    assert youden_j_multilabel(labels, probs, thresholds, FINDINGS14)["Hernia"]["youden_j"] is None


def test_ece_equals_its_definition():
    labels, probs = random_predictions(700, seed=9)
    probs[:20] = 1.0  # the last bin is closed: 1.0 falls in it
    probs[20:40] = 0.0
    report = multilabel_report(labels, probs, FINDINGS14, patient_ids=np.arange(700), n_bootstrap=0)
    assert report["ece_bins"] == ECE_BINS == 10
    for c, name in enumerate(FINDINGS14):
        truth, scores = labels[:, c], probs[:, c]
        expected = 0.0
        for k in range(10):
            low, high = k / 10, (k + 1) / 10
            in_bin = (scores >= low) & ((scores < high) if k < 9 else (scores <= 1.0))
            if in_bin.any():
                expected += in_bin.mean() * abs(truth[in_bin].mean() - scores[in_bin].mean())
        assert report["per_finding"][name]["ece"] == pytest.approx(expected)
    assert finding_ece(np.array([0, 1, 1, 0]), np.array([0.0, 1.0, 1.0, 0.0])) == 0.0


def test_finding_without_positives_is_none_with_note_and_left_out_of_the_means():
    labels, probs = random_predictions(400, seed=10)
    absent, everywhere = FINDINGS14.index("Hernia"), FINDINGS14.index("Pneumonia")
    labels[:, absent] = 0
    labels[:, everywhere] = 1
    report = multilabel_report(labels, probs, FINDINGS14, patient_ids=np.arange(400) // 2, n_bootstrap=50)
    entry = report["per_finding"]["Hernia"]
    assert entry["auroc"] is None and entry["pr_auc"] is None and entry["support"] == 0
    assert "no positive" in entry["note"]
    assert report["per_finding"]["Pneumonia"]["auroc"] is None and report["per_finding"]["Pneumonia"]["pr_auc"] == 1.0
    assert "no negative" in report["per_finding"]["Pneumonia"]["note"]
    rest = [c for c in range(NUM_FINDINGS) if c not in (absent, everywhere)]
    assert report["means_over"] == [FINDINGS14[c] for c in rest]
    assert report["mean_auroc"] == pytest.approx(np.mean([skm.roc_auc_score(labels[:, c], probs[:, c]) for c in rest]))
    assert report["confidence_intervals"]["per_finding"]["Hernia"]["auroc"] == {"low": None, "high": None, "n_used": 0}
    assert report["confidence_intervals"]["mean_auroc"]["n_used"] == 50
    json.dumps(report, allow_nan=False)


def lead_report(**extra) -> dict:
    """A report with the keys evaluate.py adds, as the renderer receives it."""
    labels, probs = random_predictions(300, seed=11)
    labels[:, FINDINGS14.index("Hernia")] = 0
    thresholds = dict(zip(FINDINGS14, np.full(NUM_FINDINGS, 0.3), strict=True))
    report = multilabel_report(
        labels, probs, FINDINGS14, patient_ids=np.arange(300) // 3, thresholds=thresholds, n_bootstrap=50
    )
    report["at_thresholds"]["chosen_on"] = "validation"
    return report | {
        "split": "test",
        "checkpoint_step": 1234,
        "dataset": "full14_256",
        "split_scheme": "patient",
        "published": published.tables(),
        **extra,
    }


def test_markdown_renders_published_columns_citations_and_expert_labels():
    expert = {"Pneumonia": {"images": 40, "auroc_nih_labels": 0.71, "auroc_expert_labels": 0.78, "agreement": 0.6}}
    report = lead_report(expert_labels=expert)
    json.dumps(report, allow_nan=False)
    text = render_multilabel_markdown(report, ["roc.png", "predictions.csv"])
    assert "test split, checkpoint step 1234" in text and "`full14_256`: 300 images of 100 patients" in text
    header = next(line for line in text.splitlines() if line.startswith("| Finding | n+"))
    assert header.endswith("| Wang et al. 2017 (official split) | CheXNet 2017 (own split) |")
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert rows["| Cardiomegaly"].endswith("| 0.810 | 0.925 |")  # Wang et al.'s and CheXNet's AUROCs
    assert rows[f"| **Mean** ({NUM_FINDINGS - 1} findings)"].endswith("| 0.745 | 0.841 |")
    assert "arXiv:1705.02315v5" in text and "arXiv:1711.05225, Table 2" in text
    assert "random patient-disjoint 70/10/20" in text and "NIH's official patient-wise split" in text
    assert "Hernia (no positive examples" in text and f"over {NUM_FINDINGS - 1} findings" in text
    assert "| Pneumonia | 40 | 0.710 | 0.780 | 0.600 |" in text
    assert "- [ROC curves, one panel per finding](roc.png)" in text and "- [predictions.csv](predictions.csv)" in text
    assert "NIH labels against expert labels" not in render_multilabel_markdown(lead_report())
    game = {"n": 4, "hits": 3, "hit_rate": 0.75, "chance": 0.1, "flat": 0, "per_class": {}}
    assert "= 0.750**" in render_multilabel_markdown(lead_report(explain={"pointing_game": game}))


def test_published_tables_use_nih_names_and_reproduce_the_published_means():
    tables = published.tables()
    json.dumps(tables, allow_nan=False)
    assert list(tables) == ["wang2017_official", "chexnet2017"]
    wang, chexnet = tables["wang2017_official"], tables["chexnet2017"]
    assert list(wang["auroc"]) == list(chexnet["auroc"]) == list(FINDINGS14)
    assert wang["official_split"] and not chexnet["official_split"]
    assert (wang["mean_auroc"], chexnet["mean_auroc"]) == (0.7451, 0.8414)
    also = chexnet["also_in_table"]
    assert [round(np.mean(list(column.values())), 4) for column in also.values()] == [0.7381, 0.8027]
    assert all(list(column) == list(FINDINGS14) for column in also.values())


@pytest.mark.parametrize(
    ("plot", "num_findings", "grid"),
    [(plots.plot_roc_grid, NUM_FINDINGS, (4, 4)), (plots.plot_reliability_grid, 5, (2, 3))],
)
def test_finding_grids_write_pngs_of_the_expected_size(plot, num_findings, grid, tmp_path):
    labels, probs = random_predictions(300, seed=12, num_findings=num_findings)
    labels[:, -1] = 0  # a finding without positives gets a panel too
    path = tmp_path / "nested" / "grid.png"
    plot(labels, probs, FINDINGS14[:num_findings], path)
    image = imread(path)
    panel = round(plots.PANEL_INCHES * plots.DPI)
    assert image.shape[:2] == (grid[0] * panel, grid[1] * panel)
    assert image.std() > 0


LABELS, PROBS = random_predictions(10, seed=13)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": LABELS[:9]}, r"shape mismatch: labels \(9, 14\) but probs \(10, 14\)"),
        ({"labels": LABELS[:, :5], "probs": PROBS[:, :5]}, "probs has 5 columns but there are 14 class_names"),
        ({"probs": PROBS[0]}, r"must be 2-D \(N, C\)"),
        ({"patient_ids": np.arange(8)}, "length mismatch: 10 rows but patient_ids"),
        ({"labels": LABELS * 2}, r"labels must be 0 or 1, found \[2\]"),
        ({"labels": LABELS.astype(float)}, "labels must be 0/1 integers or booleans"),
        ({"probs": np.where(np.eye(10, 14, dtype=bool), np.nan, PROBS)}, "probs contains NaN in 10 rows"),
        ({"probs": PROBS * 3 - 1}, r"probs must lie in \[0, 1\]"),
        ({"labels": LABELS[:0], "probs": PROBS[:0], "patient_ids": np.arange(0)}, "empty input"),
        ({"thresholds": {"Effusion": 0.5}}, "thresholds must name every class"),
        ({"n_bootstrap": -1}, "n_bootstrap must be >= 0"),
    ],
)
def test_bad_input_raises_clear_error(kwargs, message):
    arguments = {"labels": LABELS, "probs": PROBS, "class_names": FINDINGS14, "patient_ids": np.arange(10)} | kwargs
    with pytest.raises(ValueError, match=message):
        multilabel_report(**arguments)
