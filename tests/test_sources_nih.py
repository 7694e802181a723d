"""NIH as a source: the contract table of the real ``Data_Entry_2017_v2020.csv`` (112,120 rows, from
torchxrayvision's wheel) and of an NIH-format tree with NIH's official lists."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import write_nih_tree

from lungjax.data import labels, metadata
from lungjax.data.sources import chestxray14, contract, labelspace, splits

DATA_ENTRY = "Data_Entry_2017_v2020.csv.gz"


@pytest.fixture(scope="module")
def raw(xrv_table) -> pd.DataFrame:
    return pd.read_csv(xrv_table(DATA_ENTRY), index_col=False)


@pytest.fixture(scope="module")
def table(xrv_table, tmp_path_factory) -> contract.SourceTable:
    path = tmp_path_factory.mktemp("nih") / "Data_Entry_2017.csv"
    path.write_bytes(xrv_table(DATA_ENTRY).read())
    data_entry = metadata.read_data_entry(path)
    return chestxray14.table(data_entry, {name: f"images/{name}" for name in data_entry["Image Index"]})


def test_every_finding_counted_from_finding_labels(raw, table):
    findings = raw["Finding Labels"].str.split("|")
    assert len(table.frame) == len(raw) == 112_120
    for name in labels.FINDINGS14:
        positive = findings.map(lambda names, name=name: name in names).to_numpy()
        assert (table.frame.loc[positive, name] == contract.POSITIVE).all(), name
        assert (table.frame.loc[~positive, name] == contract.NEGATIVE).all(), name
    no_finding = (raw["Finding Labels"] == "No Finding").to_numpy()
    assert int((table.frame["No Finding"] == contract.POSITIVE).sum()) == int(no_finding.sum()) == 60_361
    either = findings.map(lambda names: "Nodule" in names or "Mass" in names).to_numpy()
    assert ((table.frame["Nodule/Mass"] == contract.POSITIVE).to_numpy() == either).all()
    assert (table.frame["patient_id"] == raw["Patient ID"].astype(str)).all()
    assert (table.frame["view"] == raw["View Position"]).all()


def test_the_label_space_covers_nih(table):
    values, mask = labelspace.label_matrix(table, "nih14")
    assert mask.all() and labelspace.named_sets()["nih14"] == labels.FINDINGS14
    expected = pd.DataFrame({n: table.frame[n] == contract.POSITIVE for n in labels.FINDINGS14}).to_numpy()
    assert (values == expected).all()


def test_patient_split_without_official_lists(table):
    split = splits.assign(table)
    assert splits.patients_crossing(table, split) == 0 and set(split) == set(contract.SPLITS)


def test_read_a_tree_with_official_lists(tmp_path):
    root = write_nih_tree(tmp_path / "nih", patients=12, films=2, size=16)
    names = pd.read_csv(root / "Data_Entry_2017.csv")
    patients = names["Patient ID"]
    test_names = names.loc[patients % 4 == 0, "Image Index"].tolist()
    (root / "test_list.txt").write_text("\n".join(test_names) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(names.loc[patients % 4 != 0, "Image Index"]) + "\n")
    table = chestxray14.read(root)
    assert table.frame["path"].tolist() == [f"images_001/images/{n}" for n in names["Image Index"]]
    assert table.frame.loc[table.frame["split"] == "test", "path"].str.rsplit("/", n=1).str[1].tolist() == test_names
    split = splits.assign(table)
    assert (split[table.frame["split"] == "test"] == "test").all() and splits.patients_crossing(table, split) == 0
    (root / "test_list.txt").write_text(test_names[0] + "\n")
    with pytest.raises(contract.SourceError, match=r"images are on neither list"):
        chestxray14.read(root)


def test_an_image_without_a_file_is_refused(tmp_path):
    root = write_nih_tree(tmp_path / "nih", patients=6, films=1, size=16)
    first = pd.read_csv(root / "Data_Entry_2017.csv")["Image Index"].iloc[0]
    (root / "images_001" / "images" / first).unlink()
    with pytest.raises(contract.SourceError, match=f"1 images of the metadata have no file .*{first}"):
        chestxray14.read(root)
