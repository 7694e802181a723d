"""A hospital's own CSV export over PNG, JPEG and DICOM files: read as documented, bad input refused in
one line naming the file and the line."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import write_dicom

from lungjax.data import source_builder
from lungjax.data.sources import contract, hospital, labelspace, splits

HEADER = "path,patient_id,study_id,view,sex,age,split,Atelectasis,Cardiomegaly,Effusion"
ROWS = [
    "films/a.png,P1,S1,PA,F,64,train,1,0,",
    "films/b.jpg,P2,,AP,M,,test,0,-1,1",
    "films/c.dcm,P3,S3,,,71.5,validation,,,0",
]


@pytest.fixture
def export(tmp_path):
    films = tmp_path / "films"
    films.mkdir()
    pixels = np.random.default_rng(0).integers(0, 255, (16, 16), dtype=np.uint8)
    cv2.imwrite(str(films / "a.png"), pixels)
    cv2.imwrite(str(films / "b.jpg"), pixels)
    write_dicom(films / "c.dcm", pixels.astype(np.uint16))
    (tmp_path / hospital.CSV).write_text("\n".join([HEADER, *ROWS]) + "\n")
    return tmp_path


def test_the_documented_csv(export):
    table = hospital.read(export)
    frame = table.frame
    assert frame["path"].tolist() == ["films/a.png", "films/b.jpg", "films/c.dcm"]
    assert frame["study_id"].tolist() == ["S1", "films/b.jpg", "S3"]  # blank study: the image is its own
    assert frame["view"].tolist() == ["PA", "AP", "unknown"] and frame["sex"].tolist() == ["F", "M", "unknown"]
    assert np.array_equal(frame["age"], [64.0, np.nan, 71.5], equal_nan=True)
    assert table.labels == ("Atelectasis", "Cardiomegaly", "Effusion")
    assert frame[list(table.labels)].values.tolist() == [[1, 0, -2], [0, -1, 1], [-2, -2, 0]]
    assert splits.assign(table).tolist() == ["train", "test", "validation"]
    values, mask = labelspace.label_matrix(table, ["Cardiomegaly", "Pneumonia"], uncertainty="ones")
    assert values.tolist() == [[0, 0], [1, 0], [0, 0]] and mask.tolist() == [
        [True, False],
        [True, False],
        [False, False],
    ]
    with pytest.raises(contract.SourceError, match=r"hospital: row 1 \(films/b.jpg\) is uncertain for 'Cardiomegaly'"):
        labelspace.label_matrix(table, ["Cardiomegaly"], uncertainty="refuse")


def test_without_a_split_the_patients_are_split(export):
    rows = [r.replace(",train,", ",,").replace(",test,", ",,").replace(",validation,", ",,") for r in ROWS]
    (export / hospital.CSV).write_text("\n".join([HEADER, *rows]) + "\n")
    table = hospital.read(export)
    assert (table.frame["split"] == contract.NO_SPLIT).all()
    assert splits.patients_crossing(table, splits.assign(table)) == 0


@pytest.mark.parametrize(
    "header, rows, message",
    [
        (
            HEADER.replace("sex,", ""),
            [r.replace(",F,", ",").replace(",M,", ",") for r in ROWS[:2]],
            r"lacks the columns \['sex'\]",
        ),
        (
            HEADER + ",Nodules",
            [ROWS[0] + ",1"],
            r"labels.csv line 1: label columns \['Nodules'\] are not in the harmonised",
        ),
        (HEADER, [ROWS[0].replace(",1,0,", ",yes,0,")], r"labels.csv line 2: column 'Atelectasis' holds 'yes'"),
        (HEADER, [ROWS[0].replace(",PA,", ",frontal,")], r"labels.csv line 2: view 'frontal' must be one of"),
        (HEADER, [ROWS[0].replace(",64,", ",-3,")], r"labels.csv line 2: age '-3' must be"),
        (HEADER, [ROWS[0], ROWS[1].replace(",test,", ",,")], r"an official split must name every row; 1 rows"),
        (HEADER, [ROWS[0], ROWS[1].replace(",P2,", ",P1,")], r"patient P1 is on two official splits"),
        (HEADER, [ROWS[0], ROWS[0]], r"labels.csv line 3: path 'films/a.png' must be listed once"),
        (HEADER, [ROWS[0].replace(",P1,", ",,")], r"labels.csv line 2: patient_id '' must be not blank"),
        ("path,patient_id,view,sex,age,split", ["films/a.png,P1,PA,F,64,train"], "no label column"),
    ],
)
def test_bad_input_is_one_line_naming_file_and_line(export, header, rows, message):
    (export / hospital.CSV).write_text("\n".join([header, *rows]) + "\n")
    with pytest.raises(contract.SourceError, match=message) as err:
        hospital.read(export)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "row, message",
    [
        ("films/missing.png,P2,,AP,M,,test,0,0,0", r"table row 1 \(films/missing.png\) does not exist"),
        ("films/a.txt,P2,,AP,M,,test,0,0,0", r"table row 1 \(films/a.txt\) is not a PNG, JPEG or DICOM"),
    ],
)
def test_a_film_that_is_missing_or_no_image_is_named_by_the_build_or_skipped(export, row, message):
    """The builder is the one place that checks the films, so ``skip_bad_images`` can build without them."""
    (export / hospital.CSV).write_text("\n".join([HEADER, ROWS[0], row]) + "\n")
    config = source_builder.make_config("hospital", 32)
    with pytest.raises(contract.SourceError, match=rf"hospital \(labels.csv\): {message}") as err:
        source_builder.plan_build(export, config)
    assert "\n" not in str(err.value)
    plan = source_builder.plan_build(export, config, skip_bad_images=True)
    assert sum(len(part) for part in plan.splits.values()) == 1
