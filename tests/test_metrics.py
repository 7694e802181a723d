"""lungjax.evaluation.sections.single_label and its statistics against scikit-learn and brute force, plus the
patient-level bootstrap."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.utils.class_weight import compute_class_weight

from lungjax.data.labels import CLASS_NAMES
from lungjax.evaluation.sections.single_label import classification_report
from lungjax.evaluation.stats.bootstrap import patient_bootstrap_weights
from lungjax.evaluation.stats.calibration import expected_calibration_error
from lungjax.evaluation.stats.class_weights import compute_class_weights
from lungjax.evaluation.stats.youden import youden_j, youden_thresholds

NUM_CLASSES = len(CLASS_NAMES)
# Bootstrap size for tests that only need a stable interval, not the production 1000.
FEW_DRAWS = 200


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def random_predictions(n: int, seed: int, signal: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and informative but noisy softmax probabilities."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, n)
    logits = rng.normal(size=(n, NUM_CLASSES))
    logits[np.arange(n), labels] += signal
    return labels, softmax(logits)


def tied_predictions(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities drawn from a handful of distinct rows, so every column is full of ties."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, n)
    logits = rng.integers(0, 3, size=(n, NUM_CLASSES)).astype(np.float64)
    logits[np.arange(n), labels] += rng.integers(0, 2, n)
    return labels, softmax(logits)


PREDICTIONS = {
    "random": random_predictions(600, seed=1),
    "ties": tied_predictions(600, seed=2),
    "perfect": (np.arange(60) % NUM_CLASSES, np.eye(NUM_CLASSES)[np.arange(60) % NUM_CLASSES]),
}


@pytest.fixture(params=sorted(PREDICTIONS))
def predictions(request) -> tuple[np.ndarray, np.ndarray]:
    return PREDICTIONS[request.param]


def test_point_metrics_equal_sklearn(predictions):
    labels, probs = predictions
    report = classification_report(labels, probs, CLASS_NAMES, n_bootstrap=0)
    preds = probs.argmax(axis=1)
    classes = np.arange(NUM_CLASSES)

    assert report["n_images"] == report["n_patients"] == len(labels)
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(labels, preds))
    assert report["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, preds))
    assert report["macro_auc"] == pytest.approx(skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    assert report["log_loss"] == pytest.approx(skm.log_loss(labels, probs, labels=classes))
    confusion = skm.confusion_matrix(labels, preds, labels=classes)
    assert report["confusion_matrix"] == confusion.tolist()

    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, preds, labels=classes, zero_division=np.nan
    )
    average_precisions = []
    for k, name in enumerate(CLASS_NAMES):
        entry = report["per_class"][name]
        positive = labels == k
        average_precisions.append(skm.average_precision_score(positive, probs[:, k]))
        assert entry["auc"] == pytest.approx(skm.roc_auc_score(positive, probs[:, k]))
        assert entry["pr_auc"] == pytest.approx(average_precisions[-1])
        assert entry["sensitivity"] == pytest.approx(recall[k])
        assert entry["precision"] == pytest.approx(precision[k], nan_ok=True)
        assert entry["f1"] == pytest.approx(f1[k])
        assert entry["support"] == support[k]
        negatives = confusion.sum() - confusion[k].sum()
        true_negatives = negatives - (confusion[:, k].sum() - confusion[k, k])
        assert entry["specificity"] == pytest.approx(true_negatives / negatives)
        assert "note" not in entry
    assert report["macro_pr_auc"] == pytest.approx(np.mean(average_precisions))
    json.dumps(report, allow_nan=False)


def test_ece_equals_loop_over_fifteen_bins():
    labels, probs = random_predictions(500, seed=3)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    expected = 0.0
    for low in np.arange(15) / 15:
        in_bin = (confidence >= low) & (confidence < low + 1 / 15)
        if in_bin.any():
            expected += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    assert expected_calibration_error(labels, probs) == pytest.approx(expected)
    report = classification_report(labels, probs, CLASS_NAMES, n_bootstrap=0)
    assert report["ece"] == pytest.approx(expected)
    assert expected_calibration_error(np.arange(6), np.eye(6)) == 0.0


def test_class_without_positives_is_none_with_note():
    labels, probs = random_predictions(400, seed=4)
    absent = CLASS_NAMES.index("Pneumothorax")
    keep = labels != absent
    labels, probs = labels[keep], probs[keep]
    report = classification_report(labels, probs, CLASS_NAMES, n_bootstrap=50)
    entry = report["per_class"]["Pneumothorax"]
    assert entry["auc"] is None and entry["pr_auc"] is None and entry["sensitivity"] is None
    assert entry["support"] == 0 and "no positive" in entry["note"]
    present = [k for k in range(NUM_CLASSES) if k != absent]
    assert report["macro_auc"] == pytest.approx(np.mean([skm.roc_auc_score(labels == k, probs[:, k]) for k in present]))
    assert report["confidence_intervals"]["per_class"]["Pneumothorax"]["auc"] == {
        "low": None,
        "high": None,
        "n_used": 0,
    }
    json.dumps(report, allow_nan=False)


def test_at_thresholds_equal_sklearn_one_vs_rest(predictions):
    labels, probs = predictions
    thresholds = dict(zip(CLASS_NAMES, np.linspace(0.15, 0.4, NUM_CLASSES), strict=True))
    report = classification_report(labels, probs, CLASS_NAMES, thresholds=thresholds, n_bootstrap=0)
    assert report["at_thresholds"]["thresholds"] == pytest.approx(thresholds)
    for k, name in enumerate(CLASS_NAMES):
        truth, called = labels == k, probs[:, k] >= thresholds[name]
        tn, fp, fn, tp = skm.confusion_matrix(truth, called, labels=[False, True]).ravel()
        entry = report["at_thresholds"]["per_class"][name]
        assert entry["sensitivity"] == pytest.approx(skm.recall_score(truth, called))
        assert entry["specificity"] == pytest.approx(tn / (tn + fp))
        assert entry["precision"] == pytest.approx(
            skm.precision_score(truth, called, zero_division=np.nan), nan_ok=True
        )
        assert entry["f1"] == pytest.approx(skm.f1_score(truth, called))


def brute_force_youden(positive: np.ndarray, scores: np.ndarray) -> float:
    """Highest threshold (among ties) maximising TPR - FPR over every distinct score."""
    best_j, best_t = -np.inf, None
    for t in np.unique(scores)[::-1]:
        called = scores >= t
        j = called[positive].mean() - called[~positive].mean()
        if j > best_j:
            best_j, best_t = j, t
    return best_t


@pytest.mark.parametrize("name", ["random", "ties"])
def test_youden_thresholds_equal_brute_force(name):
    labels, probs = PREDICTIONS[name]
    thresholds = youden_thresholds(labels, probs, CLASS_NAMES)
    assert list(thresholds) == list(CLASS_NAMES)
    for k, class_name in enumerate(CLASS_NAMES):
        assert thresholds[class_name] == brute_force_youden(labels == k, probs[:, k])


@pytest.mark.parametrize("name", ["random", "ties"])
def test_youden_j_is_the_brute_force_maximum(name):
    labels, probs = PREDICTIONS[name]
    reached = youden_j(labels, probs, youden_thresholds(labels, probs, CLASS_NAMES), CLASS_NAMES)
    for k, class_name in enumerate(CLASS_NAMES):
        positive = labels == k
        called = probs[:, k][:, None] >= np.unique(probs[:, k])[None, :]
        best = np.max(called[positive].mean(axis=0) - called[~positive].mean(axis=0))
        expected = {"youden_j": pytest.approx(best), "positives": positive.sum(), "negatives": (~positive).sum()}
        assert reached[class_name] == expected


def test_youden_rejects_class_without_positives():
    labels, probs = random_predictions(100, seed=5)
    labels[labels == 1] = 0
    with pytest.raises(ValueError, match="'Cardiomegaly' has no positive"):
        youden_thresholds(labels, probs, CLASS_NAMES)


def test_class_weights_equal_sklearn():
    labels = np.random.default_rng(6).choice(NUM_CLASSES, 1000, p=[0.3, 0.05, 0.2, 0.1, 0.05, 0.3])
    np.testing.assert_allclose(
        compute_class_weights(labels, NUM_CLASSES),
        compute_class_weight("balanced", classes=np.arange(NUM_CLASSES), y=labels),
    )
    with pytest.raises(ValueError, match="class index 3 has no examples"):
        compute_class_weights(labels[labels != 3], NUM_CLASSES)


def interval_width(report: dict, key: str = "accuracy") -> float:
    interval = report["confidence_intervals"][key]
    return interval["high"] - interval["low"]


def test_intervals_contain_point_estimate_and_count_replicates():
    labels, probs = random_predictions(1000, seed=7)
    patient_ids = np.arange(1000) // 2
    report = classification_report(labels, probs, CLASS_NAMES, patient_ids=patient_ids, n_bootstrap=FEW_DRAWS)
    intervals = report["confidence_intervals"]
    assert report["n_patients"] == 500
    assert intervals["n_bootstrap"] == FEW_DRAWS and intervals["level"] == 0.95
    for key in ("accuracy", "balanced_accuracy", "macro_auc"):
        assert intervals[key]["low"] <= report[key] <= intervals[key]["high"]
        assert intervals[key]["n_used"] == FEW_DRAWS
    for name in CLASS_NAMES:
        for key in ("auc", "sensitivity", "specificity"):
            interval = intervals["per_class"][name][key]
            assert interval["low"] <= report["per_class"][name][key] <= interval["high"]
    json.dumps(report, allow_nan=False)


def test_intervals_are_seeded():
    labels, probs = random_predictions(300, seed=8)
    first, again, other = (
        classification_report(labels, probs, CLASS_NAMES, n_bootstrap=100, seed=seed) for seed in (0, 0, 1)
    )
    assert first == again
    assert first["confidence_intervals"] != other["confidence_intervals"]


def test_intervals_shrink_with_more_patients():
    small = classification_report(*random_predictions(200, seed=9), CLASS_NAMES, n_bootstrap=FEW_DRAWS)
    large = classification_report(*random_predictions(3200, seed=9), CLASS_NAMES, n_bootstrap=FEW_DRAWS)
    for key in ("accuracy", "balanced_accuracy", "macro_auc"):
        # Width scales like 1/sqrt(n): 16x the patients should give about a quarter of the width.
        assert interval_width(large, key) < 0.5 * interval_width(small, key)


def test_patient_bootstrap_is_wider_than_image_bootstrap_for_repeated_films():
    """Twenty identical films per patient carry one patient's worth of evidence, not twenty."""
    films_per_patient = 20
    labels, probs = random_predictions(100, seed=10)
    labels, probs = np.repeat(labels, films_per_patient), np.repeat(probs, films_per_patient, 0)
    patient_ids = np.repeat(np.arange(100), films_per_patient)
    by_patient = classification_report(labels, probs, CLASS_NAMES, patient_ids=patient_ids, n_bootstrap=FEW_DRAWS)
    by_image = classification_report(labels, probs, CLASS_NAMES, n_bootstrap=FEW_DRAWS)
    assert by_patient["n_patients"] == 100 and by_image["n_patients"] == 2000
    for key in ("accuracy", "macro_auc"):
        assert interval_width(by_patient, key) > 2.5 * interval_width(by_image, key)


def test_resampler_draws_whole_patients():
    patient_index = np.array([0, 0, 0, 1, 2, 2, 3, 4, 4, 4, 4])
    weights = patient_bootstrap_weights(patient_index, 5, 500, np.random.default_rng(0))
    assert weights.shape == (500, len(patient_index))
    for patient in range(5):
        films = weights[:, patient_index == patient]
        assert (films == films[:, :1]).all()  # every film of a patient shares its draw count
    patient_counts = np.stack([weights[:, patient_index == p][:, 0] for p in range(5)], axis=1)
    assert (patient_counts.sum(axis=1) == 5).all()  # five patients drawn per replicate
    assert (patient_counts == 0).any() and (patient_counts >= 2).any()  # with replacement


def test_replicates_without_a_class_are_skipped():
    labels, probs = random_predictions(300, seed=11)
    labels[labels == 4] = 0
    labels[0] = 4  # a single positive patient: absent from about 1/e of the replicates
    report = classification_report(labels, probs, CLASS_NAMES, n_bootstrap=FEW_DRAWS)
    intervals = report["confidence_intervals"]
    used = intervals["per_class"]["Pneumothorax"]["auc"]["n_used"]
    assert 0.5 * FEW_DRAWS < used < 0.75 * FEW_DRAWS
    assert intervals["macro_auc"]["n_used"] == used
    assert intervals["balanced_accuracy"]["n_used"] == used
    assert intervals["accuracy"]["n_used"] == FEW_DRAWS


def test_thousand_draws_on_four_thousand_images_is_fast():
    labels, probs = random_predictions(4000, seed=12)
    patient_ids = np.random.default_rng(12).integers(0, 1500, 4000)
    start = time.perf_counter()
    classification_report(labels, probs, CLASS_NAMES, patient_ids=patient_ids, n_bootstrap=1000)
    assert time.perf_counter() - start < 20.0


LABELS, PROBS = random_predictions(10, seed=13)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": LABELS[:9]}, "length mismatch: 9 labels but 10 rows"),
        ({"patient_ids": np.arange(8)}, "length mismatch: 10 labels but patient_ids"),
        ({"probs": PROBS[:, :5]}, "probs has 5 columns but there are 6 class_names"),
        ({"probs": PROBS[0]}, r"probs must be 2-D \(N, C\)"),
        ({"labels": np.where(LABELS == 0, 6, LABELS)}, r"labels out of range \[0, 6\): \[6\]"),
        ({"labels": LABELS.astype(float)}, "labels must be integers"),
        ({"probs": np.where(np.eye(10, 6, dtype=bool), np.nan, PROBS)}, "probs contains NaN"),
        ({"probs": PROBS * 2}, "rows of probs must sum to 1"),
        ({"probs": np.log(PROBS)}, r"probs must lie in \[0, 1\]"),
        ({"labels": LABELS[:0], "probs": PROBS[:0]}, "empty input"),
        ({"thresholds": {"Effusion": 0.5}}, "thresholds must name every class"),
        ({"n_bootstrap": -1}, "n_bootstrap must be >= 0"),
    ],
)
def test_bad_input_raises_clear_error(kwargs, message):
    arguments = {"labels": LABELS, "probs": PROBS, "class_names": CLASS_NAMES} | kwargs
    with pytest.raises(ValueError, match=message):
        classification_report(**arguments)
