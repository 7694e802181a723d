"""The phantom generator and its NIH-format tree: format fidelity, determinism, visible signs."""

from __future__ import annotations

import hashlib
import importlib.resources
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from lungjax.data import labels, nih_layout, phantom, tasks
from lungjax.data.labels import CLASS_NAMES, FINDINGS14, class_index

NIH_HEADER = nih_layout.DATA_ENTRY_HEADER
NIH_BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
ALLOWED_FINDINGS = {"Atelectasis", "Cardiomegaly", "Effusion", "Nodule", "Mass", "Pneumothorax", "No Finding"}
SIZE = 64
PATIENTS = 20
# The `tree` fixture's tree as the six-class phantom wrote it before the 14-finding films were added
# (see tree_digest): the demo's published numbers rest on these films.
SIX_CLASS_TREE_DIGEST = "ffa2580ced37aeec53332e40ef2eeda408b6bc940d934a7cec2c6e358933770a"
DATA = Path(__file__).parent / "data"  # the real NIH metadata (the same bytes as ../shared/data/nih)
NIH_BOX_LIST_NAMES = {
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltrate",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
}
FULL14_PATIENTS = 200
FULL14_SIZE = 32
SIGN_SIZE = 96
SIGN_SEEDS = range(3)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return phantom.write_nih_tree(tmp_path_factory.mktemp("nih"), PATIENTS, seed=3, image_size=SIZE)


@pytest.fixture(scope="module")
def full14_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("nih14")
    return phantom.write_nih_tree(root, FULL14_PATIENTS, seed=5, image_size=FULL14_SIZE, task="full14")


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
        ({"num_patients": 2, "task": "five_class"}, r"unknown task 'five_class'"),
    ],
)
def test_bad_arguments_are_named(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        phantom.write_nih_tree(tmp_path, **kwargs)


def tree_digest(root: Path) -> str:
    """One digest of a tree: every file's path and content, a PNG by its decoded pixels (the PNG
    encoder belongs to the OpenCV build, the pixels to the phantom)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        content = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).tobytes() if path.suffix == ".png" else path.read_bytes()
        digest.update(hashlib.sha256(content).digest())
    return digest.hexdigest()


def test_six_class_trees_are_unchanged(tree):
    assert tree_digest(tree) == SIX_CLASS_TREE_DIGEST


# --- the 14-finding films ---------------------------------------------------------------------


def nih_combinations_csv(data_entry: pd.DataFrame) -> str:
    """The text of the combinations table as NIH's metadata gives it (the shipped file was written by this)."""

    def combination(finding_labels: str) -> str:
        names = labels.split_findings(finding_labels)
        return labels.NO_FINDING if names == [labels.NO_FINDING] else "|".join(sorted(names, key=FINDINGS14.index))

    table = (
        data_entry.assign(
            findings=data_entry["Finding Labels"].map(combination), pa=data_entry["View Position"] == "PA"
        )
        .groupby("findings")
        .agg(images=("pa", "size"), pa_images=("pa", "sum"))
        .reset_index()
        .sort_values(["images", "findings"], ascending=[False, True])
    )
    rows = (f"{findings},{images},{pa}" for findings, images, pa in table.itertuples(index=False))
    return "\n".join(["findings,images,pa_images", *rows]) + "\n"


def test_the_combinations_table_is_nihs():
    data_entry = pd.read_csv(
        DATA / "Data_Entry_2017_v2020.csv.gz", index_col=False, usecols=["Finding Labels", "View Position"], dtype=str
    )
    shipped = importlib.resources.files("lungjax.data").joinpath(phantom.COMBINATIONS_FILE).read_text(encoding="ascii")
    assert shipped == nih_combinations_csv(data_entry)
    table = phantom.finding_combinations()
    assert table.images.sum() == len(data_entry) == 112_120 and len(set(table.findings)) == len(table.findings)
    assert all(list(c) == sorted(c, key=FINDINGS14.index) and set(c) <= set(FINDINGS14) for c in table.findings)
    assert table.findings[0] == () and (table.pa_images <= table.images).all()


def test_full14_labels_are_nih_combinations(full14_tree):
    table = pd.read_csv(full14_tree / "Data_Entry_2017.csv", index_col=False)
    combinations = {"|".join(c) or labels.NO_FINDING for c in phantom.finding_combinations().findings}
    assert table["Finding Labels"].isin(combinations).all()
    assert table["Finding Labels"].map(labels.multi_hot).notna().all()
    assert (table["Finding Labels"].str.count(r"\|") >= 2).any()  # films with three findings or more
    assert set(table["View Position"]) == {"PA", "AP"}


def test_full14_frequencies_follow_nih(full14_tree):
    drawn = np.stack(
        pd.read_csv(full14_tree / "Data_Entry_2017.csv", index_col=False)["Finding Labels"].map(labels.multi_hot)
    )
    nih = phantom.finding_combinations()
    vectors = np.array([[name in c for name in FINDINGS14] for c in nih.findings], np.float64)
    expected = nih.images @ vectors / nih.images.sum()
    np.testing.assert_allclose(drawn.mean(axis=0), expected, atol=0.06)
    assert abs((drawn.sum(axis=1) == 0).mean() - nih.images[0] / nih.images.sum()) < 0.1  # No Finding


def test_full14_follow_ups_keep_their_findings(full14_tree):
    table = pd.read_csv(full14_tree / "Data_Entry_2017.csv", index_col=False)
    previous = table.groupby("Patient ID")["Finding Labels"].shift()
    follow_ups = previous.notna()
    # Half the follow-ups repeat the film before; redrawn ones match it about a third of the time.
    assert (table["Finding Labels"][follow_ups] == previous[follow_ups]).mean() > 0.55


def test_full14_boxes_name_nihs_boxed_findings_inside_the_image(full14_tree):
    entries = pd.read_csv(full14_tree / "Data_Entry_2017.csv", index_col=False)
    header, boxes = _rows(full14_tree / "BBox_List_2017.csv")
    assert header == NIH_BBOX_HEADER
    expected = {
        (name, labels.BOX_LIST_NAMES.get(finding, finding))
        for name, finding_labels in zip(entries["Image Index"], entries["Finding Labels"], strict=True)
        for finding in labels.split_findings(finding_labels)
        if finding in labels.BOXED_FINDINGS
    }
    written = [(name, finding) for name, finding, *_ in boxes]
    assert len(written) == len(set(written)) and set(written) == expected
    assert {finding for _, finding in written} == NIH_BOX_LIST_NAMES  # "Infiltrate", as NIH spells it
    for _, _, *box in boxes:
        x, y, w, h = map(float, box)
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= FULL14_SIZE and y + h <= FULL14_SIZE


def test_full14_same_bytes_whatever_the_workers(tmp_path):
    one, two = (
        phantom.write_nih_tree(tmp_path / str(n), 16, seed=2, image_size=FULL14_SIZE, task="full14", num_workers=n)
        for n in (1, 2)
    )
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)


def _with_and_without(finding: str, seed: int):
    """The same patient and random stream drawn with one finding and with none: (image, box), normal image."""
    anatomy = phantom.sample_anatomy(np.random.default_rng(seed))
    image, boxes = phantom.render_findings((finding,), anatomy, np.random.default_rng(100 + seed), SIGN_SIZE)
    normal, no_boxes = phantom.render_findings((), anatomy, np.random.default_rng(100 + seed), SIGN_SIZE)
    assert list(boxes) == [finding] and no_boxes == {}
    x, y, w, h = map(int, boxes[finding])
    assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= SIGN_SIZE and y + h <= SIGN_SIZE
    return image.astype(np.float64) - normal, (x, y, w, h)


# Which way each sign moves the film: opacities brighten it, air darkens it.
SIGN_DIRECTION = {name: 1 for name in FINDINGS14} | {"Pneumothorax": -1, "Emphysema": -1, "Hernia": -1}
NOISE_SIGMA_PIXELS = 1.5  # the two films' quantum noise differs; smoothing leaves the signs
CHANGED_LEVELS = 8


@pytest.mark.parametrize("finding", FINDINGS14)
def test_each_sign_changes_the_film_inside_its_box(finding):
    for seed in SIGN_SEEDS:
        change, (x, y, w, h) = _with_and_without(finding, seed)
        changed = SIGN_DIRECTION[finding] * cv2.GaussianBlur(change, (0, 0), NOISE_SIGMA_PIXELS) > CHANGED_LEVELS
        inside = np.zeros(change.shape, bool)
        inside[y : y + h, x : x + w] = True
        assert changed[inside].mean() > max(0.1, 3 * changed[~inside].mean())


def _band(change, box, rows):
    """Mean change over a band of the box's rows, given as fractions of its height."""
    x, y, w, h = box
    return change[y + int(rows[0] * h) : y + int(np.ceil(rows[1] * h)), x : x + w].mean()


def test_emphysema_lowers_the_diaphragm():
    for seed in SIGN_SEEDS:
        change, box = _with_and_without("Emphysema", seed)
        # Where the domes were, the lowered, flattened diaphragm leaves air.
        assert _band(change, box, (0.8, 1.0)) < _band(change, box, (0.0, 1.0)) - 5


def test_fibrosis_is_worst_in_the_upper_zones():
    for seed in SIGN_SEEDS:
        change, box = _with_and_without("Fibrosis", seed)
        assert _band(change, box, (0.0, 0.5)) > _band(change, box, (0.5, 1.0)) + 2


def test_edema_is_bilateral_and_a_hernia_central():
    for seed in SIGN_SEEDS:
        _, (x, _, w, _) = _with_and_without("Edema", seed)
        assert x < SIGN_SIZE / 2 < x + w
        _, (x, y, w, h) = _with_and_without("Hernia", seed)
        assert abs(x + w / 2 - SIGN_SIZE / 2) < SIGN_SIZE / 8 and y > SIGN_SIZE / 3


def test_masses_are_over_3_cm_and_nodules_under():
    assert phantom.NODULE_DIAMETER_RANGE_MM[1] < phantom.MASS_DIAMETER_MM < phantom.MASS_DIAMETER_RANGE_MM[0]
    mm_per_pixel = phantom.FIELD_OF_VIEW_MM / SIGN_SIZE
    for seed in SIGN_SEEDS:
        _, (_, _, w, h) = _with_and_without("Mass", seed)
        assert min(w, h) * mm_per_pixel > phantom.MASS_DIAMETER_MM


def test_signs_that_share_a_base_are_all_drawn():
    crowded = ("Atelectasis", "Effusion", "Pneumonia", "Consolidation")
    for seed in SIGN_SEEDS:
        rng = np.random.default_rng(seed)
        anatomy = phantom.sample_anatomy(rng)
        image, boxes = phantom.render_findings(crowded, anatomy, rng, SIGN_SIZE)
        normal, _ = phantom.render_findings((), anatomy, rng, SIGN_SIZE)
        assert list(boxes) == list(crowded)
        for finding in crowded:  # each sign still shows beside the others
            x, y, w, h = map(int, boxes[finding])
            assert image[y : y + h, x : x + w].mean() > normal[y : y + h, x : x + w].mean() + 3


def test_render_findings_refuses_names_outside_the_14():
    rng = np.random.default_rng(0)
    anatomy = phantom.sample_anatomy(rng)
    for names in (("No Finding",), ("Nodule/Mass",), ("Effusion", "effusion")):
        with pytest.raises(ValueError, match="unknown findings"):
            phantom.render_findings(names, anatomy, rng, 64)
    with pytest.raises(TypeError, match="a collection of names"):
        phantom.render_findings("Effusion", anatomy, rng, 64)


@pytest.mark.parametrize("task", tasks.TASKS)
def test_every_task_has_phantom_films(tmp_path, task):
    root = phantom.write_nih_tree(tmp_path, 2, image_size=32, task=task)
    assert len((root / "Data_Entry_2017.csv").read_text().splitlines()) > 2
