"""Subgroups, operating points, temperature scaling and the paired comparison, against references:
scikit-learn, SciPy, and direct computations from each statistic's definition."""

from __future__ import annotations

import hashlib
import math
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import sklearn.metrics as skm
from conftest import write_nih_tree
from scipy import stats

from lungjax.data import building, labels, metadata, nih, tasks
from lungjax.evaluation import kinds
from lungjax.evaluation.fit import operating_points
from lungjax.evaluation.fit import temperature as temperature_lib
from lungjax.evaluation.sections import calibration, subgroups
from lungjax.evaluation.sections import comparison as compare
from lungjax.evaluation.sections import operating_points as operating_point_section
from lungjax.evaluation.stats import calibration as calibration_stats
from lungjax.evaluation.stats import paired
from lungjax.evaluation.stats import youden as youden_stats

REAL_DATA_ENTRY = Path(__file__).parent / "data" / "Data_Entry_2017_v2020.csv.gz"  # NIH's real metadata


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def six_class_predictions(n: int, seed: int, signal: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, labels.NUM_CLASSES, n)
    z = rng.normal(size=(n, labels.NUM_CLASSES))
    z[np.arange(n), y] += signal
    return y, softmax(z)


# ------------------------------------------------------------------------------------ temperature


def test_fitting_recovers_a_known_temperature_for_softmax_and_per_finding_sigmoids():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, size=(20000, 6))
    true_t = 2.5
    y = np.array([rng.choice(6, p=p) for p in softmax(z / true_t)])
    fitted = temperature_lib.fit(y, softmax(z), labels.CLASS_NAMES, multi_label=False)
    assert fitted["temperatures"][0] == pytest.approx(true_t, rel=0.05) and not fitted["at_bound"]

    true_ts = np.array([0.5, 1.0, 3.0])
    z = rng.normal(0, 2, size=(20000, 3))
    positives = rng.random(z.shape) < sigmoid(z / true_ts)
    fitted = temperature_lib.fit(positives.astype(int), sigmoid(z), ["a", "b", "c"], multi_label=True)
    np.testing.assert_allclose(fitted["temperatures"], true_ts, rtol=0.08)


def test_fit_minimises_the_validation_log_loss_and_leaves_a_one_sided_finding_at_one():
    y, probs = six_class_predictions(500, seed=1, signal=4.0)
    t = temperature_lib.fit(y, probs, labels.CLASS_NAMES, multi_label=False)["temperatures"][0]
    loss = [skm.log_loss(y, temperature_lib.apply(probs, [t * f], False), labels=range(6)) for f in (0.97, 1, 1.03)]
    assert loss[1] < loss[0] and loss[1] < loss[2]
    one_sided = np.zeros((50, 2), int)
    one_sided[:25, 1] = 1
    fitted = temperature_lib.fit(one_sided, np.full((50, 2), 0.3), ["none", "half"], multi_label=True)
    assert fitted["temperatures"][0] == 1.0 and fitted["not_fitted"] == {"none": "no positive validation images"}


def test_apply_is_the_softmax_and_sigmoid_of_the_scaled_log_odds():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(10, 6))
    np.testing.assert_allclose(temperature_lib.apply(softmax(z), [2.0], False), softmax(z / 2.0), atol=1e-12)
    np.testing.assert_allclose(temperature_lib.apply(sigmoid(z), np.arange(1, 7), True), sigmoid(z / np.arange(1, 7)))


def test_calibration_report_points_equal_the_reports_definitions_and_the_change_is_paired():
    y, probs = six_class_predictions(300, seed=3)
    fitted = {"temperatures": [1.7], "not_fitted": {}, "at_bound": []}
    patients = np.arange(300) // 2
    report = calibration.calibration_report(
        y, probs, fitted, labels.CLASS_NAMES, multi_label=False, patient_ids=patients, n_bootstrap=50, seed=0
    )
    after = temperature_lib.apply(probs, [1.7], False)
    assert report["before_log_loss"]["value"] == pytest.approx(skm.log_loss(y, probs))
    assert report["after_log_loss"]["value"] == pytest.approx(skm.log_loss(y, after))
    assert report["before_ece"]["value"] == pytest.approx(calibration_stats.expected_calibration_error(y, probs))
    assert report["after_ece"]["value"] == pytest.approx(calibration_stats.expected_calibration_error(y, after))
    change = report["change_log_loss"]
    assert change["value"] == pytest.approx(report["after_log_loss"]["value"] - report["before_log_loss"]["value"])
    assert change["ci"]["low"] <= change["value"] <= change["ci"]["high"]

    positive = np.random.default_rng(4).random((300, 3)) < 0.3
    prob = np.clip(positive * 0.4 + np.random.default_rng(5).random((300, 3)) * 0.6, 0, 1)
    fitted = {"temperatures": [0.8, 1.0, 1.5], "not_fitted": {}, "at_bound": []}
    report = calibration.calibration_report(
        positive.astype(int),
        prob,
        fitted,
        ["a", "b", "c"],
        multi_label=True,
        patient_ids=patients,
        n_bootstrap=0,
        seed=0,
    )
    after = temperature_lib.apply(prob, [0.8, 1.0, 1.5], True)
    for c, name in enumerate("abc"):
        row = report["per_finding"][name]
        assert row["before_log_loss"]["value"] == pytest.approx(skm.log_loss(positive[:, c], prob[:, c]))
        assert row["after_ece"]["value"] == pytest.approx(calibration_stats.finding_ece(positive[:, c], after[:, c]))
    assert report["before_ece"]["value"] == pytest.approx(
        np.mean([calibration_stats.finding_ece(positive[:, c], prob[:, c]) for c in range(3)])
    )


# -------------------------------------------------------------------------------- operating points


def test_rules_parse_and_bad_rules_are_refused_naming_what_is_allowed():
    assert operating_points.parse(" Sensitivity >= 0.950 ").text == "sensitivity>=0.95"
    assert operating_points.parse("youden").metric is None
    for bad, words in (("recall>=0.9", "not 'youden'"), ("ppv>=1.5", "(0, 1]"), ("specificity<=0.9", "not")):
        with pytest.raises(ValueError, match=re.escape(words)):
            operating_points.parse(bad)
    with pytest.raises(ValueError, match="named twice"):
        operating_points.parse_all(["youden", "YOUDEN"])


def _brute_force(rule: operating_points.Rule, positive: np.ndarray, scores: np.ndarray) -> float | None:
    """The rule's threshold by trying every distinct score, counting the confusion cells directly."""
    best = None
    for t in np.unique(scores)[::-1]:
        called = scores >= t
        tp, fp = (called & positive).sum(), (called & ~positive).sum()
        fn, tn = (~called & positive).sum(), (~called & ~positive).sum()
        value = {
            "sensitivity": tp / (tp + fn),
            "specificity": tn / (tn + fp),
            "ppv": tp / (tp + fp) if tp + fp else np.nan,
            "npv": tn / (tn + fn) if tn + fn else np.nan,
        }
        if rule.metric is None:
            j = value["sensitivity"] + value["specificity"] - 1
            if best is None or j > best[0] + 1e-12:
                best = (j, t)
        elif value[rule.metric] >= rule.target - 1e-9:
            if rule.metric in ("sensitivity", "npv"):
                return float(t)  # the highest feasible
            best = (None, t)  # keep going: the lowest feasible wins
    return None if best is None else float(best[1])


def test_thresholds_match_a_brute_force_search_and_youden_matches_metrics():
    y, probs = six_class_predictions(400, seed=6, signal=1.0)
    probs = np.round(probs, 2)  # ties
    probs /= probs.sum(axis=1, keepdims=True)
    positive, scores = kinds.SINGLE_LABEL.columns(y, probs, labels.CLASS_NAMES)
    rules = operating_points.parse_all(["youden", "sensitivity>=0.9", "specificity>=0.8", "ppv>=0.4", "npv>=0.95"])
    chosen = operating_points.choose(rules, positive, scores, labels.CLASS_NAMES)
    youden = youden_stats.youden_thresholds(y, probs, labels.CLASS_NAMES)
    for c, name in enumerate(labels.CLASS_NAMES):
        assert chosen["youden"][name]["threshold"] == pytest.approx(youden[name])
        for rule in rules:
            assert chosen[rule.text][name]["threshold"] == _brute_force(rule, positive[:, c], scores[:, c]), (
                rule,
                name,
            )


def test_an_unreachable_target_is_reported_unmet_not_clipped():
    positive = np.array([True, False, True, False, False, False])
    scores = np.array([0.9, 0.9, 0.5, 0.4, 0.3, 0.2])  # the top score is shared by a positive and a negative
    row = operating_points.choose_one(operating_points.parse("ppv>=0.9"), positive, scores)
    assert row["threshold"] is None and "the most is 0.667" in row["reason"]
    rules = [operating_points.parse("ppv>=0.9")]
    applied = operating_point_section.apply(
        rules,
        {"ppv>=0.9": {"a": row}},
        positive[:, None],
        scores[:, None],
        ["a"],
        patient_ids=np.arange(6),
        n_bootstrap=20,
        seed=0,
    )
    assert applied["ppv>=0.9"]["a"]["contract"] == "unmet on validation" and "test" not in applied["ppv>=0.9"]["a"]


def test_applied_rates_equal_scikit_learn_and_the_verdict_reads_the_interval():
    rng = np.random.default_rng(7)
    positive = rng.random(600) < 0.3
    scores = np.clip(positive * 0.3 + rng.random(600) * 0.7, 0, 1)
    rule = operating_points.parse("sensitivity>=0.8")
    chosen = {rule.text: {"a": operating_points.choose_one(rule, positive, scores)}}
    applied = operating_point_section.apply(
        [rule],
        chosen,
        positive[:, None],
        scores[:, None],
        ["a"],
        patient_ids=np.arange(600) // 3,
        n_bootstrap=200,
        seed=0,
    )["sensitivity>=0.8"]["a"]
    called = scores >= chosen[rule.text]["a"]["threshold"]
    assert applied["test"]["sensitivity"]["value"] == pytest.approx(skm.recall_score(positive, called))
    assert applied["test"]["ppv"]["value"] == pytest.approx(skm.precision_score(positive, called))
    assert applied["test"]["specificity"]["value"] == pytest.approx(skm.recall_score(~positive, ~called))
    assert applied["test"]["npv"]["value"] == pytest.approx(skm.precision_score(~positive, ~called))
    ci = applied["test"]["sensitivity"]["ci"]
    expected = "met" if ci["low"] >= 0.8 else ("missed" if ci["high"] < 0.8 else "uncertain")
    assert applied["contract"] == expected
    assert operating_point_section._verdict({"low": 0.96, "high": 0.99}, 0.97, 0.95) == "met"
    assert operating_point_section._verdict({"low": 0.90, "high": 0.94}, 0.92, 0.95) == "missed"
    assert operating_point_section._verdict({"low": 0.93, "high": 0.97}, 0.95, 0.95) == "uncertain"


# ----------------------------------------------------------------------------------------- subgroups


@pytest.fixture(scope="module")
def real_data_entry() -> pd.DataFrame:
    return metadata.read_data_entry(REAL_DATA_ENTRY)


def test_cells_follow_the_real_metadata(real_data_entry):
    sample = real_data_entry.sample(3000, random_state=0)
    cells = subgroups.cells_of(sample["Image Index"].tolist(), real_data_entry)
    assert (cells["sex"] == "male").sum() == (sample["Patient Gender"] == "M").sum()
    ages = sample["Patient Age"].to_numpy()
    assert (cells["age"] == "< 40").sum() == ((ages >= 0) & (ages < 40)).sum()
    assert (cells["age"] == ">= 60").sum() == (ages >= 60).sum()
    assert (cells["age"] == subgroups.AGE_MISSING).sum() == (ages == metadata.MISSING_AGE).sum()
    assert (cells["view"] == "AP").sum() == (sample["View Position"] == "AP").sum()
    assert (cells["follow_up"] == "first film").sum() == (sample["Follow-up #"] == 0).sum()
    with pytest.raises(ValueError, match="not in the metadata"):
        subgroups.cells_of(["99999999_000.png"], real_data_entry)


def test_audit_scores_each_cell_like_scikit_learn_flags_a_worse_cell_and_says_when_too_small():
    rng = np.random.default_rng(8)
    n = 1200
    patients = np.arange(n) // 2
    sex = np.where(patients % 2, "male", "female")
    positive = rng.random((n, 2)) < 0.4
    scores = np.clip(positive * 0.5 + rng.random((n, 2)) * 0.5, 0, 1)
    female = sex == "female"
    scores[female, 0] = rng.random(female.sum())  # class a carries no signal in women
    rare = np.zeros(n, bool)
    rare[:8] = True  # class b: 8 positives in the "< 40" cell only
    age = np.where(np.arange(n) < 100, "< 40", ">= 60")
    positive[:100, 1] = rare[:100]
    cells = {"sex": sex, "age": age, "view": np.full(n, "PA"), "follow_up": np.full(n, "first film")}
    audit = subgroups.audit(positive, scores, ["a", "b"], cells, patient_ids=patients, n_bootstrap=200, seed=0)
    women = audit["attributes"]["sex"]["female"]
    assert women["images"] == female.sum() and women["patients"] == np.unique(patients[female]).size
    assert women["per_class"]["a"]["auroc"] == pytest.approx(skm.roc_auc_score(positive[female, 0], scores[female, 0]))
    assert (
        women["per_class"]["a"]["below_overall"]
        and not audit["attributes"]["sex"]["male"]["per_class"]["a"]["below_overall"]
    )
    assert {"attribute": "sex", "cell": "female", "class": "a"} in audit["flagged"]
    young_b = audit["attributes"]["age"]["< 40"]["per_class"]["b"]
    assert young_b["positives"] == 8 and "too_small" in young_b and "auroc" not in young_b
    assert audit["overall_auroc"]["a"] == pytest.approx(skm.roc_auc_score(positive[:, 0], scores[:, 0]))


# ----------------------------------------------------------------------------------- paired tests


def _delong_variance_by_definition(positive, a, b) -> float:
    """Var(AUC_a - AUC_b) from DeLong's definition: psi over every (positive, negative) pair, O(m n)."""

    def components(s):
        x, y = s[positive][:, None], s[~positive][None, :]
        psi = (x > y) + 0.5 * (x == y)
        return psi.mean(axis=1), psi.mean(axis=0)

    (v10a, v01a), (v10b, v01b) = components(a), components(b)
    m, n = len(v10a), len(v01a)
    s10, s01 = np.cov(v10a, v10b), np.cov(v01a, v01b)
    return (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n


def test_delong_equals_its_definition_and_scikit_learn():
    rng = np.random.default_rng(9)
    positive = rng.random(300) < 0.35
    a = np.round(positive * 0.6 + rng.random(300), 1)  # ties within and across groups
    b = np.round(positive * 0.3 + rng.random(300) + 0.2 * a, 1)
    result = paired.delong(positive, a, b)
    assert result["auroc_a"] == pytest.approx(skm.roc_auc_score(positive, a))
    assert result["auroc_b"] == pytest.approx(skm.roc_auc_score(positive, b))
    assert result["variance"] == pytest.approx(_delong_variance_by_definition(positive, a, b), rel=1e-12)
    z = result["difference"] / math.sqrt(result["variance"])
    assert result["p_value"] == pytest.approx(2 * stats.norm.sf(abs(z)))
    assert paired.delong(positive, a, a)["p_value"] == 1.0


def test_delong_p_values_are_roughly_uniform_under_the_null():
    rng = np.random.default_rng(10)
    p_values = []
    for _ in range(300):
        positive = rng.random(200) < 0.4
        shared = rng.normal(size=200)  # the two models see the same case difficulty: correlated scores
        a = positive * 0.8 + shared + rng.normal(size=200)
        b = positive * 0.8 + shared + rng.normal(size=200)
        p_values.append(paired.delong(positive, a, b)["p_value"])
    p_values = np.array(p_values)
    assert 0.02 <= (p_values < 0.05).mean() <= 0.09
    assert stats.kstest(p_values, "uniform").pvalue > 0.001


def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_pairs():
    correct_a = np.array([1] * 30 + [0] * 12 + [1] * 8 + [0] * 50, bool)
    correct_b = np.array([1] * 30 + [1] * 12 + [0] * 8 + [0] * 50, bool)
    result = paired.mcnemar(correct_a, correct_b)
    assert (result["only_a_correct"], result["only_b_correct"], result["both_correct"]) == (8, 12, 30)
    tail = sum(math.comb(20, k) for k in range(0, 9)) / 2**20
    assert result["p_value"] == pytest.approx(min(1.0, 2 * tail))
    assert paired.mcnemar(correct_a, correct_a)["p_value"] == 1.0


def _predictions(names, y, probs):
    return {"image_name": np.array(names), "label": np.asarray(y), "probs": probs, "patient_id": np.arange(len(y)) // 2}


def test_align_reorders_run_b_and_refuses_different_images_labels_or_classes():
    y, probs = six_class_predictions(6, seed=11)
    names = [f"{i:08d}_000.png" for i in range(6)]
    a = _predictions(names, y, probs)
    order = [5, 3, 1, 0, 2, 4]
    b = _predictions([names[i] for i in order], y[order], probs[order] * 0 + 1 / 6)
    aligned = compare.align(a, b, tasks.SIX_CLASS, tasks.SIX_CLASS)
    np.testing.assert_array_equal(aligned["image_name"], a["image_name"])
    with pytest.raises(compare.CompareError, match=r"1 only in run a \(e.g. \['00000005_000.png'\]\), 1 only in run b"):
        compare.align(a, _predictions(names[:5] + ["x.png"], y, probs), tasks.SIX_CLASS, tasks.SIX_CLASS)
    relabelled = _predictions(names, (y + 1) % 6, probs)
    with pytest.raises(compare.CompareError, match="6 images carry different labels"):
        compare.align(a, relabelled, tasks.SIX_CLASS, tasks.SIX_CLASS)
    with pytest.raises(compare.CompareError, match="different classes"):
        compare.align(a, b, tasks.SIX_CLASS, tasks.FULL14)


def test_compare_refuses_other_pixels_under_the_same_names_and_accepts_another_stored_size(tmp_path):
    """Two downloads with the same names and labels but other pixels in one film are refused, naming it;
    one download built at 32 and at 64 px holds the same images. The build report's digest is the
    decoded source film's (checked against a direct computation from the PNG)."""
    tree = write_nih_tree(tmp_path / "nih", patients=12, films=1)
    other = tmp_path / "nih_other"
    shutil.copytree(tree, other)
    edited = sorted((other / "images_001" / "images").iterdir())[3]
    pixels = cv2.imread(str(edited), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(edited), 255 - pixels)  # the same name and label, other pixels

    def source_pixels(root, size):
        built = nih.build_dataset(root, tmp_path / f"data_{root.name}_{size}", nih.make_config("patient", size))
        return building.read_build_report(built)[building.SOURCE_PIXELS]

    at_32, at_64, changed = source_pixels(tree, 32), source_pixels(tree, 64), source_pixels(other, 32)
    original = cv2.imread(str(tree / "images_001" / "images" / edited.name), cv2.IMREAD_GRAYSCALE)
    direct = hashlib.sha256(f"{original.shape[0]}x{original.shape[1]}:".encode() + original.tobytes()).hexdigest()
    assert at_32[edited.name] == direct and len(at_32) == 12
    names = sorted(at_32)
    assert at_32 == at_64
    assert compare.check_same_pixels(names, at_32, at_64) == (
        "checked: the 12 evaluated images have the same source pixels in both datasets"
    )
    with pytest.raises(
        compare.CompareError, match=rf"1 of the 12 evaluated images have other pixels .* e.g. \['{edited.name}'\]"
    ):
        compare.check_same_pixels(names, at_32, changed)
    assert compare.check_same_pixels(names, at_32, None).startswith("not checked: the dataset of run b records no")


def test_comparison_report_differences_and_paired_intervals():
    y, probs_a = six_class_predictions(400, seed=12, signal=2.0)
    _, probs_b = six_class_predictions(400, seed=13, signal=0.5)
    names = [f"{i:08d}_000.png" for i in range(400)]
    a, b = _predictions(names, y, probs_a), _predictions(names, y, probs_b)
    report = compare.comparison_report(a, b, tasks.SIX_CLASS, names=("a", "b"), n_bootstrap=100, seed=0)
    for k, name in enumerate(labels.CLASS_NAMES):
        row = report["per_class"][name]
        expected = skm.roc_auc_score(y == k, probs_a[:, k]) - skm.roc_auc_score(y == k, probs_b[:, k])
        assert row["difference"] == pytest.approx(expected)
        assert row["difference_ci"]["low"] <= row["difference"] <= row["difference_ci"]["high"]
    assert report["mean_difference"] > 0 and report["mean_difference_ci"]["low"] > 0
    assert report["mcnemar"]["only_a_correct"] > report["mcnemar"]["only_b_correct"]
    same = compare.comparison_report(a, a, tasks.SIX_CLASS, names=("a", "a"), n_bootstrap=20, seed=0)
    assert same["mean_difference_ci"]["low"] == same["mean_difference_ci"]["high"] == 0.0
