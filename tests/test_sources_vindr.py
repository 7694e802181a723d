"""VinDr-CXR's adapter: the reader policies on the real Kaggle ``train.csv`` (67,914 reader rows, from
torchxrayvision's wheel) and on rows in the PhysioNet release's format."""

from __future__ import annotations

import pandas as pd
import pytest

from lungjax.data.sources import contract, labelspace, splits, vindr

KAGGLE = "vinbigdata-train.csv.gz"


@pytest.fixture(scope="module")
def raw(xrv_table) -> pd.DataFrame:
    return pd.read_csv(xrv_table(KAGGLE))


@pytest.fixture(scope="module")
def frame(xrv_table) -> pd.DataFrame:
    return contract.read_csv(xrv_table(KAGGLE), KAGGLE, dtype=str)


def test_the_real_file(raw):
    assert len(raw) == 67_914
    assert set(raw["class_name"]) == set(vindr.KAGGLE_CLASSES)
    assert set(vindr.KAGGLE_CLASSES) <= set(labelspace.mapping("vindr"))
    assert raw["image_id"].nunique() == 15_000
    assert (raw.groupby("image_id")["rad_id"].nunique() == 3).all()


@pytest.mark.parametrize("readers", vindr.POLICIES)
def test_images_positive_per_finding_under_each_reader_policy(raw, frame, readers):
    """A reader counts once per finding however many boxes they drew; majority is 2 of 3."""
    table = vindr.kaggle_table(frame, readers=readers, file_name=KAGGLE)
    assert len(table.frame) == 15_000 and (table.frame["readers"] == 3).all()
    votes = raw.drop_duplicates(["image_id", "rad_id", "class_name"]).groupby(["image_id", "class_name"]).size()
    needed = {"majority": 2, "any": 1, "all": 3}[readers]
    positive_images = votes[votes >= needed].reset_index()
    mapping = labelspace.mapping("vindr")
    for name in table.labels:
        classes = [c for c, names in mapping.items() if name in names]
        expected = positive_images.loc[positive_images["class_name"].isin(classes), "image_id"].nunique()
        assert int((table.frame[name] == contract.POSITIVE).sum()) == expected, name
        assert int((table.frame[name] == contract.NEGATIVE).sum()) == 15_000 - expected, name
    assert table.options == {"readers": readers, "official_split": False}
    anchors = {"majority": (1_817, 58), "any": (2_300, 96), "all": (1_297, 45)}[readers]
    assert tuple(int((table.frame[n] == contract.POSITIVE).sum()) for n in ("Cardiomegaly", "Pneumothorax")) == anchors


def test_kaggle_split_is_by_image(frame):
    table = vindr.kaggle_table(frame)
    split = splits.assign(table)
    assert splits.patients_crossing(table, split) == 0 and set(split) == set(contract.SPLITS)


LABELS = list(labelspace.mapping("vindr"))


def _physionet(tmp_path, train_rows, test_rows, reader_column="rad_ID"):
    folder = tmp_path / "annotations"
    folder.mkdir()
    train = pd.DataFrame(train_rows, columns=["image_id", reader_column, *LABELS[:3]])
    for name in LABELS[3:]:
        train[name] = 0
    train.to_csv(folder / "image_labels_train.csv", index=False)
    test = pd.DataFrame(test_rows, columns=["image_id", *LABELS[:3]])
    for name in LABELS[3:]:
        test[name] = 0
    test.to_csv(folder / "image_labels_test.csv", index=False)
    return tmp_path


def test_physionet_release_three_readers_and_a_consensus_test_row(tmp_path):
    # LABELS[:3]: Aortic enlargement, Atelectasis, Calcification
    train = [("a", "R1", 1, 1, 0), ("a", "R2", 1, 0, 0), ("a", "R3", 0, 0, 1), ("b", "R1", 0, 0, 0)]
    train += [("b", "R4", 0, 0, 0), ("b", "R5", 1, 0, 0)]
    root = _physionet(tmp_path, train, [("c", 0, 1, 0)])
    expected = {"majority": ([1, 0, 0], [0, 0, 0]), "any": ([1, 1, 1], [1, 0, 0]), "all": ([0, 0, 0], [0, 0, 0])}
    for readers, (image_a, image_b) in expected.items():
        table = vindr.read(root, readers=readers)
        frame = table.frame.set_index("path")
        columns = ["Aortic Enlargement", "Atelectasis", "Calcification"]
        assert frame.loc["train/a.dicom", columns].tolist() == image_a, readers
        assert frame.loc["train/b.dicom", columns].tolist() == image_b, readers
        assert frame.loc["test/c.dicom", columns].tolist() == [0, 1, 0]
        assert frame["split"].tolist() == ["train", "train", "test"] and table.options["official_split"]
    split = splits.assign(table)  # the official test stays; validation comes from the training images
    assert split.iloc[2] == "test" and set(split.iloc[:2]) <= {"train", "validation"}


def test_physionet_bad_input(tmp_path):
    root = _physionet(tmp_path, [("a", "R1", 2, 0, 0)], [])
    with pytest.raises(contract.SourceError, match=r"image_labels_train.csv line 2: column 'Aortic enlargement' holds"):
        vindr.read(root)
    (root / "annotations" / "image_labels_train.csv").write_text("image_id,rad_ID,Lung nodule\na,R1,1\n")
    with pytest.raises(contract.SourceError, match=r"label columns \['Lung nodule'\] are neither mapped"):
        vindr.read(root)
    (root / "annotations" / "image_labels_train.csv").write_text("image_id,rad_ID,Atelectasis\na,R1,1\na,R1,0\n")
    with pytest.raises(contract.SourceError, match=r"image_labels_train.csv line 3: reader R1 read image a twice"):
        vindr.read(root)
    with pytest.raises(contract.SourceError, match="unknown reader policy 'most'"):
        vindr.read(root, readers="most")


def test_kaggle_unknown_class_is_refused(tmp_path):
    header = "image_id,class_name,class_id,rad_id\n"
    for unknown in ("Nodule", "COPD"):  # a misspelling, and a class of the PhysioNet release only
        (tmp_path / "train.csv").write_text(f"{header}a,No finding,14,R1\na,{unknown},8,R2\n")
        with pytest.raises(contract.SourceError, match=f"train.csv line 3: class_name '{unknown}' is not one of"):
            vindr.read(tmp_path)
    (tmp_path / "train.csv").unlink()
    with pytest.raises(contract.SourceError, match="holds neither VinDr-CXR's"):
        vindr.read(tmp_path)
