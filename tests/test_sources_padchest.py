"""PadChest's adapter on the real 160K CSV (160,861 rows, from torchxrayvision's wheel) and on small CSVs
in its format: exact label strings, physician-labelled rows, splits by patient."""

from __future__ import annotations

import ast

import numpy as np
import pandas as pd
import pytest

from lungjax.data.sources import contract, labelspace, padchest, splits

CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"


@pytest.fixture(scope="module")
def raw(xrv_table) -> pd.DataFrame:
    """The raw columns, read here with pandas' defaults; each label list parsed on its own."""
    frame = pd.read_csv(xrv_table(CSV), usecols=list(padchest.COLUMNS), low_memory=False)
    codes, distinct = pd.factorize(frame["Labels"])  # NaN -> -1
    lists = [[s.strip() for s in ast.literal_eval(v)] for v in distinct] + [[]]
    frame["lists"] = [lists[c] for c in codes]
    frame["strings"] = frame["lists"].map(set)
    return frame


@pytest.fixture(scope="module")
def frame(xrv_table) -> pd.DataFrame:
    return padchest.read_csv(xrv_table(CSV), CSV)


@pytest.fixture(scope="module")
def table(frame) -> contract.SourceTable:
    return padchest.table(frame, file_name=CSV)


def test_every_label_string_is_mapped_or_listed_as_not_used(raw):
    strings = set().union(*raw["strings"])
    assert strings == set(labelspace.mapping("padchest"))  # the table is exactly PadChest's vocabulary
    assert len(strings) == 194
    vocabulary = labelspace.vocabulary()
    assert all(name in vocabulary for names in labelspace.mapping("padchest").values() for name in names)


def test_labels_are_exact_strings_never_substrings(raw, table):
    """``pseudonodule`` (2,249 mentions in 2,241 rows) must not reach Nodule, nor ``subcutaneous
    emphysema`` Emphysema. Matching ``nodule`` as a substring would make 2,163 rows Nodule wrongly."""
    pseudo = raw["strings"].map(lambda s: "pseudonodule" in s)
    mentions = raw["lists"].map(lambda strings: strings.count("pseudonodule"))
    assert (int(mentions.sum()), int(pseudo.sum())) == (2_249, 2_241)
    nodule = raw["strings"].map(lambda s: bool(s & {"nodule", "multiple nodules"}))
    by_substring = raw["Labels"].str.contains("nodule", na=False)
    assert (int(nodule.sum()), int((by_substring & ~nodule).sum())) == (4_072, 2_163)
    assert (table.frame.loc[(pseudo & ~nodule).to_numpy(), "Nodule"] == contract.NEGATIVE).all()
    assert int((table.frame["Nodule"] == contract.POSITIVE).sum()) == int(nodule.sum())
    subcutaneous = raw["strings"].map(lambda s: "subcutaneous emphysema" in s and "emphysema" not in s)
    assert subcutaneous.sum() > 0 and (table.frame.loc[subcutaneous.to_numpy(), "Emphysema"] == contract.NEGATIVE).all()


def test_each_label_counts_its_rows(raw, table):
    mapping = labelspace.mapping("padchest")
    labelled = raw["Labels"].notna().to_numpy()
    assert int((~labelled).sum()) == table.options["rows_without_labels"] == 103
    for name in table.labels:
        strings = {s for s, names in mapping.items() if name in names}
        positive = raw["strings"].map(lambda s, strings=strings: bool(s & strings)).to_numpy()
        states = table.frame[name].to_numpy()
        assert (states[positive] == contract.POSITIVE).all() and (
            states[labelled & ~positive] == contract.NEGATIVE
        ).all()
        assert (states[~labelled] == contract.NOT_STATED).all(), name
    assert int((table.frame["No Finding"] == contract.POSITIVE).sum()) == int(
        raw["strings"].map(lambda s: "normal" in s).sum()
    )


def test_metadata_columns(raw, table):
    assert (table.frame["path"] == raw["ImageDir"].astype(str) + "/" + raw["ImageID"]).all()
    assert (table.frame["patient_id"] == raw["PatientID"].astype(str)).all()
    expected_views = raw["Projection"].map({"PA": "PA", "AP": "AP", "AP_horizontal": "AP", "L": "lateral"})
    assert (table.frame["view"] == expected_views.fillna("unknown")).all()
    age = raw["StudyDate_DICOM"] // 10_000 - raw["PatientBirth"]
    assert np.allclose(table.frame["age"], age, equal_nan=True)
    assert (table.frame["split"] == contract.NO_SPLIT).all()


def test_physician_labelled_rows_as_the_test_set(raw, frame):
    by_physician = raw["MethodLabel"] == "Physician"
    assert int(by_physician.sum()) == 39_053
    crossing = ~by_physician & raw["PatientID"].isin(set(raw.loc[by_physician, "PatientID"]))
    table = padchest.table(frame, physician_test=True, file_name=CSV)
    assert table.options["model_labelled_rows_dropped_beside_physician_rows"] == int(crossing.sum()) == 24_687
    assert int((table.frame["split"] == "test").sum()) == 39_053
    assert int((table.frame["split"] == "train").sum()) == len(raw) - 39_053 - int(crossing.sum())
    split = splits.assign(table)
    assert splits.patients_crossing(table, split) == 0 and (split[table.frame["split"] == "test"] == "test").all()


def test_patient_split_is_disjoint(table):
    split = splits.assign(table, seed=1)
    assert splits.patients_crossing(table, split) == 0
    assert set(split) == set(contract.SPLITS)


def _csv(tmp_path, labels_cell):
    row = {c: "x" for c in padchest.COLUMNS} | {
        "ImageID": "a.png",
        "ImageDir": "0",
        "PatientBirth": "1950.0",
        "StudyDate_DICOM": "20150101",
        "MethodLabel": "Physician",
        "Labels": labels_cell,
    }
    pd.DataFrame([row, row | {"ImageID": "b.png", "Labels": "['normal']"}]).to_csv(tmp_path / padchest.CSV)
    return tmp_path


@pytest.mark.parametrize(
    "cell, message",
    [
        ("['normal', 'pseudo nodule']", r"row 1 \(ImageID a.png\): label 'pseudo nodule' is neither mapped"),
        ("__import__('os').system('true')", r"row 1 \(ImageID a.png\): Labels .* is not a list literal"),
        ("[1, 2]", r"row 1 \(ImageID a.png\): Labels .* is not a list of strings"),
    ],
)
def test_bad_label_cells_are_refused_naming_the_row(tmp_path, cell, message):
    with pytest.raises(contract.SourceError, match=message) as err:
        padchest.read(_csv(tmp_path, cell))
    assert padchest.CSV in str(err.value)


def test_read_from_manual_dir(tmp_path):
    table = padchest.read(_csv(tmp_path, "[' cardiomegaly', 'pseudonodule']"))
    assert table.frame["path"].tolist() == ["0/a.png", "0/b.png"]
    assert table.frame[["Cardiomegaly", "Nodule", "No Finding"]].values.tolist() == [[1, 0, 0], [0, 0, 1]]
    assert table.frame["age"].tolist() == [65.0, 65.0]


def test_a_missing_column_is_refused(tmp_path):
    pd.DataFrame({"ImageID": ["a.png"]}).to_csv(tmp_path / padchest.CSV)
    with pytest.raises(contract.SourceError, match="lacks the columns"):
        padchest.read(tmp_path)
