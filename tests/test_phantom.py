"""The phantom generator and its NIH-format tree: format fidelity, determinism, visible signs."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pandas as pd
import pytest

from lungjax.data import phantom
from lungjax.data.labels import CLASS_NAMES, class_index

NIH_HEADER = phantom.DATA_ENTRY_HEADER
NIH_BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
ALLOWED_FINDINGS = {"Atelectasis", "Cardiomegaly", "Effusion", "Nodule", "Mass", "Pneumothorax", "No Finding"}
SIZE = 64
PATIENTS = 20


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return phantom.write_nih_tree(tmp_path_factory.mktemp("nih"), PATIENTS, seed=3, image_size=SIZE)


def _rows(path):
    lines = path.read_text().splitlines()
    return lines[0], [line.split(",") for line in lines[1:]]


def test_data_entry_header_and_rows(tree):
    header, rows = _rows(tree / "Data_Entry_2017.csv")
    assert header == NIH_HEADER
    assert rows and all(len(row) == 11 for row in rows)
    for name, finding, follow_up, patient, age, sex, view, width, height, sx, sy in rows:
        assert re.fullmatch(r"\d{8}_\d{3}\.png", name)
        assert (tree / "images_001" / "images" / name).is_file()
        assert name == f"{int(patient):08d}_{int(follow_up):03d}.png"
        assert finding in ALLOWED_FINDINGS and class_index(finding) is not None
        assert 0 < int(age) < 100 and sex in {"M", "F"} and view in {"PA", "AP"}
        assert int(width) == int(height) == SIZE and float(sx) == float(sy) > 0


def test_patients_have_consecutive_follow_ups(tree):
    table = pd.read_csv(tree / "Data_Entry_2017.csv", index_col=False)
    films = table.groupby("Patient ID")["Follow-up #"].apply(list)
    assert set(films.index) == set(range(1, PATIENTS + 1))
    assert all(follow_ups == list(range(len(follow_ups))) for follow_ups in films)
    assert films.map(len).max() > 1
    # One patient, one sex; ages never go backwards.
    assert (table.groupby("Patient ID")["Patient Gender"].nunique() == 1).all()
    assert table.groupby("Patient ID")["Patient Age"].is_monotonic_increasing.all()


def test_every_finding_has_a_box_inside_the_image(tree):
    _, entries = _rows(tree / "Data_Entry_2017.csv")
    header, boxes = _rows(tree / "BBox_List_2017.csv")
    assert header == NIH_BBOX_HEADER
    findings = {row[0]: row[1] for row in entries if row[1] != "No Finding"}
    assert {row[0]: row[1] for row in boxes} == findings
    for _, _, *box in boxes:
        x, y, w, h = map(float, box)
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= SIZE and y + h <= SIZE


def test_images_are_gray_uint8_of_the_requested_size(tree):
    path = next((tree / "images_001" / "images").iterdir())
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image.dtype == np.uint8 and image.shape == (SIZE, SIZE)


def test_same_seed_same_bytes_whatever_the_workers(tmp_path, tree):
    again = phantom.write_nih_tree(tmp_path / "two", PATIENTS, seed=3, image_size=SIZE, num_workers=2)
    for name in ("Data_Entry_2017.csv", "BBox_List_2017.csv"):
        assert (again / name).read_bytes() == (tree / name).read_bytes()
    images = sorted(p.name for p in (tree / "images_001" / "images").iterdir())
    assert images == sorted(p.name for p in (again / "images_001" / "images").iterdir())
    for name in images:
        first = (tree / "images_001" / "images" / name).read_bytes()
        assert (again / "images_001" / "images" / name).read_bytes() == first
    other = phantom.write_nih_tree(tmp_path / "other", PATIENTS, seed=4, image_size=SIZE)
    assert (other / "Data_Entry_2017.csv").read_bytes() != (tree / "Data_Entry_2017.csv").read_bytes()


def test_class_frequencies_follow_the_reference_subset(tmp_path):
    root = phantom.write_nih_tree(tmp_path, 300, seed=1, image_size=32)
    table = pd.read_csv(root / "Data_Entry_2017.csv", index_col=False)
    counts = table["Finding Labels"].map(class_index).value_counts(normalize=True)
    observed = np.array([counts.get(k, 0.0) for k in range(len(CLASS_NAMES))])
    np.testing.assert_allclose(observed, phantom.CLASS_PROBABILITIES, atol=0.05)


@pytest.mark.parametrize("label", range(len(CLASS_NAMES)))
def test_render_returns_an_image_and_a_box_for_findings(label):
    rng = np.random.default_rng(label)
    image, box = phantom.render_radiograph(label, phantom.sample_anatomy(rng), rng, size=96)
    assert image.dtype == np.uint8 and image.shape == (96, 96)
    if CLASS_NAMES[label] == "No Finding":
        assert box is None
    else:
        x, y, w, h = box
        assert 0 <= x and 0 <= y and 0 < w and 0 < h and x + w <= 96 and y + h <= 96


def test_cardiomegaly_has_a_larger_heart_than_normal():
    cardiomegaly = CLASS_NAMES.index("Cardiomegaly")
    normal = CLASS_NAMES.index("No Finding")
    for seed in range(5):
        anatomy = phantom.sample_anatomy(np.random.default_rng(seed))
        assert phantom.cardiothoracic_ratio(cardiomegaly, anatomy) > 0.5
        assert phantom.cardiothoracic_ratio(normal, anatomy) < 0.5
        big, box = phantom.render_radiograph(cardiomegaly, anatomy, np.random.default_rng(9), 128)
        small, _ = phantom.render_radiograph(normal, anatomy, np.random.default_rng(9), 128)
        x, y, w, h = map(int, box)
        # Inside the enlarged heart's box the normal film still shows dark lung at the sides.
        region = (slice(y, y + h), slice(x, x + w))
        assert big[region].mean() > small[region].mean() + 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_patients": 0}, r"num_patients must be an integer >= 1"),
        ({"num_patients": 2, "image_size": 16}, r"image_size must be an integer in \[32, 4096\]"),
        ({"num_patients": 2, "films_per_patient": (3, 1)}, r"films_per_patient"),
        ({"num_patients": 2, "num_workers": 0}, r"num_workers must be >= 1"),
    ],
)
def test_bad_arguments_are_named(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        phantom.write_nih_tree(tmp_path, **kwargs)
