"""Selection and splits on the real NIH metadata (no images needed)."""

from pathlib import Path

import numpy as np
import pytest

from lungjax.data import labels, metadata

DATA = Path(__file__).parent / "data"
SEED_MANIFEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "seed" / "Balanced_Chest_Xray_Data.csv.gz"
EXPECTED_COUNTS = [4215, 1093, 3955, 4844, 2194, 3260]


@pytest.fixture(scope="module")
def data_entry():
    return metadata.read_data_entry(DATA / "Data_Entry_2017_v2020.csv.gz")


@pytest.fixture(scope="module")
def subset(data_entry):
    return metadata.select_subset(data_entry)


def test_split_on_pipe_not_substring():
    assert labels.class_index("Mass") == labels.CLASS_NAMES.index("Nodule/Mass")
    assert labels.class_index("Nodule") == labels.CLASS_NAMES.index("Nodule/Mass")
    assert labels.class_index("Atelectasis|Effusion") is None  # two findings: not single-label
    assert labels.class_index("Infiltration") is None
    assert labels.class_index("Effusion ") == labels.CLASS_NAMES.index("Effusion")


def test_selection_counts_on_real_metadata(data_entry, subset):
    assert len(data_entry) == 112_120
    counts = np.bincount(subset["label"], minlength=labels.NUM_CLASSES).tolist()
    assert counts == EXPECTED_COUNTS
    assert len(subset) == 19_561
    no_finding = subset[subset["label"] == labels.CLASS_NAMES.index("No Finding")]
    assert (no_finding["Finding Labels"] == "No Finding").all()


def test_no_finding_sample_is_seeded(data_entry):
    a = metadata.select_subset(data_entry, seed=1)
    b = metadata.select_subset(data_entry, seed=1)
    c = metadata.select_subset(data_entry, seed=2)
    assert a["Image Index"].tolist() == b["Image Index"].tolist()
    assert a["Image Index"].tolist() != c["Image Index"].tolist()


def test_patient_split_is_disjoint_and_stratified(subset):
    splits = metadata.split_by_patient(subset)
    assert metadata.patients_crossing(splits) == 0
    assert sum(len(s) for s in splits.values()) == len(subset)
    overall = np.bincount(subset["label"], minlength=6) / len(subset)
    for name, share in zip(metadata.SPLIT_NAMES, metadata.PATIENT_SPLIT_SHARES, strict=True):
        frame = splits[name]
        assert abs(len(frame) / len(subset) - share) < 0.02, name
        class_share = np.bincount(frame["label"], minlength=6) / len(frame)
        assert np.abs(class_share - overall).max() < 0.02, name


@pytest.mark.skipif(not SEED_MANIFEST.is_file(), reason=f"reference manifest absent: {SEED_MANIFEST}")
def test_reference_manifest_reproduces_its_list_and_leakage(data_entry):
    manifest = metadata.read_manifest(SEED_MANIFEST)
    subset = metadata.select_subset(data_entry, manifest=manifest)
    assert subset["Image Index"].tolist() == manifest["Image Index"].tolist()
    assert np.bincount(subset["label"], minlength=6).tolist() == EXPECTED_COUNTS
    splits = metadata.split_by_image(subset)
    assert [len(splits[n]) for n in metadata.SPLIT_NAMES] == [13_692, 3_912, 1_957]
    leaked = splits["test"]["Patient ID"].isin(splits["train"]["Patient ID"]).sum()
    assert leaked == 1_302  # DESIGN.md: 1,302 of its 1,957 test images


def test_kaggle_form_with_trailing_column_and_bad_ages(tmp_path):
    csv = tmp_path / "Data_Entry_2017.csv"
    csv.write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],Unnamed: 11\n"
        "00000001_000.png,Cardiomegaly,0,1,414,M,PA,2682,2749,0.143,0.143,\n"
        "00000002_000.png,No Finding,0,2,81,F,AP,2500,2048,0.168,0.168,\n"
    )
    frame = metadata.read_data_entry(csv)
    assert frame["Patient Age"].tolist() == [metadata.MISSING_AGE, 81]
    assert frame["Image Index"].tolist() == ["00000001_000.png", "00000002_000.png"]


def test_missing_columns_are_named(tmp_path):
    csv = tmp_path / "Data_Entry_2017.csv"
    csv.write_text("Image Index,Finding Labels\n00000001_000.png,Cardiomegaly\n")
    with pytest.raises(metadata.MetadataError, match="Patient ID"):
        metadata.read_data_entry(csv)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(metadata.MetadataError, match="Data_Entry_2017.csv"):
        metadata.read_data_entry(tmp_path / "nope.csv")


def _write_rows(path: Path, rows: list[str], encoding: str = "utf-8") -> Path:
    header = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"
    path.write_text("\n".join([header, *rows]) + "\n", encoding=encoding)
    return path


GOOD_ROWS = ["00000001_000.png,Effusion,0,1,45,M,PA", "00000002_000.png,No Finding,0,2,51,F,AP"]


@pytest.mark.parametrize(
    "rows, encoding, message",
    [
        (GOOD_ROWS, "utf-16", r"Data_Entry_2017.csv is not UTF-8 text \(byte 0: .*\); save it as UTF-8 CSV"),
        (
            [*GOOD_ROWS, "00000003_000.png,Effusion,0,P3,45,M,PA"],
            "utf-8",
            r"column 'Patient ID' must hold whole numbers; 1 rows do not, e.g. line 4 \(00000003_000.png\)",
        ),
        (
            [*GOOD_ROWS, "00000001_000.png,Effusion,0,1,45,M,PA"],
            "utf-8",
            r"2 rows share an Image Index with another row, e.g. line 2 \(00000001_000.png\), line 4 "
            r"\(00000001_000.png\); each image must be listed once",
        ),
    ],
)
def test_bad_metadata_is_one_message_naming_the_rows(tmp_path, rows, encoding, message):
    path = _write_rows(tmp_path / "Data_Entry_2017.csv", rows, encoding)
    with pytest.raises(metadata.MetadataError, match=message):
        metadata.read_data_entry(path)
    assert len(metadata.read_data_entry(_write_rows(tmp_path / "good.csv", GOOD_ROWS))) == 2
