"""The sources' builder (``lungjax_sources``): every source builds from a tiny tree in its real format and
reads back row for row as its adapter reads the table; splits keep patients on one side; a rebuild
gives the same bytes; a changed file is never served from the old build; bad input stops the build in
one line naming the file and the row, leaving nothing behind."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import write_dicom
from test_sources_mimic import write_release

from lungjax import main
from lungjax.bench.synthetic_films import synthetic_film
from lungjax.config import check
from lungjax.config.base import base_config
from lungjax.data import building, dataset, images, phantom, radiograph_files, records, source_builder
from lungjax.data.sources import chestxray14, chexpert, contract, hospital, labelspace, padchest, vindr

SIZE = 32
RNG_SEED = 0


def _film(rng, height: int, width: int, dtype=np.uint8) -> np.ndarray:
    """A film-like image: a bright body with darker lungs and noise (not uniform, so no warnings)."""
    top = 255 if dtype == np.uint8 else 4095
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    body = 0.5 + 0.3 * np.cos(6 * x) * np.sin(4 * y) + 0.1 * rng.random((height, width))
    return np.clip(body * top, 0, top).astype(dtype)


def write_chexpert(root: Path, rng) -> Path:
    """CheXpert-v1.0-small: train.csv (8 patients, two frontal films and a lateral each) and valid.csv."""
    manual = root / "CheXpert-v1.0-small"
    header = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(chexpert.LABEL_COLUMNS)
    parts = {"train": (range(1, 9), 2), "valid": (range(64541, 64544), 1)}
    for part, (patients, studies) in parts.items():
        rows = []
        for patient in patients:
            for study in range(1, studies + 1):
                for view, kind in ((1, "frontal"), (2, "lateral")):
                    path = f"{manual.name}/{part}/patient{patient:05d}/study{study}/view{view}_{kind}.jpg"
                    (root / path).parent.mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(root / path), _film(rng, 48, 40))
                    values = rng.choice(["1.0", "0.0", "-1.0", ""], size=len(chexpert.LABEL_COLUMNS))
                    frontal, ap_pa = ("Frontal", "AP") if kind == "frontal" else ("Lateral", "")
                    rows.append(f"{path},Female,{50 + patient % 30},{frontal},{ap_pa}," + ",".join(values))
        (manual / f"{part}.csv").write_text("\n".join([header, *rows]) + "\n")
    return manual


def write_mimic(root: Path, rng) -> Path:
    root.mkdir(parents=True)
    frames = write_release(root, subjects=6, seed=1)
    for row in frames["metadata"].itertuples():
        subject = str(row.subject_id)
        path = root / f"files/p{subject[:2]}/p{subject}/s{row.study_id}/{row.dicom_id}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), _film(rng, 40, 36))
    return root


def write_padchest(root: Path, rng) -> Path:
    """The 160K CSV's columns over 16-bit PNGs in numbered folders; labels drawn from the mapping."""
    strings = [s for s in labelspace.mapping(padchest.SOURCE) if s]
    rows = []
    for k in range(20):
        image = f"img{k:03d}.png"
        folder = str(k % 3)
        (root / folder).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / folder / image), _film(rng, 44, 52, np.uint16))
        labels = "" if k == 5 else repr([f" {s}" for s in rng.choice(strings, size=int(rng.integers(1, 3)))])
        method = "Physician" if k % 4 == 0 else "RNN_model"
        rows.append([image, folder, f"S{k}", f"P{k // 2}", "1950", "F", "20100101", "PA", method, labels])
    pd.DataFrame(rows, columns=list(padchest.COLUMNS)).to_csv(root / padchest.CSV, index=False)
    return root


def write_vindr(root: Path, rng) -> Path:
    """PhysioNet's release: three readers per training image, one consensus row per test image, DICOMs."""
    labels = list(labelspace.mapping(vindr.SOURCE))
    (root / "annotations").mkdir(parents=True)
    for part, images_, readers in (("train", 9, ("R1", "R2", "R3")), ("test", 3, (None,))):
        rows = []
        for k in range(images_):
            image_id = f"{part}{k:04d}"
            (root / part).mkdir(exist_ok=True)
            write_dicom(root / part / f"{image_id}{vindr.DICOM_SUFFIX}", _film(rng, 40, 40, np.uint16))
            for reader in readers:
                votes = (rng.random(len(labels)) < 0.3).astype(int)
                rows.append([image_id, *([reader] if reader else []), *votes])
        columns = ["image_id", *(["rad_ID"] if readers[0] else []), *labels]
        pd.DataFrame(rows, columns=columns).to_csv(root / vindr.PHYSIONET_FILES[part], index=False)
    return root


def write_hospital(root: Path, rng) -> Path:
    """The documented CSV over PNG, JPEG and DICOM films, the hospital's own split."""
    header = "path,patient_id,study_id,view,sex,age,split,Atelectasis,Cardiomegaly,Effusion"
    (root / "films").mkdir(parents=True)
    rows = []
    for k in range(12):
        name = f"films/{k:02d}." + ("png", "jpg", "dcm")[k % 3]
        film = _film(rng, 36, 30, np.uint16 if k % 3 == 2 else np.uint8)
        write_dicom(root / name, film) if k % 3 == 2 else cv2.imwrite(str(root / name), film)
        split = ("train", "train", "validation", "test")[(k // 2) % 4]
        values = ",".join(rng.choice(["1", "0", "-1", ""], size=3))
        rows.append(f"{name},H{k // 2},S{k},PA,F,{40.5 + k},{split},{values}")
    (root / hospital.CSV).write_text("\n".join([header, *rows]) + "\n")
    return root


WRITERS = {
    "chexpert": write_chexpert,
    "mimic": write_mimic,
    "padchest": write_padchest,
    "vindr": write_vindr,
    "hospital": write_hospital,
}


def data_config(source: str, manual: Path, data_dir: Path, **options):
    data = base_config().data
    data.source, data.manual_dir, data.data_dir = source, str(manual), str(data_dir)
    data.stored_size, data.build_workers = SIZE, 1
    for key, value in options.items():
        setattr(data.build_options, key, value)
    return data


def read_back(builder) -> dict[str, list[dict]]:
    return {
        split: [records.data_source(builder, split)[i] for i in range(builder.info.splits[split].num_examples)]
        for split in builder.info.splits
    }


@pytest.mark.parametrize("source", list(WRITERS))
def test_each_source_builds_and_reads_back_as_its_table(tmp_path, source):
    manual = WRITERS[source](tmp_path / "download", np.random.default_rng(RNG_SEED))
    builder = dataset.build(data_config(source, manual, tmp_path / "tfds"), tmp_path)
    assert builder.name == "lungjax_sources" and builder.builder_config.name == f"{source}_{SIZE}"
    table = source_builder.read_table(manual, builder.builder_config)
    expected = dict(zip(table.frame["path"], source_builder.states_over_vocabulary(table), strict=True))
    rows = table.frame.set_index("path")
    examples = read_back(builder)
    assert sum(len(e) for e in examples.values()) == len(table.frame)  # every row, once
    patients = {}
    for split, split_examples in examples.items():
        for example in split_examples:
            name = example["image_name"].decode()
            row = rows.loc[name]
            assert example["label_states"].dtype == np.int8
            assert example["label_states"].tolist() == expected[name].tolist()
            assert example["source"].decode() == table.source
            assert example["patient_id"].decode() == str(row["patient_id"])
            assert example["study_id"].decode() == str(row["study_id"])
            assert (example["view"].decode(), example["sex"].decode()) == (row["view"], row["sex"])
            assert example["age"] == (int(row["age"]) if row["age"] >= 0 else -1)
            if row["split"] != contract.NO_SPLIT and row["split"] != "train":
                assert split == row["split"]  # the official split is kept
            patients.setdefault(example["patient_id"], set()).add(split)
    assert all(len(splits) == 1 for splits in patients.values())  # patient-disjoint
    # The stored film is the reader's film padded and resized as NIH builds do (no JPEG here is large
    # enough for a reduced decode, so exactly).
    example = examples["train"][0]
    film = radiograph_files.read(manual / example["image_name"].decode(), allow_lateral=True).pixels
    stored = records.decode_png(example["image"])
    assert np.array_equal(stored, images.resize_square(film, SIZE))
    report = building.read_build_report(builder)
    assert report["source"] == table.source and report["rows_read"] == len(table.frame)
    assert report["images"] == {split: len(e) for split, e in examples.items()}
    assert report["label_names"] == list(labelspace.vocabulary())
    for split, split_examples in examples.items():
        states = np.stack([e["label_states"] for e in split_examples])
        for name, counts in report["label_states"][split].items():
            column = states[:, report["label_names"].index(name)]
            assert counts == {contract.STATE_NAMES[s]: int((column == s).sum()) for s in contract.STATE_NAMES}


def test_nih_as_a_source_builds_split_by_patient(tmp_path):
    """NIH read by its adapter (the 14 findings and No Finding, all stated) into ``lungjax_sources``."""
    tree = tmp_path / "nih"
    phantom.write_nih_tree(tree, 12, seed=0, image_size=SIZE, task="full14", num_workers=1)
    builder = source_builder.build_dataset(
        tree, tmp_path / "tfds", source_builder.make_config("nih", SIZE), num_workers=1
    )
    table = chestxray14.read(tree)
    expected = dict(zip(table.frame["path"], source_builder.states_over_vocabulary(table), strict=True))
    examples = read_back(builder)
    assert sum(len(e) for e in examples.values()) == len(table.frame)
    for split_examples in examples.values():
        for example in split_examples:
            assert example["label_states"].tolist() == expected[example["image_name"].decode()].tolist()
    report = building.read_build_report(builder)
    assert report["split"].startswith("patient:") and report["patients_crossing_splits"] == 0  # no lists in the tree
    assert set(report["label_states"]["train"]) == set(labelspace.source_labels("nih"))


def test_build_options_name_the_dataset_and_are_reported(tmp_path):
    manual = write_chexpert(tmp_path / "download", np.random.default_rng(RNG_SEED))
    config = data_config("chexpert", manual, tmp_path / "tfds", frontal_only=True, no_finding_negates=True)
    builder = dataset.build(config, tmp_path)
    assert builder.builder_config.name == f"chexpert_{SIZE}_frontal_nfneg"
    report = building.read_build_report(builder)
    table = chexpert.read(manual, no_finding_negates=True)
    frontal = table.frame["view"].isin(contract.FRONTAL)
    assert report["rows_read"] == len(table.frame) and report["rows_of_the_build"] == int(frontal.sum())
    assert report["options"]["frontal_only"] and report["options"]["no_finding_negates"]
    assert report["options"]["rows_of_other_views"] == int((~frontal).sum())
    assert report["options"]["entries_negated_by_no_finding"] == table.options["entries_negated_by_no_finding"]
    assert report["split"].startswith("official: the source's train and test split")
    views = {e["view"].decode() for split in read_back(builder).values() for e in split}
    assert views <= set(contract.FRONTAL)


def test_make_config_refuses_options_a_source_does_not_take():
    assert source_builder.make_config("vindr", 64, readers="any").name == "vindr_64_any"
    assert source_builder.make_config("padchest", physician_test=True).name == "padchest_256_physician"
    assert source_builder.make_config("chexpert", readers="majority").name == "chexpert_256"  # a default: fine
    with pytest.raises(contract.SourceError, match=r"source 'chexpert' takes no build option \['readers'\]"):
        source_builder.make_config("chexpert", readers="any")
    with pytest.raises(contract.SourceError, match=r"unknown source 'openi'"):
        source_builder.make_config("openi")
    config = base_config()
    config.data.source, config.data.manual_dir = "chexpert", "/somewhere"
    config.data.build_options.physician_test = True
    assert any("source 'chexpert' takes no build option ['physician_test']" in p for p in check.problems(config))
    config.data.source, config.data.build_options.physician_test = "nih", False
    config.data.build_options.readers = "any"
    assert any("['readers'] are not allowed with data.source='nih'" in p for p in check.problems(config))
    config.data.source, config.data.manual_dir = "vindr", ""
    assert any("manual_dir: '' is not allowed with data.source='vindr'" in p for p in check.problems(config))


def test_rebuild_gives_identical_bytes(tmp_path):
    manual = write_hospital(tmp_path / "download", np.random.default_rng(RNG_SEED))
    first = dataset.build(data_config("hospital", manual, tmp_path / "a"), tmp_path)
    second = dataset.build(data_config("hospital", manual, tmp_path / "b"), tmp_path)
    files = sorted(p.name for p in Path(first.data_path).iterdir() if "array_record" in p.name)
    assert files and files == sorted(p.name for p in Path(second.data_path).iterdir() if "array_record" in p.name)
    for name in files:
        assert (Path(first.data_path) / name).read_bytes() == (Path(second.data_path) / name).read_bytes()


def test_a_changed_file_is_not_served_from_the_old_build(tmp_path):
    rng = np.random.default_rng(RNG_SEED)
    manual = write_hospital(tmp_path / "download", rng)
    config = data_config("hospital", manual, tmp_path / "tfds")
    dataset.build(config, tmp_path)
    assert dataset.build(config, tmp_path).is_prepared()  # unchanged: served
    cv2.imwrite(str(manual / "films/00.png"), _film(rng, 60, 50))  # another film under the same name
    with pytest.raises(building.DatasetMismatchError, match=r"films.paths_and_sizes_sha256: built from"):
        dataset.build(config, tmp_path)
    manual = write_hospital(tmp_path / "download2", np.random.default_rng(RNG_SEED))
    config = data_config("hospital", manual, tmp_path / "tfds2")
    dataset.build(config, tmp_path)
    csv = manual / hospital.CSV
    csv.write_text(csv.read_text().replace(",PA,F,40.5,train,", ",AP,F,40.5,train,"))
    with pytest.raises(building.DatasetMismatchError, match=r"files.labels.csv: built from"):
        dataset.build(config, tmp_path)


def _nothing_built(data_dir: Path) -> bool:
    return not data_dir.exists() or not any(p for p in data_dir.rglob("*") if not p.name.startswith("."))


@pytest.mark.parametrize(
    "source, spoil, message",
    [
        (
            "chexpert",
            lambda m: (m / "train.csv").write_text((m / "train.csv").read_text().replace(",Fracture", "", 1)),
            r"train.csv lacks the columns \['Fracture'\]",
        ),
        (
            "padchest",
            lambda m: (m / padchest.CSV).write_text((m / padchest.CSV).read_text().replace("['", "['nodulish', '", 1)),
            r"PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv row \d+ \(ImageID img\d+.png\): label 'nodulish' "
            r"is neither mapped",
        ),
        (
            "chexpert",
            lambda m: (m / "train/patient00003/study1/view1_frontal.jpg").unlink(),
            r"chexpert \(train.csv, valid.csv\): table row 8 \(train/patient00003/study1/view1_frontal.jpg\) does not "
            r"exist under",
        ),
        (
            "hospital",
            lambda m: (m / hospital.CSV).write_text(
                (m / hospital.CSV)
                .read_text()
                .replace("films/01.jpg,H0,S1,PA,F,41.5,train", "films/01.jpg,H0,S1,PA,F,41.5,test")
            ),
            r"hospital: patient H0 is on two official splits",
        ),
        (
            "vindr",
            lambda m: (m / vindr.PHYSIONET_FILES["train"]).write_text(
                (m / vindr.PHYSIONET_FILES["train"]).read_text().replace(",R1,0,", ",R1,-1,", 1)
            ),
            r"image_labels_train.csv line \d+: column '[^']+' must be 0 or 1",
        ),
    ],
)
def test_bad_input_is_one_line_and_nothing_is_built(tmp_path, source, spoil, message):
    manual = WRITERS[source](tmp_path / "download", np.random.default_rng(RNG_SEED))
    spoil(manual)
    data_dir = tmp_path / "tfds"
    with pytest.raises(contract.SourceError, match=message) as raised:
        dataset.build(data_config(source, manual, data_dir), tmp_path)
    assert "\n" not in str(raised.value)
    assert main._is_expected(raised.value)  # the command line says it in one line, exit status 2
    assert _nothing_built(data_dir)


def test_missing_and_unreadable_films_are_skipped_when_asked(tmp_path):
    manual = write_chexpert(tmp_path / "download", np.random.default_rng(RNG_SEED))
    missing, unreadable = "train/patient00002/study1/view1_frontal.jpg", "train/patient00002/study2/view1_frontal.jpg"
    (manual / missing).unlink()
    (manual / unreadable).write_bytes(b"\xff\xd8\xff not a JPEG")
    config = data_config("chexpert", manual, tmp_path / "tfds")
    with pytest.raises(contract.SourceError, match=rf"valid.csv\): table row 4 \({missing}\) does not exist"):
        dataset.build(config, tmp_path)
    assert _nothing_built(tmp_path / "tfds")
    config.skip_bad_images = True
    builder = dataset.build(config, tmp_path)
    report = building.read_build_report(builder)
    assert [s["image"] for s in report["skipped"]] == [missing, unreadable]
    assert unreadable in report["skipped"][1]["reason"]
    table = chexpert.read(manual)
    assert sum(report["images"].values()) == len(table.frame) - 2
    names = {e["image_name"].decode() for split in read_back(builder).values() for e in split}
    assert missing not in names and unreadable not in names


def test_an_uncertain_entry_the_refuse_policy_forbids_is_one_expected_line(tmp_path):
    """The build keeps -1 as it is; a training label set under ``refuse`` stops on it in one line."""
    manual = write_hospital(tmp_path / "download", np.random.default_rng(RNG_SEED))
    table = hospital.read(manual)
    with pytest.raises(contract.SourceError, match=r"hospital: row \d+ \(films/\d+\.\w+\) is uncertain for") as raised:
        labelspace.label_matrix(table, list(table.labels), uncertainty="refuse")
    assert main._is_expected(raised.value)


# Reduced decode ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "width, height, at_least, reduction",
    [(2048, 2500, 256, 8), (2048, 2500, 313, 8), (2048, 2500, 314, 4), (2048, 2500, 1024, 2), (2048, 2500, 1251, 1)],
)
def test_the_reduction_keeps_the_longer_side_at_least_the_stored_size(width, height, at_least, reduction):
    assert images.jpeg_reduction(width, height, at_least) == reduction
    assert -(-max(width, height) // reduction) >= at_least


@pytest.mark.slow
def test_reduced_decode_stores_what_the_full_decode_stores(tmp_path):
    """At 256 from a 2,500 x 2,048 JPEG (decoded at 1/8: 313 x 256, then area-resized), the stored film
    differs from the full decode's by a mean absolute difference of 1.43 grey levels. That is the cost of
    resampling twice: an exact area reduction to 313 then to 256, with no JPEG in between, differs by
    1.21 already (smoothing twice, and the 1/8 grid's half-pixel round-up); libjpeg's scaled IDCT adds
    about 0.2. Bound: within 0.5 of that two-step reference and under 2 grey levels (0.8% of the range)."""
    film = synthetic_film()
    path = tmp_path / "film.jpg"
    cv2.imwrite(str(path), film, [cv2.IMWRITE_JPEG_QUALITY, 90])
    full = images.resize_square(radiograph_files.read(path).pixels, 256).astype(np.float64)
    reduced_film = radiograph_files.read(path, at_least=256).pixels
    assert reduced_film.shape == (313, 256)
    reduced = images.resize_square(reduced_film, 256).astype(np.float64)
    two_step = images.resize_square(cv2.resize(film, (256, 313), interpolation=cv2.INTER_AREA), 256)
    difference = np.abs(full - reduced).mean()
    assert difference < 2.0
    assert difference < np.abs(full - two_step).mean() + 0.5
    # No reduction applies (the stored size is over half the film's longer side): the very same pixels.
    exact = radiograph_files.read(path, at_least=1300).pixels
    assert np.array_equal(exact, radiograph_files.read(path).pixels)


def test_reduced_decode_leaves_png_and_small_jpeg_alone(tmp_path):
    film = synthetic_film(300, 260)
    cv2.imwrite(str(tmp_path / "a.png"), film)
    cv2.imwrite(str(tmp_path / "a.jpg"), film)
    assert np.array_equal(radiograph_files.read(tmp_path / "a.png", at_least=32).pixels, film)
    assert radiograph_files.read(tmp_path / "a.jpg", at_least=32).pixels.shape == (38, 33)  # 1/8
    assert radiograph_files.read(tmp_path / "a.jpg", at_least=256).pixels.shape == (300, 260)  # none


def test_padchest_labels_in_the_build_are_exactly_the_mapped_strings(tmp_path):
    """Each PadChest film's positives are the harmonised names of its own label strings (whole strings)."""
    manual = write_padchest(tmp_path / "download", np.random.default_rng(RNG_SEED))
    builder = dataset.build(data_config("padchest", manual, tmp_path / "tfds"), tmp_path)
    raw = pd.read_csv(manual / padchest.CSV, dtype=str, keep_default_na=False).set_index("ImageID")
    mapping, names, used = (
        labelspace.mapping("padchest"),
        source_builder.label_names(),
        labelspace.source_labels("padchest"),
    )
    for split in read_back(builder).values():
        for example in split:
            labels = raw.loc[Path(example["image_name"].decode()).name, "Labels"]
            states = dict(zip(names, example["label_states"].tolist(), strict=True))
            if not labels:
                assert all(states[n] == contract.NOT_STATED for n in names)
                continue
            positive = {t for s in ast.literal_eval(labels) for t in mapping[s.strip()]}
            assert {n for n in used if states[n] == contract.POSITIVE} == positive
            assert all(states[n] == contract.NEGATIVE for n in used if n not in positive)


@pytest.mark.slow
def test_reduced_decode_bench_reports_both_paths(tmp_path):
    out = tmp_path / "decode.json"
    command = [sys.executable, "-m", "lungjax.bench.reduced_decode", "--films=1", "--repeats=1", f"--out={out}"]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["reductions"] == [8] and len(result["reduced_images_per_s"]) == 1
    assert result["full_images_per_s"][0] > 0 and 0 < result["mean_abs_difference"][0] < 2
