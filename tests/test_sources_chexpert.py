"""CheXpert's adapter on the real ``train.csv`` (223,414 rows, from torchxrayvision's wheel) and on small
CSVs in its exact format: every figure is derived here again from the raw columns with pandas."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lungjax.data.sources import chexpert, contract, labelspace, splits

TRAIN = "chexpert_train.csv.gz"
RAW_LABELS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
HARMONISED = {name: "Effusion" if name == "Pleural Effusion" else name for name in RAW_LABELS}
# The paper's best label policy per competition finding (Irvin et al. 2019, Table 2).
IRVIN = {"Atelectasis": "ones", "Cardiomegaly": "zeros", "Consolidation": "ignore", "Edema": "ones"}
IRVIN["Pleural Effusion"] = "ones"


@pytest.fixture(scope="module")
def raw(xrv_table) -> pd.DataFrame:
    frame = pd.read_csv(xrv_table(TRAIN))
    frame["patient"] = frame["Path"].str.split("/").str[2]
    return frame


@pytest.fixture(scope="module")
def table(xrv_table) -> contract.SourceTable:
    return chexpert.table(chexpert.read_csv(xrv_table(TRAIN), TRAIN), None)


def test_the_real_table_has_every_row_patient_and_view(raw, table):
    frame = table.frame
    assert len(frame) == len(raw) == 223_414
    assert frame["patient_id"].nunique() == raw["patient"].nunique() == 64_540
    assert (frame["path"] == raw["Path"].str.replace("CheXpert-v1.0-small/", "", regex=False)).all()
    frontal = (raw["Frontal/Lateral"] == "Frontal") & raw["AP/PA"].isin(["AP", "PA"])
    assert int(frontal.sum()) == 191_010  # 17 frontal films say LL or RL: their view is unknown
    assert (frame["view"].isin(contract.FRONTAL) == frontal).all()
    assert (frame.loc[frontal.to_numpy(), "view"] == raw.loc[frontal, "AP/PA"]).all()
    assert int((frame["view"] == "lateral").sum()) == int((raw["Frontal/Lateral"] == "Lateral").sum()) == 32_387
    assert (frame["split"] == "train").all() and table.options["no_finding_negates"] is False


@pytest.mark.parametrize("policy", ["ignore", "zeros", "ones", "irvin2019"])
def test_frontal_label_counts_under_each_policy(raw, table, policy):
    frontal_raw = raw[(raw["Frontal/Lateral"] == "Frontal") & raw["AP/PA"].isin(["AP", "PA"])]
    frontal = contract.select_views(table, contract.FRONTAL)
    values, mask = labelspace.label_matrix(frontal, [HARMONISED[n] for n in RAW_LABELS], uncertainty=policy)
    for k, name in enumerate(RAW_LABELS):
        column = frontal_raw[name]
        rule = IRVIN.get(name, "ignore") if policy == "irvin2019" else policy
        positive = (column == 1) | ((column == -1) & (rule == "ones"))
        negative = (column == 0) | ((column == -1) & (rule == "zeros"))
        assert int((values[:, k] * mask[:, k]).sum()) == int(positive.sum()), name
        assert int(((1 - values[:, k]) * mask[:, k]).sum()) == int(negative.sum()), name
        assert int((~mask[:, k]).sum()) == int(column.isna().sum() + ((column == -1) & (rule == "ignore")).sum())
        states = frontal.frame[HARMONISED[name]]
        assert int((states == contract.UNCERTAIN).sum()) == int((column == -1).sum())
        assert int((states == contract.NOT_STATED).sum()) == int(column.isna().sum())


def test_no_label_of_one_film_lands_on_another_film_of_its_patient(raw, table):
    """Every film carries exactly its own row's labels. torchxrayvision's ``groupby().first()`` instead
    fills a patient's labels from several films: it changes 28,091 of the 64,534 frontal patients."""
    for name in RAW_LABELS:
        expected = raw[name].fillna(contract.NOT_STATED).astype(np.int8).to_numpy()
        assert (table.frame[HARMONISED[name]].to_numpy() == expected).all(), name
    frontal = raw[raw["Frontal/Lateral"] == "Frontal"]
    first_of_columns = frontal.groupby("patient", sort=False)[list(RAW_LABELS)].first().fillna(-9)
    first_film = frontal.drop_duplicates("patient").set_index("patient")[list(RAW_LABELS)].fillna(-9)
    mixed = (first_of_columns != first_film.loc[first_of_columns.index]).any(axis=1)
    assert (int(mixed.sum()), len(mixed)) == (28_091, 64_534)


def test_no_finding_rule_is_an_option_and_counted(raw, xrv_table):
    negated = chexpert.table(chexpert.read_csv(xrv_table(TRAIN), TRAIN), None, no_finding_negates=True)
    no_finding = raw["No Finding"] == 1
    changed = {
        n: int((no_finding & raw[n].isna()).sum()) for n in RAW_LABELS if n not in ("No Finding", "Support Devices")
    }
    assert negated.options == {"no_finding_negates": True, "entries_negated_by_no_finding": sum(changed.values())}
    for name in RAW_LABELS:
        states = negated.frame[HARMONISED[name]]
        expected_negatives = (raw[name] == 0).sum() + changed.get(name, 0)
        assert int((states == contract.NEGATIVE).sum()) == int(expected_negatives), name
        assert int((states == contract.POSITIVE).sum()) == int((raw[name] == 1).sum()), name
    assert int((negated.frame["Support Devices"] == contract.NOT_STATED).sum()) == int(
        raw["Support Devices"].isna().sum()
    )


def test_split_keeps_patients_on_one_side(table):
    split = splits.assign(table, seed=3)
    assert splits.patients_crossing(table, split) == 0
    assert set(split) == {"train", "validation"}  # no valid.csv in the wheel: no test
    for name in table.labels:  # stratified: each label's positives split about 90 / 10
        positive = table.frame[name] == contract.POSITIVE
        assert (positive & (split == "validation")).sum() / positive.sum() == pytest.approx(0.1, abs=0.02), name


HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(RAW_LABELS)


def _write(folder, name, rows):
    (folder / name).write_text("\n".join([HEADER, *rows]) + "\n")


def _row(path, labels="1.0,,,,,,,,,,,,,"):
    return f"{path},Female,70,Frontal,PA,{labels}"


def test_read_takes_valid_csv_as_the_test_set(tmp_path):
    _write(tmp_path, "train.csv", [_row("CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg")])
    _write(
        tmp_path, "valid.csv", [_row("CheXpert-v1.0/valid/patient64541/study1/view1_frontal.jpg", "0,,-1," + "," * 10)]
    )
    table = chexpert.read(tmp_path)
    assert list(table.frame["split"]) == ["train", "test"]
    assert list(table.frame["path"]) == [
        "train/patient00001/study1/view1_frontal.jpg",
        "valid/patient64541/study1/view1_frontal.jpg",
    ]
    assert list(table.frame["study_id"]) == ["patient00001/study1", "patient64541/study1"]
    assert table.frame["Cardiomegaly"].tolist() == [contract.NOT_STATED, contract.UNCERTAIN]
    assert splits.assign(table).iloc[1] == "test"


@pytest.mark.parametrize(
    "train_rows, message",
    [
        (
            [_row("CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg", "2" + "," * 13)],
            "line 2: column 'No Finding' holds",
        ),
        ([_row("other/train/patient00001/study1/view1_frontal.jpg")], "line 2: Path 'other/train/"),
        (
            [
                _row("CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg"),
                _row("CheXpert-v1.0/valid/p/study1/x.jpg"),
            ],
            "line 3: Path",
        ),
    ],
)
def test_bad_rows_are_refused_naming_file_and_line(tmp_path, train_rows, message):
    _write(tmp_path, "train.csv", train_rows)
    _write(tmp_path, "valid.csv", [])
    with pytest.raises(contract.SourceError, match=message) as err:
        chexpert.read(tmp_path)
    assert str(tmp_path / "train.csv") in str(err.value)


def test_a_patient_on_train_and_valid_is_refused(tmp_path):
    _write(tmp_path, "train.csv", [_row("CheXpert-v1.0/train/patient00007/study1/view1_frontal.jpg")])
    _write(tmp_path, "valid.csv", [_row("CheXpert-v1.0/valid/patient00007/study2/view1_frontal.jpg")])
    with pytest.raises(
        contract.SourceError, match=r"patient patient00007 is on two official splits .*\(train\).*\(test\)"
    ):
        chexpert.read(tmp_path)


def test_a_missing_column_is_refused(tmp_path):
    (tmp_path / "train.csv").write_text(HEADER.replace(",Fracture", "") + "\n")
    _write(tmp_path, "valid.csv", [])
    with pytest.raises(contract.SourceError, match=r"train.csv lacks the columns \['Fracture'\]"):
        chexpert.read(tmp_path)
