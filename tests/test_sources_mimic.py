"""MIMIC-CXR-JPG's adapter on rows written in the release's exact format (its metadata is credentialed):
the official split reproduced exactly, labels joined per study, paths as PhysioNet lays them out."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from lungjax.data.sources import contract, mimic, splits

METADATA_COLUMNS = list(mimic.RELEASE_METADATA_HEADER)
LABEL_COLUMNS = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
]
VIEWS = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral", "": ""}


def write_release(root, *, subjects=30, seed=0, gzipped=True):
    """A MIMIC-CXR-JPG tree's four CSVs (metadata gzipped as PhysioNet ships it); returns the frames."""
    rng = np.random.default_rng(seed)
    metadata, labels, split = [], [], []
    for s in range(subjects):
        subject = str(10_000_000 + 1_000_003 * s)  # first two digits 10..39: several pNN folders
        part = rng.choice(["train", "validate", "test"], p=[0.6, 0.2, 0.2])
        for t in range(int(rng.integers(1, 4))):
            study = str(50_000_000 + 100 * s + t)
            values = rng.choice(["1.0", "0.0", "-1.0", ""], size=len(LABEL_COLUMNS))
            if (s, t) != (0, 0):  # the first study has no labelled report
                labels.append([subject, study, *values])
            for _ in range(int(rng.integers(1, 3))):
                dicom = "-".join(f"{int(v):08x}" for v in rng.integers(0, 2**31, size=5))
                view = str(rng.choice(list(VIEWS)))
                metadata.append(
                    [dicom, subject, study, "CHEST (PA AND LAT)", view, 3056, 2544, 21800506, 213014.531]
                    + ["Chest X-ray", VIEWS[view], "Erect"]
                )
                split.append([dicom, study, subject, part])
    frames = {
        "metadata": pd.DataFrame(metadata, columns=METADATA_COLUMNS),
        "chexpert": pd.DataFrame(labels, columns=["subject_id", "study_id", *LABEL_COLUMNS]),
        "split": pd.DataFrame(split, columns=["dicom_id", "study_id", "subject_id", "split"]),
    }
    frames["negbio"] = frames["chexpert"].copy()
    for name, frame in frames.items():
        path = root / f"mimic-cxr-2.0.0-{name}.csv"
        if gzipped and name == "metadata":
            with gzip.open(path.with_name(path.name + ".gz"), "wt") as out:
                frame.to_csv(out, index=False)
        else:
            frame.to_csv(path, index=False)
    return frames


@pytest.fixture
def release(tmp_path):
    return tmp_path, write_release(tmp_path)


def test_official_split_reproduced_exactly(release):
    root, frames = release
    table = mimic.read(root)
    expected = (
        frames["split"]
        .set_index("dicom_id")["split"]
        .map({"validate": "validation"})
        .fillna(frames["split"].set_index("dicom_id")["split"])
    )
    dicom = table.frame["path"].str.rsplit("/", n=1).str[1].str.removesuffix(".jpg")
    assert (table.frame["split"].to_numpy() == expected.loc[dicom].to_numpy()).all()
    assert set(table.frame["split"]) == {"train", "validation", "test"}
    assert (splits.assign(table) == table.frame["split"]).all()  # an official split with validation is kept
    assert splits.patients_crossing(table, table.frame["split"]) == 0


def test_paths_views_and_labels_per_study(release):
    root, frames = release
    table = mimic.read(root)
    metadata = frames["metadata"]
    subject = metadata["subject_id"]
    expected_paths = (
        "files/p" + subject.str[:2] + "/p" + subject + "/s" + metadata["study_id"] + "/" + metadata["dicom_id"] + ".jpg"
    )
    assert table.frame["path"].tolist() == expected_paths.tolist()
    assert (
        table.frame["view"].tolist()
        == metadata["ViewPosition"]
        .map({"PA": "PA", "AP": "AP", "LATERAL": "lateral", "LL": "lateral", "": "unknown"})
        .tolist()
    )
    study_labels = frames["chexpert"].set_index("study_id")
    for row, image in metadata.iterrows():
        for name in LABEL_COLUMNS:
            column = "Effusion" if name == "Pleural Effusion" else name
            if image["study_id"] in study_labels.index:
                raw = study_labels.at[image["study_id"], name]
                expected = contract.NOT_STATED if raw == "" else int(float(raw))
            else:
                expected = contract.NOT_STATED
            assert table.frame.at[row, column] == expected, (row, name)
    unlabelled = int((metadata["study_id"] == frames["metadata"]["study_id"].iloc[0]).sum())
    assert table.options["images_of_unlabelled_studies"] == unlabelled
    assert table.options["labeller"] == "mimic-cxr-2.0.0-chexpert.csv"
    assert mimic.read(root, labeller="negbio").options["labeller"] == "mimic-cxr-2.0.0-negbio.csv"
    assert (table.frame["sex"] == "unknown").all() and table.frame["age"].isna().all()


def test_a_patient_on_two_official_splits_is_refused(release):
    root, frames = release
    split = frames["split"]
    subject = split["subject_id"].iloc[0]
    rows = split.index[split["subject_id"] == subject]
    if len(rows) == 1:
        pytest.skip("the first subject has one image")
    split.loc[rows[-1], "split"] = "test" if split.loc[rows[0], "split"] != "test" else "train"
    split.to_csv(root / "mimic-cxr-2.0.0-split.csv", index=False)
    with pytest.raises(contract.SourceError, match=f"mimic: patient {subject} is on two official splits"):
        mimic.read(root)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f["split"].drop(index=3), r"metadata.csv.gz line 5: image .* is not in .*split.csv"),
        (lambda f: f["split"].assign(split=f["split"]["split"].replace("validate", "val")), "has an unknown split"),
        (lambda f: f["split"].drop(columns="split"), r"split.csv lacks the columns \['split'\]"),
        (lambda f: f["split"].assign(study_id="1"), r"metadata.csv.gz line 2: image .* has another study or subject"),
    ],
)
def test_bad_split_files_are_refused(release, change, message):
    root, frames = release
    change(frames).to_csv(root / "mimic-cxr-2.0.0-split.csv", index=False)
    with pytest.raises(contract.SourceError, match=message):
        mimic.read(root)


def test_a_study_labelled_twice_is_refused(release):
    root, frames = release
    labels = frames["chexpert"]
    pd.concat([labels, labels.iloc[[0]]]).to_csv(root / "mimic-cxr-2.0.0-chexpert.csv", index=False)
    with pytest.raises(contract.SourceError, match=rf"chexpert.csv line {len(labels) + 2}: .* listed twice"):
        mimic.read(root)
    with pytest.raises(contract.SourceError, match="unknown MIMIC-CXR labeller"):
        mimic.read(root, labeller="chexbert")


def test_no_finding_rule_is_an_option_and_counted(release):
    root, frames = release
    plain, negated = mimic.read(root), mimic.read(root, no_finding_negates=True)
    no_finding = plain.frame["No Finding"] == contract.POSITIVE
    others = [n for n in plain.labels if n not in ("No Finding", "Support Devices")]
    expected = int(sum((no_finding & (plain.frame[n] == contract.NOT_STATED)).sum() for n in others))
    assert expected > 0 and negated.options["entries_negated_by_no_finding"] == expected
    assert (negated.frame["Support Devices"] == plain.frame["Support Devices"]).all()
    assert (negated.frame.loc[~no_finding, others] == plain.frame.loc[~no_finding, others]).all().all()
