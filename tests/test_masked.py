"""Masked multi-label (a label set of the harmonised vocabulary): the one conversion from label states to
label and mask, the task and its config keys, the loss and class weights over stated entries, and every
evaluation statistic on the rows that state each label, against scikit-learn and NumPy float64 on those
rows only; a mask of ones gives exactly the unmasked numbers."""

from __future__ import annotations

import csv
import functools
import json

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

from lungjax.config import check
from lungjax.config.base import base_config
from lungjax.data import labels as nih_labels
from lungjax.data import tasks
from lungjax.data.sources import contract, labelspace
from lungjax.evaluation import evaluate, kinds
from lungjax.evaluation.fit import operating_points, temperature
from lungjax.evaluation.sections import calibration, comparison, multi_label, subgroups
from lungjax.evaluation.sections import operating_points as operating_point_section
from lungjax.evaluation.stats import bootstrap, youden
from lungjax.export import manifest
from lungjax.training import loss

LABELS = ("Atelectasis", "Cardiomegaly", "Edema", "Effusion")
STATES = np.array([contract.POSITIVE, contract.NEGATIVE, contract.UNCERTAIN, contract.NOT_STATED], np.int8)


# ------------------------------------------------------------------ label states -> label and mask


def reference_entry(state: int, policy: str) -> tuple[float, float]:
    """(label, mask) of one entry, from the definition: positive and negative are stated; uncertain is
    masked (ignore) or stated as 0 / 1; not stated is masked."""
    if state == contract.POSITIVE:
        return 1.0, 1.0
    if state == contract.NEGATIVE:
        return 0.0, 1.0
    if state == contract.UNCERTAIN and policy in ("zeros", "ones"):
        return float(policy == "ones"), 1.0
    return 0.0, 0.0


@pytest.mark.parametrize("uncertainty", ["ignore", "zeros", "ones", "irvin2019"])
def test_targets_follow_the_definition_entry_by_entry(uncertainty):
    vocabulary = tuple(labelspace.vocabulary())
    states = np.random.default_rng(0).choice(STATES, size=(200, len(vocabulary))).astype(np.int8)
    label, mask = labelspace.targets(states, LABELS, uncertainty=uncertainty)
    assert label.dtype == mask.dtype == np.float32 and label.shape == mask.shape == (200, len(LABELS))
    policies = labelspace.policy_per_label(uncertainty, LABELS)
    for k, name in enumerate(LABELS):
        column = states[:, vocabulary.index(name)]
        expected = np.array([reference_entry(int(s), policies[name]) for s in column])
        np.testing.assert_array_equal(label[:, k], expected[:, 0], err_msg=name)
        np.testing.assert_array_equal(mask[:, k], expected[:, 1], err_msg=name)


def test_targets_refuse_an_uncertain_entry_under_refuse_and_a_wrong_width():
    vocabulary = tuple(labelspace.vocabulary())
    states = np.full((3, len(vocabulary)), contract.NEGATIVE, np.int8)
    states[2, vocabulary.index("Edema")] = contract.UNCERTAIN
    with pytest.raises(contract.SourceError, match=r"row 2 \(c.png\) is uncertain for 'Edema'"):
        labelspace.targets(states, LABELS, uncertainty="refuse", row_names=["a.png", "b.png", "c.png"])
    with pytest.raises(contract.SourceError, match=r"label_states must be \(rows, \d+\) over the vocabulary"):
        labelspace.targets(states[:, :-1], LABELS)


def test_label_matrix_is_targets_on_the_tables_states(xrv_table):
    """label_matrix (a table) and targets (a batch of label_states) are one implementation: CheXpert's
    real table, put into label_states form by hand, gives the same label and mask."""
    from lungjax.data.sources import chexpert

    table = chexpert.table(chexpert.read_csv(xrv_table("chexpert_train.csv.gz"), "chexpert_train.csv.gz"), None)
    vocabulary = tuple(labelspace.vocabulary())
    states = np.full((len(table.frame), len(vocabulary)), contract.NOT_STATED, np.int8)
    for name in table.labels:
        states[:, vocabulary.index(name)] = table.frame[name].to_numpy()
    names = labelspace.resolve("chexpert5")
    for policy in ("ignore", "zeros", "ones", "irvin2019"):
        values, mask = labelspace.label_matrix(table, names, uncertainty=policy)
        label, label_mask = labelspace.targets(states, names, uncertainty=policy)
        np.testing.assert_array_equal(values, label)
        np.testing.assert_array_equal(mask, label_mask.astype(bool))
        edema = table.frame["Edema"]
        assert int(label_mask[:, names.index("Edema")].sum()) == int(
            edema.isin([contract.POSITIVE, contract.NEGATIVE]).sum()
            + (edema == contract.UNCERTAIN).sum() * (policy in ("zeros", "ones", "irvin2019"))
        )


def test_policy_counts_are_targets_summed_over_the_images():
    vocabulary = tuple(labelspace.vocabulary())
    states = np.random.default_rng(1).choice(STATES, size=(500, len(vocabulary))).astype(np.int8)
    counts = {
        name: {contract.STATE_NAMES[s]: int((states[:, k] == s).sum()) for s in contract.STATE_NAMES}
        for k, name in enumerate(vocabulary)
    }
    for policy in ("ignore", "zeros", "ones", "irvin2019"):
        label, mask = labelspace.targets(states, LABELS, uncertainty=policy)
        positives, stated = labelspace.policy_counts(counts, LABELS, uncertainty=policy)
        np.testing.assert_array_equal(positives, (label * mask).sum(axis=0))
        np.testing.assert_array_equal(stated, mask.sum(axis=0))


# ------------------------------------------------------------------ the task and its config


def test_label_set_task_from_a_named_set_or_names():
    named = tasks.label_set(("chexpert5",))
    assert named == tasks.label_set("chexpert5")
    assert named.class_names == labelspace.resolve("chexpert5") and named.multi_label and named.masked
    assert tasks.label_set(LABELS).class_names == LABELS and tasks.label_set(LABELS).name == tasks.LABELS
    assert tasks.label_space(named) == {name: labelspace.vocabulary()[name] for name in named.class_names}
    assert not set(labelspace.named_sets()) & set(labelspace.vocabulary())  # a set's name is never a label's
    assert "masked" not in tasks.FULL14.describe() and tasks.label_space(tasks.FULL14) is None  # NIH's bytes
    assert tasks.label_set(LABELS).describe()["masked"] is True
    config = base_config()
    assert tasks.of_config(config) == tasks.SIX_CLASS
    config.data.labels = ("shared7",)
    assert tasks.of_config(config).class_names == labelspace.resolve("shared7")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"data.labels": ("Edema", "Oedema")},
            r"config.data.labels: \('Edema', 'Oedema'\) is not allowed; allowed: \(\)",
        ),
        ({"data.labels": ("Edema", "Edema")}, r"config.data.labels: .* distinct names of the harmonised vocabulary"),
        ({"data.labels": ("nih15",)}, r"config.data.labels: \('nih15',\) is not allowed; allowed: .*chexpert5"),
        ({"data.uncertainty": "refuse"}, r"config.data.uncertainty: 'refuse' is not allowed; allowed: one of 'ignore'"),
        (
            {"data.labels": ("chexpert5",), "class_weights": [1.0, 2.0]},
            r"config.class_weights: 2 numbers for the 5 classes of data.task='labels'",
        ),
    ],
)
def test_bad_label_sets_and_policies_are_refused_in_one_line(overrides, message):
    config = base_config().to_dict()
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (config[section] if section else config)[name] = value
    with pytest.raises(check.ConfigError, match=message) as refused:
        check.validate(config)
    assert "\n" not in str(refused.value)


def test_a_good_label_set_config_is_accepted():
    config = base_config()
    config.data.labels, config.data.uncertainty = ("Edema", "Effusion"), "irvin2019"
    config.data.task = "full14"  # the phantom's NIH-format build of the 14 findings
    assert check.problems(config) == []
    config.data.source, config.data.manual_dir, config.data.task = "chexpert", "/data/chexpert", "six_class"
    assert check.problems(config) == []  # a source's build: data.task is NIH's alone


def test_a_union_of_nih_format_and_source_builds_is_refused_before_any_build():
    config = base_config()
    config.data.labels, config.data.task = ("nih14",), "full14"
    config.data.sources = (("phantom", 1.0), ("hospital", 1.0, "phantom:A"))
    (problem,) = check.problems(config)
    assert problem.startswith("config.data.sources: 'phantom' and 'hospital' are not allowed in one union; allowed:")


def test_class_counts_of_a_label_set_on_an_nih_build_are_its_records_counted(nih_tree, tmp_path):
    """Lung Lesion-like labels are several NIH findings at once: the counts come from the records."""
    from lungjax.data import building, dataset, records, union

    data = base_config().data
    data.source, data.manual_dir, data.task = "nih", str(nih_tree), "full14"
    data.stored_size, data.build_workers = 32, 1
    builder = dataset.build(data, tmp_path)
    names = ("Effusion", "Nodule/Mass", "No Finding", "Edema")
    task = tasks.label_set(names)
    reports = {"nih": building.read_build_report(builder)}
    ((positives, stated),) = union.stated_counts({"nih": builder}, reports, task, "ignore").values()
    source = records.data_source(builder, "train")
    vectors = np.stack([source[i]["label"] for i in range(len(source))]).astype(bool)
    column = {name: vectors[:, nih_labels.FINDINGS14.index(name)] for name in nih_labels.FINDINGS14}
    expected = [
        column["Effusion"].sum(),
        (column["Nodule"] | column["Mass"]).sum(),
        (~vectors.any(axis=1)).sum(),
        column["Edema"].sum(),
    ]
    np.testing.assert_array_equal(positives, expected)
    np.testing.assert_array_equal(stated, [len(source)] * len(names))  # NIH states each of these on every film


def test_an_nih_builds_boxes_follow_the_label_sets_order():
    from lungjax.data import nih, task_labels

    specs = {"label": (np.dtype(np.int64), (len(nih_labels.FINDINGS14),))}
    names = ("Effusion", "Lung Lesion", "Mass")
    reader = task_labels.TaskLabels(tasks.label_set(names), specs)
    bbox = np.arange(len(nih_labels.FINDINGS14) * 4, dtype=np.float32).reshape(-1, 4)
    boxes = reader.boxes(bbox)
    np.testing.assert_array_equal(boxes[0], bbox[nih_labels.FINDINGS14.index("Effusion")])
    np.testing.assert_array_equal(boxes[1], nih.NO_BOX)  # not an NIH finding: no box of its own
    np.testing.assert_array_equal(boxes[2], bbox[nih_labels.FINDINGS14.index("Mass")])
    assert task_labels.TaskLabels(tasks.FULL14, specs).boxes(bbox) is bbox


def test_a_source_needs_a_label_set_and_a_label_set_needs_nihs_14_findings():
    config = base_config()
    config.data.source, config.data.manual_dir = "chexpert", "/data/chexpert"
    (problem,) = check.problems(config)
    assert problem.startswith("config.data.labels: () is not allowed with data.source='chexpert'; allowed: a label")
    config.data.source, config.data.labels = "phantom", ("chexpert5",)
    (problem,) = check.problems(config)
    assert problem.startswith("config.data.task: 'six_class' is not allowed with data.labels and an NIH-format")


# ------------------------------------------------------------------ the loss and the class weights


def reference_masked_bce(logits, labels, mask, weights, smoothing=0.0, gamma=0.0):
    """Binary cross-entropy with a weighted positive term over the stated entries, float64."""
    z = np.asarray(logits, np.float64)
    p = 1 / (1 + np.exp(-z))
    q = labels * (1 - smoothing) + smoothing / 2
    elements = -(weights * q * (1 - p) ** gamma * np.log(p) + (1 - q) * p**gamma * np.log(1 - p))
    return (elements * mask).sum() / max(mask.sum(), 1.0)


@pytest.mark.parametrize("smoothing,gamma", [(0.0, 0.0), (0.1, 0.0), (0.0, 2.0)])
def test_masked_binary_cross_entropy_matches_float64_over_stated_entries(smoothing, gamma):
    rng = np.random.default_rng(2)
    logits, labels = rng.normal(size=(16, 4)) * 2, rng.integers(0, 2, (16, 4)).astype(np.float32)
    mask, weights = (rng.uniform(size=(16, 4)) < 0.6).astype(np.float32), rng.uniform(0.5, 3, 4)
    options = dict(label_smoothing=smoothing, focal_gamma=gamma)
    got = loss.weighted_binary_cross_entropy(
        jnp.asarray(logits, jnp.float32), jnp.asarray(labels), jnp.asarray(weights, jnp.float32), mask=mask, **options
    )
    expected = reference_masked_bce(logits, labels, mask, weights, smoothing, gamma)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    flipped = np.where(mask > 0, labels, 1 - labels)  # what an unstated entry holds cannot matter
    again = loss.weighted_binary_cross_entropy(
        jnp.asarray(logits, jnp.float32), jnp.asarray(flipped), jnp.asarray(weights, jnp.float32), mask=mask, **options
    )
    assert float(again) == float(got)
    args = (jnp.asarray(logits, jnp.float32), jnp.asarray(labels), jnp.asarray(weights, jnp.float32))
    unmasked = loss.weighted_binary_cross_entropy(*args, **options)
    ones = loss.weighted_binary_cross_entropy(*args, mask=np.ones((16, 4), np.float32), **options)
    np.testing.assert_allclose(float(ones), float(unmasked), rtol=1e-6)


def test_a_batch_that_states_nothing_contributes_zero_with_finite_gradients():
    import jax

    def value(logits):
        return loss.weighted_binary_cross_entropy(
            logits, jnp.ones((4, 3)), jnp.ones(3), mask=jnp.zeros((4, 3), jnp.float32)
        )

    got, gradient = jax.value_and_grad(value)(jnp.ones((4, 3)))
    assert float(got) == 0.0 and np.isfinite(np.asarray(gradient)).all() and not np.asarray(gradient).any()


def test_balanced_weights_count_stated_entries_only():
    class Config:
        class_weights = "balanced"

    positives, stated = np.array([10, 0, 30]), np.array([40, 50, 30])
    weights = loss.class_weights(Config(), positives.tolist(), images=stated, multi_label=True)
    np.testing.assert_array_equal(weights, [30 / 10, 1.0, 0.0])
    np.testing.assert_array_equal(
        loss.class_weights(Config(), [10, 0, 30], images=100, multi_label=True),
        loss.class_weights(Config(), [10, 0, 30], images=np.full(3, 100), multi_label=True),
    )


# ------------------------------------------------------------------ evaluation on the stated rows


@pytest.fixture(scope="module")
def masked_predictions():
    """500 images of 120 patients, four labels with a mask: label 2 has no stated positive, label 3 is
    stated on no image."""
    rng = np.random.default_rng(3)
    n = 500
    y = (rng.uniform(size=(n, 4)) < [0.3, 0.15, 0.2, 0.25]).astype(np.int64)
    probs = np.clip(0.25 * y + rng.uniform(0, 0.75, (n, 4)), 0, 1).astype(np.float32)
    mask = (rng.uniform(size=(n, 4)) < [0.7, 0.5, 0.6, 0.0]).astype(np.float32)
    y[:, 2] *= 1 - mask[:, 2].astype(np.int64)  # no stated positive for label 2
    return {
        "label": y,
        "probs": probs,
        "label_mask": mask,
        "patient_id": rng.integers(0, 120, n),
        "image_name": np.array([f"{i:04d}.png" for i in range(n)]),
    }


def test_multilabel_report_scores_each_label_on_its_stated_rows(masked_predictions):
    p = masked_predictions
    y, probs, mask = p["label"], p["probs"].astype(np.float64), p["label_mask"].astype(bool)
    report = multi_label.multilabel_report(
        y, probs, LABELS, patient_ids=p["patient_id"], n_bootstrap=0, stated=p["label_mask"]
    )
    for c in (0, 1):
        rows = mask[:, c]
        row = report["per_finding"][LABELS[c]]
        assert row["stated"] == rows.sum() and row["support"] == y[rows, c].sum()
        assert row["auroc"] == pytest.approx(roc_auc_score(y[rows, c], probs[rows, c]), abs=1e-12)
        assert row["pr_auc"] == pytest.approx(average_precision_score(y[rows, c], probs[rows, c]), abs=1e-12)
        assert row["log_loss"] == pytest.approx(log_loss(y[rows, c], probs[rows, c], labels=[0, 1]), abs=1e-12)
        assert row["brier"] == pytest.approx(np.mean((probs[rows, c] - y[rows, c]) ** 2), abs=1e-15)
        bins = np.minimum((probs[rows, c] * 10).astype(int), 9)
        ece = (
            sum(
                abs(y[rows, c][bins == b].mean() - probs[rows, c][bins == b].mean()) * (bins == b).sum()
                for b in range(10)
                if (bins == b).any()
            )
            / rows.sum()
        )
        assert row["ece"] == pytest.approx(ece, abs=1e-12)
    no_positive, nowhere = report["per_finding"][LABELS[2]], report["per_finding"][LABELS[3]]
    assert no_positive["auroc"] is None and no_positive["note"].startswith("no positive examples")
    assert no_positive["log_loss"] is not None
    assert nowhere["stated"] == 0 and nowhere["auroc"] is None and nowhere["log_loss"] is None
    assert nowhere["note"].startswith("stated on no image")
    assert report["means_over"] == list(LABELS[:2])
    assert report["mean_auroc"] == pytest.approx(np.mean([report["per_finding"][n]["auroc"] for n in LABELS[:2]]))


def test_bootstrap_intervals_score_the_drawn_images_that_state_each_label(masked_predictions):
    p = masked_predictions
    y, probs, mask = p["label"], p["probs"].astype(np.float64), p["label_mask"].astype(bool)
    report = multi_label.multilabel_report(
        y, probs, LABELS, patient_ids=p["patient_id"], n_bootstrap=50, seed=7, stated=p["label_mask"]
    )
    _, index = np.unique(p["patient_id"], return_inverse=True)
    weights = bootstrap.patient_bootstrap_weights(index, index.max() + 1, 50, np.random.default_rng(7))
    for c in (0, 1):
        rows = mask[:, c]
        draws = [roc_auc_score(y[rows, c], probs[rows, c], sample_weight=w[rows]) for w in weights]
        expected = bootstrap.interval(np.array(draws))
        got = report["confidence_intervals"]["per_finding"][LABELS[c]]["auroc"]
        assert got["n_used"] == expected["n_used"]
        assert got["low"] == pytest.approx(expected["low"], abs=1e-12)
        assert got["high"] == pytest.approx(expected["high"], abs=1e-12)


def test_validation_fits_use_the_stated_rows(masked_predictions):
    p = masked_predictions
    y, probs, mask = p["label"], p["probs"], p["label_mask"].astype(bool)
    thresholds = youden.youden_thresholds_multilabel(y, probs, LABELS, p["label_mask"])
    fitted = temperature.fit(y, probs, LABELS, True, p["label_mask"])
    rules = operating_points.parse_all(("youden", "sensitivity>=0.9"))
    chosen = operating_points.choose(rules, y.astype(bool), probs.astype(np.float64), LABELS, mask)
    for c in (0, 1):
        rows = mask[:, c]
        alone = youden.youden_thresholds_multilabel(y[rows][:, [c]], probs[rows][:, [c]], (LABELS[c],))
        assert thresholds[LABELS[c]] == alone[LABELS[c]]
        assert (
            fitted["temperatures"][c]
            == temperature.fit(y[rows][:, [c]], probs[rows][:, [c]], (LABELS[c],), True)["temperatures"][0]
        )
        for rule in rules:
            expected = operating_points.choose_one(rule, y[rows, c].astype(bool), probs[rows, c].astype(np.float64))
            assert chosen[rule.text][LABELS[c]] == expected
    assert thresholds[LABELS[2]] is None and thresholds[LABELS[3]] is None
    assert fitted["not_fitted"] == {
        LABELS[2]: "no positive validation images",
        LABELS[3]: "no stated validation images",
    }
    assert chosen["youden"][LABELS[3]]["reason"] == "no stated images on validation"
    j = youden.youden_j_multilabel(y, probs, thresholds, LABELS, p["label_mask"])
    rows = mask[:, 0]
    called = probs[rows, 0] >= thresholds[LABELS[0]]
    truth = y[rows, 0].astype(bool)
    expected_j = (called & truth).sum() / truth.sum() + (~called & ~truth).sum() / (~truth).sum() - 1
    assert j[LABELS[0]]["youden_j"] == pytest.approx(expected_j, abs=1e-12)
    assert j[LABELS[0]]["positives"] + j[LABELS[0]]["negatives"] == rows.sum()


def test_decision_sections_count_the_stated_rows(masked_predictions):
    p = masked_predictions
    y, probs, mask = p["label"], p["probs"].astype(np.float64), p["label_mask"].astype(bool)
    positive = y.astype(bool)
    fitted = temperature.fit(y, probs, LABELS, True, mask)
    report = calibration.calibration_report(
        y, probs, fitted, LABELS, multi_label=True, patient_ids=p["patient_id"], n_bootstrap=0, seed=0, stated=mask
    )
    calibrated = temperature.apply(probs, fitted["temperatures"], True)
    for c in (0, 1, 2):
        rows = mask[:, c]
        before = log_loss(y[rows, c], probs[rows, c], labels=[0, 1])
        after = log_loss(y[rows, c], calibrated[rows, c], labels=[0, 1])
        assert report["per_finding"][LABELS[c]]["before_log_loss"]["value"] == pytest.approx(before, abs=1e-12)
        assert report["per_finding"][LABELS[c]]["after_log_loss"]["value"] == pytest.approx(after, abs=1e-12)
    assert report["per_finding"][LABELS[3]]["before_log_loss"]["value"] is None
    means = [report["per_finding"][n]["before_log_loss"]["value"] for n in LABELS[:3]]
    assert report["before_log_loss"]["value"] == pytest.approx(np.mean(means), abs=1e-12)

    rules = operating_points.parse_all(("youden",))
    chosen = operating_points.choose(rules, positive, probs, LABELS, mask)
    applied = operating_point_section.apply(
        rules, chosen, positive, probs, LABELS, patient_ids=p["patient_id"], n_bootstrap=0, seed=0, stated=mask
    )
    rows = mask[:, 1]
    called = probs[rows, 1] >= chosen["youden"][LABELS[1]]["threshold"]
    truth = positive[rows, 1]
    test = applied["youden"][LABELS[1]]["test"]
    assert test["sensitivity"]["value"] == pytest.approx((called & truth).sum() / truth.sum(), abs=1e-15)
    assert test["npv"]["value"] == pytest.approx((~called & ~truth).sum() / (~called).sum(), abs=1e-15)

    cells = {attribute: np.where(np.arange(len(y)) % 2 == 0, "even", "odd") for attribute in subgroups.ATTRIBUTES}
    audit = subgroups.audit(
        positive, probs, LABELS, cells, patient_ids=p["patient_id"], n_bootstrap=0, seed=0, stated=mask
    )
    even = (np.arange(len(y)) % 2 == 0) & mask[:, 0]
    row = audit["attributes"]["view"]["even"]["per_class"][LABELS[0]]
    assert row["positives"] + row["negatives"] == even.sum()
    assert row["auroc"] == pytest.approx(roc_auc_score(y[even, 0], probs[even, 0]), abs=1e-12)
    assert audit["overall_auroc"][LABELS[0]] == pytest.approx(roc_auc_score(y[mask[:, 0], 0], probs[mask[:, 0], 0]))


def test_paired_comparison_on_the_stated_rows_and_refused_for_other_masks(masked_predictions):
    p = masked_predictions
    task = tasks.label_set(LABELS)
    other = {**p, "probs": np.clip(p["probs"] + 0.1 * np.random.default_rng(4).normal(size=p["probs"].shape), 0, 1)}
    report = comparison.comparison_report(p, other, task, names=("a", "b"), n_bootstrap=0, seed=0)
    rows = p["label_mask"][:, 0].astype(bool)
    row = report["per_class"][LABELS[0]]
    assert row["auroc_a"] == pytest.approx(roc_auc_score(p["label"][rows, 0], p["probs"][rows, 0]), abs=1e-12)
    assert row["auroc_b"] == pytest.approx(roc_auc_score(p["label"][rows, 0], other["probs"][rows, 0]), abs=1e-12)
    assert report["mean_over"] == list(LABELS[:2])
    changed = {**other, "label_mask": p["label_mask"].copy()}
    changed["label_mask"][5, 1] = 1 - changed["label_mask"][5, 1]
    with pytest.raises(comparison.CompareError, match="1 images carry different labels"):
        comparison.align(p, changed, task, task)


def test_a_mask_of_ones_gives_the_unmasked_report_byte_for_byte():
    """NIH's numbers do not move: every section with a mask of ones is the section without one."""
    rng = np.random.default_rng(5)
    n = 300
    y = (rng.uniform(size=(n, 14)) < 0.2).astype(np.int64)
    y[:, 13] = 0  # a finding without positives, as NIH's rarest can be
    probs = np.clip(0.3 * y + rng.uniform(0, 0.7, (n, 14)), 0, 1).astype(np.float32)
    plain = {"label": y, "probs": probs, "patient_id": rng.integers(0, 80, n)}
    ones = {**plain, "label_mask": np.ones((n, 14), np.float32)}
    names, kind = nih_labels.FINDINGS14, kinds.MULTI_LABEL

    def sections(predictions):
        thresholds = kind.youden_thresholds(predictions, names)
        metrics = kind.metrics_section(predictions, names, thresholds=thresholds, n_bootstrap=30, seed=1)
        positive, scores = kind.columns(predictions["label"], predictions["probs"], names)
        stated = kind.stated(predictions, names)
        rules = operating_points.parse_all(("youden", "specificity>=0.9"))
        chosen = operating_points.choose(rules, positive, scores, names, stated)
        fitted = temperature.fit(predictions["label"], predictions["probs"], names, True, stated)
        common = dict(patient_ids=predictions["patient_id"], n_bootstrap=30, seed=1)
        cells = {attribute: np.where(np.arange(n) < 150, "a", "b") for attribute in subgroups.ATTRIBUTES}
        return json.dumps(
            {
                "metrics": metrics,
                "j": kind.youden_j(predictions, thresholds, names),
                "chosen": chosen,
                "fitted": fitted,
                "points": operating_point_section.apply(
                    rules, chosen, positive, scores, names, stated=stated, **common
                ),
                "calibration": calibration.calibration_report(
                    predictions["label"], predictions["probs"], fitted, names, multi_label=True, stated=stated, **common
                ),
                "subgroups": subgroups.audit(positive, scores, names, cells, stated=stated, **common),
            }
        )

    assert sections(ones) == sections(plain)
    task = tasks.FULL14
    with_b = {**plain, "probs": np.clip(probs + 0.05, 0, 1)}
    assert json.dumps(
        comparison.comparison_report(
            ones, {**with_b, "label_mask": ones["label_mask"]}, task, names=("a", "b"), n_bootstrap=20, seed=0
        )
    ) == json.dumps(comparison.comparison_report(plain, with_b, task, names=("a", "b"), n_bootstrap=20, seed=0))


# ------------------------------------------------------------------ what a masked run writes and carries


def test_predictions_csv_leaves_unstated_entries_blank(tmp_path, masked_predictions):
    p = {**masked_predictions}
    task = tasks.label_set(LABELS)
    evaluate.write_predictions(tmp_path / "predictions.csv", p, task)
    with (tmp_path / "predictions.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["image_name", "patient_id", *(f"true {n}" for n in LABELS), *LABELS]
    for row, label, mask, probs in zip(rows[1:], p["label"], p["label_mask"], p["probs"], strict=True):
        assert row[2:6] == [str(int(y)) if m else "" for y, m in zip(label, mask, strict=True)]
        assert np.array(row[6:], np.float32).tolist() == probs.tolist()
    unmasked = {key: value for key, value in p.items() if key != "label_mask"}
    evaluate.write_predictions(tmp_path / "full14.csv", unmasked, tasks.label_set(LABELS))
    with (tmp_path / "full14.csv").open() as handle:
        assert next(csv.reader(handle))[2] == "true_findings"


def test_report_task_section_export_manifest_and_kind_carry_the_label_space():
    config = base_config()
    config.data.labels, config.data.uncertainty = ("chexpert5",), "irvin2019"
    task = tasks.of_config(config)
    section = evaluate.report_task(task, config)
    space = {name: labelspace.vocabulary()[name] for name in labelspace.resolve("chexpert5")}
    assert section["class_names"] == list(space) and section["label_space"] == space and section["masked"]
    assert section["uncertainty"] == "irvin2019" and section["sources"] == ["phantom"]
    assert kinds.of_report({"task": section}) is kinds.MULTI_LABEL
    assert kinds.of_report({"task": evaluate.report_task(tasks.SIX_CLASS, base_config())}) is kinds.SINGLE_LABEL
    assert "label_space" not in evaluate.report_task(tasks.FULL14, base_config())
    exported = manifest.task_section(task)
    assert exported["class_names"] == list(space) and exported["label_space"] == space
    assert "label_space" not in manifest.task_section(tasks.FULL14)


# ------------------------------------------------------------------ end to end: a masked run on a source's build


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory):
    """``configs/tiny.py`` training the label set nih14 on a phantom hospital export (a source's build:
    label states over the vocabulary, a fifth of the entries not stated and a tenth uncertain), through
    the real input pipeline."""
    from conftest import load_config

    from lungjax.data.phantom import source_trees
    from lungjax.training import loop as train

    root = tmp_path_factory.mktemp("masked")
    tree = source_trees.write_hospital_tree(
        root / "hospital", 40, image_size=32, formats=("png",), not_stated_rate=0.2, uncertain_rate=0.1
    )
    config = load_config("tiny")
    config.data.source, config.data.manual_dir = "hospital", str(tree.manual_dir)
    config.data.labels, config.data.uncertainty = ("nih14",), "ones"
    config.eval.n_bootstrap = 20
    report = train.train_and_evaluate(config, root / "run")
    yield config, root / "run", report, tree


@pytest.mark.slow
def test_a_masked_run_trains_evaluates_and_predicts_on_the_stated_entries(masked_run, capsys):
    import pandas as pd

    from lungjax.data.sources import hospital
    from lungjax.evaluation import predict

    config, workdir, report, tree = masked_run
    names = nih_labels.FINDINGS14
    assert report["task"]["name"] == tasks.LABELS and report["task"]["class_names"] == list(names)
    assert list(report["task"]["label_space"]) == list(names) and report["task"]["masked"]
    rows = pd.read_csv(workdir / "eval" / "test" / "predictions.csv", keep_default_na=False, dtype=str)
    assert list(rows.columns) == ["image_name", "patient_id", *(f"true {n}" for n in names), *names]
    # The truth is the export's own entry: 1 and 0 as written; uncertain (-1) and blank are not scored,
    # whatever policy trained (uncertainty="ones" here).
    export = pd.read_csv(tree.manual_dir / hospital.CSV, keep_default_na=False, dtype=str).set_index("path")
    for name in names:
        written = export.loc[rows["image_name"], name].to_numpy()
        np.testing.assert_array_equal(rows[f"true {name}"], np.where(np.isin(written, ["1", "0"]), written, ""))
        stated = rows[f"true {name}"] != ""
        assert 0 < stated.sum() < len(rows), name
        row = report["per_finding"][name]
        assert row["stated"] == int(stated.sum()) and report["n_images"] == len(rows)
        truth = rows.loc[stated, f"true {name}"].astype(int)
        assert row["support"] == int(truth.sum())
        if row["auroc"] is not None:
            scores = rows.loc[stated, name].astype(np.float32).astype(np.float64)
            assert row["auroc"] == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
    assert set(report["subgroups"]["attributes"]) == {"sex", "age", "view"}  # from the records
    assert rows["patient_id"].str.startswith("H").all()  # the export's own string ids
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(m["loss"]) for m in metrics if "loss" in m)
    image = tree.manual_dir / rows["image_name"][0]
    assert predict.predict_files(config, workdir, [str(image)]) == 0
    out = capsys.readouterr().out
    assert out.count("label space: Atelectasis: ") == 1


def test_training_batches_follow_the_uncertainty_policy_and_evaluation_masks_uncertain_entries(tmp_path):
    """The pipeline's labels against ``labelspace.targets`` on the records' own label states: training
    under the run's policy, evaluation under 'ignore'."""
    from lungjax.data import pipeline, task_labels

    vocabulary = tuple(labelspace.vocabulary())
    states = np.random.default_rng(1).choice(STATES, size=(6, len(vocabulary))).astype(np.int8)
    specs = {"label_states": (np.dtype(np.int8), (len(vocabulary),))}
    task = tasks.label_set(LABELS, "ones")
    train_labels = task_labels.TaskLabels(task, specs, "ones")
    eval_labels = task_labels.TaskLabels(task, specs, task_labels.EVALUATION_UNCERTAINTY)
    for policy, reader in (("ones", train_labels), ("ignore", eval_labels)):
        label, mask = labelspace.targets(states, LABELS, uncertainty=policy)
        for k, row in enumerate(states):
            got = reader(list(row))
            np.testing.assert_array_equal(got["label"], label[k])
            np.testing.assert_array_equal(got["label_mask"], mask[k])
    with pytest.raises(contract.SourceError, match="task 'full14' cannot read it; name the labels"):
        task_labels.TaskLabels(tasks.FULL14, specs)
    assert pipeline.stored_task(specs) is tasks.FULL14


def test_an_nih_build_read_as_a_label_set_states_nihs_findings_and_no_finding():
    from lungjax.data import task_labels

    specs = {"label": (np.dtype(np.int64), (len(nih_labels.FINDINGS14),))}
    names = ("Mass", "Nodule", "Lung Lesion", "No Finding", "Edema", "Fracture")
    reader = task_labels.TaskLabels(tasks.label_set(names), specs)
    findings = np.zeros(len(nih_labels.FINDINGS14), np.int64)
    got = reader(findings)
    expected_mask = [name in labelspace.source_labels("nih") for name in names]
    np.testing.assert_array_equal(got["label_mask"], expected_mask)
    np.testing.assert_array_equal(got["label"], [n == "No Finding" for n in names])
    findings[nih_labels.FINDINGS14.index("Mass")] = 1
    expected = labelspace.harmonise(
        "nih", {n: np.array([int(n == "Mass")]) for n in (*nih_labels.FINDINGS14, "No Finding")}
    )
    got = reader(findings)
    for k, name in enumerate(names):
        if name in expected:
            assert got["label"][k] == int(expected[name][0] == contract.POSITIVE), name
    with pytest.raises(contract.SourceError, match="NIH's builds of the 14 findings only"):
        task_labels.TaskLabels(tasks.label_set(names), {"label": (np.dtype(np.int64), ())})


@pytest.mark.slow
def test_the_train_step_takes_the_mask_from_the_batch():
    """What an unstated entry holds moves nothing: two batches differing only there take the same step,
    and a batch without ``label_mask`` counts every entry."""
    import jax
    from flax import nnx

    from lungjax import models
    from lungjax.runtime import sharding
    from lungjax.training import loop, optim, step

    config = base_config()
    config.model.name, config.model.width = "resnet18", 0.125
    model = models.from_config(config.model, num_classes=4, half_precision=False, seed=0)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    tx = optim.make_optimizer(config, optim.learning_rate_schedule(config, 10, 100))
    state = loop.initial_state(config, params, batch_stats, tx)  # the training loop's own
    train_step = step.make_train_step(
        config, graphdef=graphdef, tx=tx, class_weights=jnp.ones(4), mesh=sharding.make_mesh(), multi_label=True
    )
    rng = np.random.default_rng(0)
    image = jnp.asarray(rng.integers(0, 256, (8, 32, 32, 1)), jnp.uint8)
    label = rng.integers(0, 2, (8, 4)).astype(np.float32)
    mask = (rng.uniform(size=(8, 4)) < 0.5).astype(np.float32)
    flipped = np.where(mask > 0, label, 1 - label)
    copy = functools.partial(jax.tree.map, jnp.copy)  # the step donates its state
    results = [
        train_step(copy(state), {"image": image, "label": jnp.asarray(y), "label_mask": jnp.asarray(mask)})
        for y in (label, flipped)
    ]
    (first, first_metrics), (second, second_metrics) = results
    assert float(first_metrics.compute()["loss"]) == float(second_metrics.compute()["loss"])
    for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(second.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    _, unmasked = train_step(copy(state), {"image": image, "label": jnp.asarray(label)})
    _, masked_ones = train_step(
        copy(state), {"image": image, "label": jnp.asarray(label), "label_mask": jnp.ones((8, 4), jnp.float32)}
    )
    np.testing.assert_allclose(float(masked_ones.compute()["loss"]), float(unmasked.compute()["loss"]), rtol=1e-6)
    assert float(first_metrics.compute()["loss"]) != float(unmasked.compute()["loss"])


def test_the_inference_gather_carries_label_mask_when_batches_have_it():
    import jax

    from lungjax.evaluation import inference
    from lungjax.runtime import sharding

    mesh = sharding.make_mesh()
    rows = 2 * jax.device_count()
    rng = np.random.default_rng(6)

    def batches(with_mask: bool):
        for start in (0, rows):
            batch = {
                "image": np.zeros((rows, 4, 4, 1), np.uint8),
                "label": rng.integers(0, 2, (rows, 3)),
                "image_name": np.array([f"{start + i}.png".encode() for i in range(rows)], object),
                "patient_id": np.arange(start, start + rows),
                "bbox": np.zeros((rows, 3, 4), np.float32),
                "mask": np.arange(rows) < (rows if start == 0 else rows - 1),  # the last row pads
            }
            if with_mask:
                batch["label_mask"] = (np.arange(rows * 3).reshape(rows, 3) + start) % 2
            yield batch

    def predict(model_state, images):
        return jnp.zeros((images.shape[0], 3), jnp.float32)

    masked = inference.predict_split(predict, {}, batches(True), mesh)
    expected = np.concatenate([(np.arange(rows * 3).reshape(rows, 3) + s) % 2 for s in (0, rows)])[: 2 * rows - 1]
    np.testing.assert_array_equal(masked["label_mask"], expected)
    assert len(masked["label"]) == 2 * rows - 1
    assert "label_mask" not in inference.predict_split(predict, {}, batches(False), mesh)


def test_serve_prints_the_label_space_once(tmp_path, capsys, monkeypatch):
    import cv2

    from lungjax.evaluation.fit import ood
    from lungjax.serve import bundle as serve_bundle
    from lungjax.serve.__main__ import main as serve_main

    names = ("Edema", "Effusion")
    space = {name: labelspace.vocabulary()[name] for name in names}
    manifest_ = {
        "task": {"class_names": list(names), "multi_label": True, "label_space": space},
        "input": {"stored_size": 16, "image_size": 8},
        "decision": {"thresholds": {"youden": dict.fromkeys(names, 0.5)}, "temperature": {"temperatures": [1.0, 1.0]}},
        "provenance": {"training_sources": ["phantom"]},
    }

    def predict(batch):  # the probabilities, and one feature at the mean of the films it was fitted on
        return np.full((len(batch), 2), 0.25, np.float32), np.zeros((len(batch), 1), np.float32)

    rng = np.random.default_rng(0)
    unlike = ood.fit(rng.normal(size=(50, 1)), rng.normal(size=(50, 1)))
    loaded = serve_bundle.Bundle(tmp_path, manifest_, "float32", predict, unlike)
    monkeypatch.setattr(serve_bundle, "load", lambda *_: loaded)
    films = tmp_path / "films"
    films.mkdir()
    for n in range(2):
        pixels = np.full((40, 40), 60 + 50 * n, np.uint8)
        pixels[::4] += 30
        (films / f"{n}.png").write_bytes(cv2.imencode(".png", pixels)[1].tobytes())
    assert serve_main(["--export", str(tmp_path), "--images", str(films), "--out", str(tmp_path / "out")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "label space" in line]
    assert lines == [f"lungjax.serve: label space: Edema: {space['Edema']}; Effusion: {space['Effusion']}"]
