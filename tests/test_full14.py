"""The 14-finding task on the real NIH metadata and lists: NIH's official split exactly, the patient
split's prevalence, lists that do not fit, view positions; the multi-label loss against NumPy."""

import gzip
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from lungjax.config.base import base_config
from lungjax.data import labels, metadata
from lungjax.training import loss

DATA = Path(__file__).parent / "data"
# NIH's test list, per finding (the figures; the full table is derived from the files below).
TEST_COUNTS = {"Infiltration": 6112, "Effusion": 4658, "Atelectasis": 3279, "Pneumothorax": 2665, "Hernia": 86}
TEST_NO_FINDING = 9861


def read_list(name: str) -> list[str]:
    return gzip.decompress((DATA / name).read_bytes()).decode().split()


@pytest.fixture(scope="module")
def data_entry() -> pd.DataFrame:
    return metadata.read_data_entry(DATA / "Data_Entry_2017_v2020.csv.gz")


@pytest.fixture(scope="module")
def official(data_entry) -> dict[str, pd.DataFrame]:
    chosen = metadata.select_findings14(data_entry)
    return metadata.split_official(
        chosen,
        read_list("train_val_list.txt.gz"),
        read_list("test_list.txt.gz"),
        all_names=data_entry["Image Index"],
        all_patients=data_entry["Patient ID"],
    )


def finding_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Per finding, from the raw strings: an independent count of what the vectors say."""
    counts = dict.fromkeys((*labels.FINDINGS14, labels.NO_FINDING), 0)
    for value in frame["Finding Labels"]:
        for name in value.split("|"):
            counts[name] += 1
    return counts


def test_official_split_is_nih_lists_exactly_and_patient_disjoint(official):
    test_list, train_val = read_list("test_list.txt.gz"), read_list("train_val_list.txt.gz")
    assert len(test_list) == 25_596 and len(train_val) == 86_524
    assert sorted(official["test"]["Image Index"]) == sorted(test_list)
    assert sorted([*official["train"]["Image Index"], *official["validation"]["Image Index"]]) == sorted(train_val)
    assert metadata.patients_crossing(official) == 0
    assert official["test"]["Patient ID"].nunique() == 2_797
    assert official["train"]["Patient ID"].nunique() + official["validation"]["Patient ID"].nunique() == 28_008
    share = official["validation"]["Patient ID"].nunique() / 28_008
    assert share == pytest.approx(metadata.OFFICIAL_VALIDATION_SHARE, abs=0.01)


def test_official_test_split_counts_per_finding(official):
    test = official["test"]
    counts = finding_counts(test)
    assert {name: counts[name] for name in TEST_COUNTS} == TEST_COUNTS
    assert counts[labels.NO_FINDING] == TEST_NO_FINDING
    vectors = np.stack(test["findings"].to_numpy())
    assert dict(zip(labels.FINDINGS14, vectors.sum(axis=0).tolist(), strict=True)) == {
        n: counts[n] for n in labels.FINDINGS14
    }
    assert int((vectors.sum(axis=1) == 0).sum()) == TEST_NO_FINDING


def test_patient_split_keeps_every_findings_prevalence_within_one_point(data_entry):
    chosen = metadata.select_findings14(data_entry)
    splits = metadata.split_by_patient(chosen)
    assert metadata.patients_crossing(splits) == 0
    assert sum(len(frame) for frame in splits.values()) == len(chosen) == 112_120
    overall = np.stack(chosen["findings"].to_numpy()).mean(axis=0)
    for name, frame in splits.items():
        prevalence = np.stack(frame["findings"].to_numpy()).mean(axis=0)
        assert np.abs(prevalence - overall).max() < 0.01, name
    shares = [len(splits[name]) / len(chosen) for name in metadata.SPLIT_NAMES]
    assert shares == pytest.approx(metadata.PATIENT_SPLIT_SHARES, abs=0.01)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda tv, test: (tv + ["99999999_000.png"], test),
            r"train_val_list.txt names 1 images missing .*99999999_000",
        ),
        (lambda tv, test: (tv, test + tv[:1]), r"1 images are on both lists, e.g. \['00000001_000.png'\]"),
        (lambda tv, test: (tv[1:], test), r"1 metadata rows are on neither list, e.g. \['00000001_000.png'\]"),
        (
            lambda tv, test: (tv[:1] + tv[2:], test + tv[1:2]),
            r"1 patients have images on both lists, e.g. patients \[1\]",
        ),
    ],
)
def test_lists_that_do_not_fit_the_metadata_stop_naming_offenders(change, message):
    data_entry = pd.DataFrame(
        {
            "Image Index": ["00000001_000.png", "00000001_001.png", "00000002_000.png", "00000003_000.png"],
            "Finding Labels": ["Effusion", "No Finding", "Mass|Nodule", "Hernia"],
            "Patient ID": [1, 1, 2, 3],
            "View Position": ["PA", "AP", "PA", "PA"],
        }
    )
    train_val, test = change(["00000001_000.png", "00000001_001.png", "00000002_000.png"], ["00000003_000.png"])
    with pytest.raises(metadata.MetadataError, match=message):
        metadata.split_official(
            metadata.select_findings14(data_entry),
            train_val,
            test,
            all_names=data_entry["Image Index"],
            all_patients=data_entry["Patient ID"],
        )


def test_views_select_one_position_and_labels_are_whole_names(data_entry):
    pa = metadata.select_findings14(data_entry, views="PA")
    assert len(pa) == int((data_entry["View Position"] == "PA").sum()) and set(pa["View Position"]) == {"PA"}
    bad = data_entry.head(3).assign(**{"Finding Labels": ["Effusion", "Massive", "No Finding"]})
    with pytest.raises(metadata.MetadataError, match=r"1 rows have Finding Labels outside .*'Massive'"):
        metadata.select_findings14(bad)
    assert labels.multi_hot("Mass|Nodule").tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert labels.multi_hot("No Finding|Mass") is None


def reference_bce(logits, targets, weights, smoothing=0.0, gamma=0.0):
    """Positive-weighted binary cross-entropy per element, mean over all, in float64."""
    z = np.asarray(logits, np.float64)
    p = 1 / (1 + np.exp(-z))
    q = targets * (1 - smoothing) + smoothing / 2
    positive = weights * q * (1 - p) ** gamma * np.log(p)
    negative = (1 - q) * p**gamma * np.log(1 - p)
    return -(positive + negative).mean()


@pytest.mark.parametrize("smoothing,gamma", [(0.0, 0.0), (0.1, 0.0), (0.0, 2.0), (0.1, 1.5)])
def test_binary_cross_entropy_matches_float64_reference(smoothing, gamma):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (32, 14)).astype(np.float32)
    targets = (rng.random((32, 14)) < 0.2).astype(np.uint8)
    weights = rng.uniform(0.5, 20, 14)
    got = loss.weighted_binary_cross_entropy(
        jnp.asarray(logits),
        jnp.asarray(targets),
        jnp.asarray(weights, jnp.float32),
        label_smoothing=smoothing,
        focal_gamma=gamma,
    )
    assert float(got) == pytest.approx(reference_bce(logits, targets, weights, smoothing, gamma), rel=1e-5)


def test_balanced_positive_weights_are_negatives_over_positives():
    config = base_config()
    weights = loss.class_weights(config, [10, 0, 90], images=100, multi_label=True)
    assert weights.tolist() == [9.0, 1.0, 10 / 90]


# --- train, evaluate and predict the 14 findings end to end ----------------------------------------


@pytest.fixture(scope="module")
def full14_run(nih_tree, tmp_path_factory):
    """``configs/tiny.py`` on the 14-finding task, split by NIH-style lists written for the tree."""
    from conftest import load_config

    from lungjax.training import loop as train

    root = tmp_path_factory.mktemp("full14")
    tree = root / "nih"
    shutil.copytree(nih_tree, tree)
    names = pd.read_csv(tree / "Data_Entry_2017.csv", usecols=[0, 3])
    test = names["Patient ID"] > 45
    (tree / "test_list.txt").write_text("\n".join(names["Image Index"][test]) + "\n")
    (tree / "train_val_list.txt").write_text("\n".join(names["Image Index"][~test]) + "\n")
    config = load_config("tiny")
    config.data.source, config.data.manual_dir, config.data.task = "nih", str(tree), "full14"
    config.eval.n_bootstrap = 50
    report = train.train_and_evaluate(config, root / "run")
    return config, root / "run", report


@pytest.mark.slow
def test_full14_report_equals_sklearn_on_its_predictions(full14_run):
    from sklearn.metrics import average_precision_score, roc_auc_score

    _, workdir, report = full14_run
    predictions = pd.read_csv(workdir / "eval" / "test" / "predictions.csv")
    assert list(predictions.columns) == ["image_name", "patient_id", "true_findings", *labels.FINDINGS14]
    truth = np.stack([labels.multi_hot(value) for value in predictions["true_findings"]])
    assert report["task"]["name"] == "full14" and report["split_scheme"].startswith("official")
    for k, name in enumerate(labels.FINDINGS14):
        row = report["per_finding"][name]
        assert row["support"] == int(truth[:, k].sum())
        if 0 < truth[:, k].sum() < len(truth):
            assert row["auroc"] == pytest.approx(roc_auc_score(truth[:, k], predictions[name]), abs=1e-7)
            assert row["pr_auc"] == pytest.approx(average_precision_score(truth[:, k], predictions[name]), abs=1e-7)
        else:
            assert row["auroc"] is None
    assert set(report["explain"]["pointing_game"]["per_class"]) <= set(labels.FINDINGS14)
    assert report["explain"]["pointing_game"]["n"] > 0
    markdown = (workdir / "eval" / "test" / "report.md").read_text()
    assert "Wang" in markdown and "CheXNet" in markdown
    assert (workdir / "eval" / "test" / "roc.png").is_file()


@pytest.mark.slow
def test_full14_predict_prints_fourteen_probabilities(full14_run, nih_tree, capsys):
    from lungjax.evaluation import predict

    config, workdir, _ = full14_run
    image = sorted((nih_tree / "images_001" / "images").iterdir())[0]
    assert predict.predict_files(config, workdir, [str(image)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(f"{image}: "))
    probabilities = {name: float(line.split(f" {name} ")[1].split()[0]) for name in labels.FINDINGS14}
    assert len(probabilities) == 14 and all(0 <= p <= 1 for p in probabilities.values())


def test_expert_labels_compare_with_sklearn_on_the_same_images(data_entry):
    from sklearn.metrics import roc_auc_score

    from lungjax.evaluation.sections import expert

    google = pd.read_csv(
        DATA / "google2019_nih-chest-xray-labels.csv.gz",
        usecols=["Image Index", "Pneumothorax", "Nodule or mass"],
        dtype=str,
    )
    rows = data_entry.set_index("Image Index").loc[
        google["Image Index"][::3]
    ]  # a third, plus images without expert labels
    unlabelled = data_entry[~data_entry["Image Index"].isin(google["Image Index"])].head(50)
    rows = pd.concat([rows, unlabelled.set_index("Image Index")])
    truth = np.stack(rows["Finding Labels"].map(labels.multi_hot).to_numpy())
    probs = np.random.default_rng(0).random(truth.shape) * 0.5 + truth * 0.3
    predictions = {"image_name": rows.index.to_numpy(), "label": truth, "probs": probs}
    path = DATA / "google2019_nih-chest-xray-labels.csv.gz"
    result = expert.compare(predictions, labels.FINDINGS14, path)
    radiologists = google.set_index("Image Index").loc[rows.index.intersection(google["Image Index"])]
    kept = rows.index.isin(radiologists.index)
    mass_or_nodule = [labels.FINDINGS14.index("Mass"), labels.FINDINGS14.index("Nodule")]
    for name, column, findings in (
        ("Pneumothorax", "Pneumothorax", [labels.FINDINGS14.index("Pneumothorax")]),
        ("Nodule/Mass", "Nodule or mass", mass_or_nodule),
    ):
        scores, nih = probs[kept][:, findings].max(axis=1), truth[kept][:, findings].any(axis=1)
        experts = (radiologists.loc[rows.index[kept], column] == "YES").to_numpy()
        row = result[name]
        assert row["images"] == int(kept.sum()) == len(google["Image Index"][::3])
        assert row["auroc_nih_labels"] == pytest.approx(roc_auc_score(nih, scores), abs=1e-12)
        assert row["auroc_expert_labels"] == pytest.approx(roc_auc_score(experts, scores), abs=1e-12)
        assert row["agreement"] == pytest.approx((nih == experts).mean())
        assert (row["nih_positives"], row["expert_positives"]) == (int(nih.sum()), int(experts.sum()))
