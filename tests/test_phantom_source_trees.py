"""The phantom's trees in each source's real format, read end to end by the unchanged adapters.

Every expectation is derived here from the written files (pandas and the csv module on the raw
columns, ``label_map.csv`` read directly) and from the phantom's own films, never from the adapters.
"""

from __future__ import annotations

import ast
import csv
import gzip
import hashlib
import importlib.resources
import math

import cv2
import numpy as np
import pandas as pd
import pytest

from lungjax.data import labels, radiograph_files
from lungjax.data.phantom import source_trees, studies
from lungjax.data.sources import chexpert, contract, hospital, mimic, padchest, vindr

SIZE = 32
PATIENTS = 30
SEED = 7
Z = 4.5  # binomial bounds: a rate within Z standard errors (the trees are fixed by their seed)
CHEXPERT_CODES = {"1.0": 1, "0.0": 0, "-1.0": -1, "": -2}


def label_map() -> dict[str, dict[str, tuple[str, ...]]]:
    text = importlib.resources.files("lungjax.data.sources").joinpath("label_map.csv").read_text(encoding="utf-8")
    table: dict[str, dict[str, tuple[str, ...]]] = {}
    for row in csv.DictReader(text.splitlines()):
        table.setdefault(row["source"], {})[row["source_label"]] = tuple(n for n in row["harmonised"].split("|") if n)
    return table


MAP = label_map()


def truth(findings: str) -> set[str]:
    """The harmonised labels of a film reporting ``findings`` ("|"-joined NIH names, "" for normal)."""
    names = [n for n in findings.split("|") if n]
    if not names:
        return {labels.NO_FINDING}
    out = {target for name in names for target in MAP["nih"][name]}
    return out | {implied for implied, by in source_trees.IMPLIED.items() if out & set(by)}


def true_strings(source: str, findings: str) -> set[str]:
    """The source strings whose every meaning the film has (and that mean something)."""
    have = truth(findings)
    return {s for s, targets in MAP[source].items() if targets and set(targets) <= have}


def within(count: int, total: int, rate: float) -> bool:
    return abs(count - rate * total) <= Z * math.sqrt(max(total * rate * (1 - rate), 1e-9)) + 1


def by_path(table) -> pd.DataFrame:
    return table.frame.set_index("path")


def rendered(stream: str, number: int, **options) -> studies.Patient:
    return studies.draw_patient(number, seed=SEED, stream=stream, image_size=SIZE, **options)


def tree_digest(root) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


# --- CheXpert -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chexpert_tree(tmp_path_factory):
    return source_trees.write_chexpert_tree(
        tmp_path_factory.mktemp("cx") / "tree", PATIENTS, seed=SEED, image_size=SIZE
    )


def chexpert_rows(tree) -> pd.DataFrame:
    parts = []
    for name in (chexpert.TRAIN_CSV, chexpert.VALID_CSV):
        frame = pd.read_csv(tree.manual_dir / name, dtype=str, keep_default_na=False)
        parts.append(frame.assign(part=name))
    frame = pd.concat(parts, ignore_index=True)
    frame["path"] = frame["Path"].str.split("/", n=1).str[1]
    return frame.set_index("path")


def test_chexpert_tree_is_read_with_exactly_the_labels_written(chexpert_tree):
    assert chexpert_tree.manual_dir.name == "CheXpert-v1.0-small"
    raw = chexpert_rows(chexpert_tree)
    table = chexpert.read(chexpert_tree.manual_dir)
    read = by_path(table)
    assert sorted(read.index) == sorted(raw.index) == sorted(chexpert_tree.films["path"])
    for column in chexpert.LABEL_COLUMNS:
        (harmonised,) = MAP["chexpert"][column]
        written = raw[column].map(CHEXPERT_CODES)
        assert written.notna().all()
        np.testing.assert_array_equal(read.loc[raw.index, harmonised].to_numpy(), written.to_numpy(), err_msg=column)
    counts = {state: int((read[list(table.labels)] == state).to_numpy().sum()) for state in (1, 0, -1, -2)}
    assert all(counts.values()), counts  # every state occurs
    films = chexpert_tree.films.set_index("path").loc[read.index]
    lesion = films["labelled"].str.contains("Nodule|Mass", regex=True)
    assert lesion.any() and read.loc[lesion, "Lung Lesion"].isin((1, -1)).all()  # a nodule is CheXpert's lung lesion
    assert read.loc[~lesion, "Lung Lesion"].isin((0, -2)).all()


def test_chexpert_states_follow_the_films_and_the_rates(chexpert_tree):
    raw = chexpert_rows(chexpert_tree)
    films = chexpert_tree.films.set_index("path").loc[raw.index]
    positives = uncertain = negatives = blank = 0
    for path, row in raw.iterrows():
        have = true_strings("chexpert", films.loc[path, "labelled"])
        valid = row["part"] == chexpert.VALID_CSV
        for column in chexpert.LABEL_COLUMNS:
            state = CHEXPERT_CODES[row[column]]
            if column in have:
                assert state in ((1,) if valid or column == "No Finding" else (1, -1)), (path, column)
                positives += 1
                uncertain += state == -1 and column != "No Finding"
            elif valid:
                assert state == 0, (path, column)
            elif column == "No Finding":
                assert state == -2, path  # CheXpert's labeller writes No Finding as 1 or blank
            else:
                assert state in (0, -2), (path, column)
                negatives += 1
                blank += state == -2
    assert within(blank, negatives, 0.5)
    train_positives = sum(
        CHEXPERT_CODES[v] in (1, -1)
        for c in chexpert.LABEL_COLUMNS
        if c != "No Finding"
        for v in raw.loc[raw["part"] == chexpert.TRAIN_CSV, c]
    )
    assert uncertain and within(uncertain, train_positives, 0.1)


def test_chexpert_patients_studies_views_and_split_as_written(chexpert_tree):
    read = by_path(chexpert.read(chexpert_tree.manual_dir))
    films = chexpert_tree.films.set_index("path")
    for column in ("patient_id", "study_id", "view", "split", "sex"):
        assert (read.loc[films.index, column] == films[column]).all(), column
    assert (read.loc[films.index, "age"] == films["age"]).all()
    test_patients = set(films.loc[films["split"] == "test", "patient_id"])
    assert test_patients == {f"patient{n:05d}" for n in range(PATIENTS - 5, PATIENTS + 1)}  # the last 20%
    assert {"lateral", "PA", "AP"} <= set(read["view"])
    frontal = contract.select_views(chexpert.read(chexpert_tree.manual_dir))
    assert len(frontal.frame) == int((films["view"] != "lateral").sum())


def test_chexpert_jpegs_decode_to_the_rendered_films(chexpert_tree):
    patient = rendered("chexpert", 1, lateral_rate=0.3)
    for view_number, film in enumerate((f for f in patient.films if f.study == 0), start=1):
        kind = "lateral" if film.view == "lateral" else "frontal"
        path = chexpert_tree.manual_dir / f"train/patient00001/study1/view{view_number}_{kind}.jpg"
        radiograph = radiograph_files.read(path)
        assert radiograph.source == "jpeg" and radiograph.pixels.shape == (SIZE, SIZE)
        assert np.abs(radiograph.pixels.astype(int) - film.image).mean() < 2.0


# --- MIMIC-CXR-JPG --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mimic_tree(tmp_path_factory):
    return source_trees.write_mimic_tree(
        tmp_path_factory.mktemp("mimic") / "tree", PATIENTS, seed=SEED, image_size=SIZE
    )


def test_mimic_tree_joins_each_studys_labels_and_keeps_the_official_split(mimic_tree):
    root = mimic_tree.manual_dir
    frames = {
        name: pd.read_csv(gzip.open(root / f"mimic-cxr-2.0.0-{name}.csv.gz", "rt"), dtype=str, keep_default_na=False)
        for name in ("metadata", "chexpert", "split")
    }
    assert not (root / "mimic-cxr-2.0.0-metadata.csv").exists()
    table = mimic.read(root)
    read = by_path(table)
    meta = frames["metadata"]
    paths = "files/p" + meta["subject_id"].str[:2] + "/p" + meta["subject_id"] + "/s" + meta["study_id"]
    paths = paths + "/" + meta["dicom_id"] + ".jpg"
    assert all((root / p).is_file() for p in paths)
    labels_of_study = frames["chexpert"].set_index(["subject_id", "study_id"])
    for path, subject, study in zip(paths, meta["subject_id"], meta["study_id"], strict=True):
        for column in chexpert.LABEL_COLUMNS:
            (harmonised,) = MAP["chexpert"][column]
            assert read.loc[path, harmonised] == CHEXPERT_CODES[labels_of_study.loc[(subject, study), column]]
    split = frames["split"].set_index("dicom_id")["split"]
    expected = meta["dicom_id"].map(split).map({"train": "train", "validate": "validation", "test": "test"})
    assert (read.loc[paths, "split"].to_numpy() == expected.to_numpy()).all()
    assert set(read["split"]) == {"train", "validation", "test"}
    films = mimic_tree.films.set_index("path")
    for column in ("patient_id", "study_id", "view", "split"):
        assert (read.loc[films.index, column] == films[column]).all(), column
    for path, row in films.iterrows():
        have = true_strings("chexpert", row["labelled"])
        for column in chexpert.LABEL_COLUMNS:
            (harmonised,) = MAP["chexpert"][column]
            assert (read.loc[path, harmonised] in (1, -1)) == (column in have), (path, column)


def test_mimic_jpegs_decode_and_plain_csvs_are_read_too(mimic_tree, tmp_path):
    radiograph = radiograph_files.read(mimic_tree.manual_dir / mimic_tree.films["path"].iloc[0])
    assert radiograph.source == "jpeg" and radiograph.pixels.shape == (SIZE, SIZE)
    plain = source_trees.write_mimic_tree(tmp_path / "plain", 4, seed=SEED, image_size=SIZE, gzipped=False)
    assert (plain.manual_dir / "mimic-cxr-2.0.0-metadata.csv").is_file()
    assert len(mimic.read(plain.manual_dir).frame) == len(plain.films)


# --- PadChest -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def padchest_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("padchest") / "tree"
    return source_trees.write_padchest_tree(root, PATIENTS, seed=SEED, image_size=SIZE)


def test_padchest_labels_are_read_whole_from_the_literal_lists(padchest_tree):
    raw = pd.read_csv(padchest_tree.manual_dir / padchest.CSV, dtype=str, keep_default_na=False)
    assert list(raw.columns[:3]) == ["Unnamed: 0", "ImageID", "ImageDir"]
    table = padchest.read(padchest_tree.manual_dir)
    read = by_path(table)
    paths = raw["ImageDir"] + "/" + raw["ImageID"]
    films = padchest_tree.films.set_index("path").loc[paths]
    spaced = False
    for path, cell, reported in zip(paths, raw["Labels"], films["labelled"], strict=True):
        strings = ast.literal_eval(cell)
        spaced |= any(s != s.strip() for s in strings)
        stripped = {s.strip() for s in strings}
        positive = {target for s in stripped for target in MAP["padchest"][s]}
        for name in table.labels:
            assert read.loc[path, name] == (1 if name in positive else 0), (path, name)
        used = {s for s in stripped if MAP["padchest"][s]}
        assert used <= true_strings("padchest", reported)
        assert positive == truth(reported) & set(table.labels)  # every label the film has and PadChest names
    assert spaced
    assert (raw["Labels"].str.contains("pseudonodule")).any()
    physician = raw["MethodLabel"] == padchest.PHYSICIAN
    assert 0 < physician.sum() < len(raw)
    assert (read.loc[paths, "labelled_by"].to_numpy() == raw["MethodLabel"].to_numpy()).all()
    test = padchest.read(padchest_tree.manual_dir, physician_test=True).frame
    assert (test["split"] == "test").sum() == physician.sum()


def test_padchest_patients_views_ages_and_16_bit_pngs(padchest_tree):
    read = by_path(padchest.read(padchest_tree.manual_dir))
    films = padchest_tree.films.set_index("path")
    for column in ("patient_id", "study_id", "view", "sex"):
        assert (read.loc[films.index, column] == films[column]).all(), column
    assert (read.loc[films.index, "age"] == films["age"]).all()
    assert (read["split"] == contract.NO_SPLIT).all()
    first = padchest_tree.films.iloc[0]
    stored = cv2.imread(str(padchest_tree.manual_dir / first["path"]), cv2.IMREAD_UNCHANGED)
    assert stored.dtype == np.uint16 and stored.max() < 2**12
    film = rendered("padchest", 1, lateral_rate=0.3).films[0]
    lo, hi = float(film.image.min()), float(film.image.max())
    expected = np.round((film.image - lo) * 255.0 / (hi - lo)).astype(np.uint8)  # the range scaling of 16-bit films
    np.testing.assert_array_equal(radiograph_files.read(padchest_tree.manual_dir / first["path"]).pixels, expected)


# --- VinDr-CXR ------------------------------------------------------------------------------------

DISAGREEMENT = 0.1


@pytest.fixture(scope="module")
def vindr_tree(tmp_path_factory):
    pytest.importorskip("pydicom")
    root = tmp_path_factory.mktemp("vindr") / "tree"
    return source_trees.write_vindr_tree(root, 60, seed=SEED, image_size=SIZE, reader_disagreement=DISAGREEMENT)


@pytest.mark.parametrize("policy", ["majority", "any", "all"])
def test_vindr_reader_policies_give_the_states_of_the_written_votes(vindr_tree, policy):
    root = vindr_tree.manual_dir
    train = pd.read_csv(root / "annotations/image_labels_train.csv")
    test = pd.read_csv(root / "annotations/image_labels_test.csv")
    assert (train.groupby("image_id").size() == 3).all() and not test["image_id"].duplicated().any()
    columns = [c for c in train.columns if c not in ("image_id", "rad_ID")]
    votes = train.groupby("image_id")[columns].agg(["sum", "count"])
    total, count = votes.xs("sum", axis=1, level=1), votes.xs("count", axis=1, level=1)
    positive = {"majority": 2 * total > count, "any": total > 0, "all": total == count}[policy]
    positive = pd.concat([positive, test.set_index("image_id")[columns] == 1])
    read = vindr.read(root, readers=policy).frame.set_index("patient_id")
    for name in read.columns.intersection([n for targets in MAP["vindr"].values() for n in targets]):
        sources = [c for c in columns if name in MAP["vindr"][c]]
        expected = positive[sources].any(axis=1)
        assert (read.loc[expected.index, name] == expected.astype(int)).all(), (policy, name)
    assert set(read["split"]) == {"train", "test"}
    films = vindr_tree.films.set_index("patient_id")
    assert (read.loc[films.index, "split"] == films["split"]).all()


def test_vindr_readers_disagree_at_the_set_rate_and_their_majority_is_the_film(vindr_tree):
    train = pd.read_csv(vindr_tree.manual_dir / "annotations/image_labels_train.csv")
    columns = [c for c in train.columns if c not in ("image_id", "rad_ID", "No finding")]
    per_image = train.groupby("image_id")[columns].sum()
    split_votes = ((per_image > 0) & (per_image < 3)).to_numpy()
    assert within(int(split_votes.sum()), split_votes.size, DISAGREEMENT)
    films = vindr_tree.films.set_index("patient_id")
    for image_id, votes in per_image.iterrows():
        have = true_strings("vindr", films.loc[image_id, "labelled"]) or {"Other diseases"}
        majority = {c for c in columns if votes[c] >= 2}
        assert majority == have & set(columns), image_id
    reader_rows = train.set_index(["image_id", "rad_ID"])
    assert (reader_rows["No finding"] == (reader_rows[columns].sum(axis=1) == 0)).all()
    test = pd.read_csv(vindr_tree.manual_dir / "annotations/image_labels_test.csv").set_index("image_id")
    assert len(test) == 12  # the last fifth of the 60 images
    for image_id, row in test.iterrows():
        have = true_strings("vindr", films.loc[image_id, "labelled"]) or {"Other diseases"}
        assert set(row.index[row == 1]) == have, image_id  # the consensus is the film, No finding included


def test_vindr_dicoms_display_as_the_rendered_films(vindr_tree):
    pydicom = pytest.importorskip("pydicom")
    shown = {}
    for number in (1, 2, 3, 4, 5, 6):
        row = vindr_tree.films.iloc[number - 1]
        radiograph = radiograph_files.read(vindr_tree.manual_dir / row["path"])
        film = rendered("vindr", number, studies=(1, 1)).films[0]
        np.testing.assert_array_equal(radiograph.pixels, film.image)
        shown[str(pydicom.dcmread(vindr_tree.manual_dir / row["path"]).PhotometricInterpretation)] = True
    assert set(shown) == {"MONOCHROME1", "MONOCHROME2"}


# --- A hospital's export --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hospital_tree(tmp_path_factory):
    pytest.importorskip("pydicom")
    root = tmp_path_factory.mktemp("hospital") / "tree"
    return source_trees.write_hospital_tree(root, PATIENTS, seed=SEED, image_size=SIZE, lateral_rate=0.2)


def test_hospital_export_is_read_with_the_labels_splits_and_files_written(hospital_tree):
    raw = pd.read_csv(hospital_tree.manual_dir / hospital.CSV, dtype=str, keep_default_na=False)
    table = hospital.read(hospital_tree.manual_dir)
    read = by_path(table)
    label_columns = [c for c in raw.columns if c not in (*hospital.REQUIRED, "study_id")]
    assert tuple(label_columns) == source_trees.HOSPITAL_LABELS
    codes = {"1": 1, "0": 0, "-1": -1, "": -2}
    for column in label_columns:
        np.testing.assert_array_equal(read.loc[raw["path"], column].to_numpy(), raw[column].map(codes).to_numpy())
    films = hospital_tree.films.set_index("path")
    for column in ("patient_id", "study_id", "view", "split", "sex"):
        assert (read.loc[films.index, column] == films[column]).all(), column
    for path, row in films.iterrows():
        have = truth(row["labelled"])
        for column in label_columns:
            assert (read.loc[path, column] in (1, -1)) == (column in have), (path, column)
    assert set(read["split"]) == {"train", "validation", "test"}
    assert (read.groupby("patient_id")["split"].nunique() == 1).all()
    assert {p.rsplit(".", 1)[1] for p in raw["path"]} == {"png", "jpg", "dcm"}


def test_hospital_films_decode_from_png_jpeg_and_dicom(hospital_tree):
    first = hospital_tree.films[hospital_tree.films["patient_id"] == "H000001"]
    patient = rendered("hospital", 1, lateral_rate=0.2)
    assert len(first) == len(patient.films)
    for (_, row), film in zip(first.iterrows(), patient.films, strict=True):
        radiograph = radiograph_files.read(hospital_tree.manual_dir / row["path"], allow_lateral=True)
        difference = np.abs(radiograph.pixels.astype(int) - film.image)
        assert difference.max() == 0 if radiograph.source in ("png", "dicom") else difference.mean() < 2.0


def test_hospital_export_without_a_split_leaves_it_blank(tmp_path):
    tree = source_trees.write_hospital_tree(
        tmp_path / "t", 5, seed=SEED, image_size=SIZE, split_shares=None, formats=("png",), label_names=("Effusion",)
    )
    table = hospital.read(tree.manual_dir)
    assert (table.frame["split"] == contract.NO_SPLIT).all() and table.labels == ("Effusion",)


# --- every writer ---------------------------------------------------------------------------------


def test_trees_are_the_same_bytes_for_a_seed_and_differ_for_another(tmp_path):
    one = source_trees.write_chexpert_tree(tmp_path / "a", 6, seed=3, image_size=SIZE)
    two = source_trees.write_chexpert_tree(tmp_path / "b", 6, seed=3, image_size=SIZE)
    other = source_trees.write_chexpert_tree(tmp_path / "c", 6, seed=4, image_size=SIZE)
    assert tree_digest(one.manual_dir) == tree_digest(two.manual_dir) != tree_digest(other.manual_dir)
    spread = source_trees.write_chexpert_tree(tmp_path / "d", 6, seed=3, image_size=SIZE, num_workers=2)
    assert tree_digest(spread.manual_dir) == tree_digest(one.manual_dir)  # whatever renders the films
    pytest.importorskip("pydicom")
    dicoms = [source_trees.write_vindr_tree(tmp_path / f"v{k}", 4, seed=3, image_size=SIZE) for k in range(2)]
    assert tree_digest(dicoms[0].manual_dir) == tree_digest(dicoms[1].manual_dir)


def test_a_large_tree_shows_its_progress(tmp_path, capsys):
    source_trees.write_hospital_tree(tmp_path / "t", 3, image_size=SIZE, formats=("png",), progress=True)
    assert "phantom hospital patients" in capsys.readouterr().err


def test_a_tree_is_whole_or_absent(tmp_path, monkeypatch):
    root = tmp_path / "tree"
    written = []

    def fail_on_the_third(path, image):
        written.append(path)
        if len(written) == 3:
            raise OSError(28, "No space left on device")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")

    monkeypatch.setattr(source_trees, "_write_jpeg", fail_on_the_third)
    with pytest.raises(OSError, match="No space left"):
        source_trees.write_chexpert_tree(root, 5, image_size=SIZE)
    assert list(tmp_path.iterdir()) == []  # neither the tree nor its draft
    monkeypatch.undo()
    source_trees.write_hospital_tree(root, 2, image_size=SIZE, formats=("png",))
    with pytest.raises(FileExistsError, match="exists"):
        source_trees.write_hospital_tree(root, 2, image_size=SIZE, formats=("png",))


@pytest.mark.parametrize(
    "writer, options, message",
    [
        ("chexpert", {"uncertain_rate": 1.5}, "uncertain_rate must be in"),
        ("chexpert", {"folder": "CheXpert"}, "folder must be one of"),
        ("mimic", {"split_shares": (0.5, 0.2, 0.2)}, "sum to 1"),
        ("mimic", {"labeller": "radgraph"}, "labeller must be one of"),
        ("padchest", {"image_dirs": 0}, "image_dirs must be"),
        ("hospital", {"formats": ("tiff",)}, "formats must be some of"),
        ("hospital", {"label_names": ("Nodules",)}, "label_names must be harmonised names"),
        ("hospital", {"site": "Z"}, "unknown site 'Z'"),
        ("vindr", {"image_size": 16}, r"image_size must be an integer in \[32, 4096\]"),
        ("padchest", {"num_patients": 0}, "the number of patients must be an integer >= 1"),
        ("mimic", {"num_workers": 0}, "num_workers must be an integer >= 1"),
    ],
)
def test_bad_arguments_are_one_clear_line(tmp_path, writer, options, message):
    options = {"num_patients": 3, "image_size": SIZE, **options}
    with pytest.raises(ValueError, match=message):
        source_trees.WRITERS[writer](tmp_path / "t", options.pop("num_patients"), **options)
    assert not (tmp_path / "t").exists()


def test_the_unused_padchest_strings_and_the_catch_all_map_to_nothing():
    assert all(MAP["padchest"][s] == () for s in source_trees.PADCHEST_UNUSED_STRINGS)
    assert all(MAP[source][s] == () for source, s in source_trees.CATCH_ALL.items())
    assert set(source_trees.IMPLIED) <= set(MAP["chexpert"]) | {n for t in MAP["vindr"].values() for n in t}
