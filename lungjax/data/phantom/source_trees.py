"""Phantom films written in each source's real format, so every adapter of :mod:`lungjax.data.sources`
reads pixels and metadata end to end: CheXpert, MIMIC-CXR-JPG, PadChest, VinDr-CXR (PhysioNet) and a
hospital's own CSV export.

What a film shows is one of NIH's finding combinations (:mod:`.studies`); in the harmonised vocabulary
that is NIH's mapping of those findings (``label_map.csv``), the labels a finding's sign also is by
the vocabulary's definitions (:data:`IMPLIED`: a nodule is a lung lesion and a lung opacity), and No
Finding on a normal film. Each source states it in its own vocabulary by inverting its mapping
(:func:`source_positives`): for every harmonised label the film has and the source names, one of the
source's strings that means only labels the film has. A film whose findings the source cannot name at
all gets the source's catch-all where it has one (VinDr's ``Other diseases``). Uncertain and
not-stated entries, reader disagreement and labeller choices are drawn at the rates given, from a
generator of the patient's own, so every tree is the same bytes for a seed.

Every writer takes ``site`` (a hospital's look, views, prevalence and labeller: :mod:`.sites`),
``num_workers`` (spawned processes that render the films; the bytes do not depend on their number) and
``progress`` (a bar over the patients). A tree is written into a draft folder beside ``root`` and renamed
into place: it is whole or absent.
Each writer returns a :class:`SourceTree`: the folder an adapter reads (``manual_dir``) and one row per
film with what was written (path, patient, study, view, split, sex, age, the findings shown and the
findings reported), for tests and reports to hold the adapter's table against.

VinDr and the hospital's DICOM films are written with pydicom (the ``dicom`` and ``test`` extras),
imported only when a DICOM is written.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import gzip
import hashlib
import io
import itertools
import os
import shutil
import socket
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import cv2
import numpy as np
import pandas as pd

from lungjax.data import images, labels, workers
from lungjax.data.phantom import sites, studies
from lungjax.data.sources import chexpert, contract, hospital, labelspace, mimic, padchest, vindr

# Harmonised labels that a phantom finding's sign also is, by the vocabulary's definitions: Lung Lesion
# is "a focal lung lesion (CheXpert's nodule or mass class)", Lung Opacity "any pulmonary opacity".
IMPLIED = MappingProxyType(
    {
        "Lung Lesion": ("Mass", "Nodule"),
        "Lung Opacity": ("Atelectasis", "Consolidation", "Edema", "Infiltration", "Mass", "Nodule", "Pneumonia"),
    }
)
# A source's string for "something else is abnormal", stated when none of the film's findings has a name there.
CATCH_ALL = MappingProxyType({"vindr": "Other diseases"})
JPEG_QUALITY = 95
STORED_SCALE = 16  # 8-bit grey g is stored as 16 g in DICOMs and 16-bit PNGs: 12 bits, as most CRs store
# The window that displays STORED_SCALE * g as g exactly (PS3.3 C.11.2.1.2.1, LINEAR): low edge 0, width - 1 = 16 * 255.
DICOM_WINDOW = (2040.5, 4081.0)
FIRST_STUDY_YEAR = 2012
NOT_STATED_TEXT = ""
CHEXPERT_FOLDER = chexpert.FOLDERS[1]  # the folder a CheXpert tree unpacks to (the download's -small)
# Patients drawn per task a worker process is handed, at most, and tasks handed out per worker at a time:
# the films held at once stay bounded, however many patients a tree has.
PATIENTS_PER_TASK = 16
TASKS_PER_WORKER = 3


@dataclasses.dataclass(frozen=True)
class SourceTree:
    """A written tree: the folder its adapter reads, and one row per film of what was written."""

    source: str
    manual_dir: Path
    films: pd.DataFrame  # path, patient_id, study_id, view, split, sex, age, findings, labelled ("|"-joined)


@functools.cache
def _label_map(source: str) -> tuple[Mapping[str, tuple[str, ...]], tuple[str, ...]]:
    """A source's mapping and labels (:mod:`.labelspace`), read once per process: a tree asks per study."""
    return MappingProxyType(labelspace.mapping(source)), labelspace.source_labels(source)


def harmonised_truth(findings: Sequence[str]) -> frozenset[str]:
    """The harmonised labels a film showing ``findings`` (FINDINGS14 names) has."""
    nih, _ = _label_map("nih")
    if not findings:
        return frozenset(nih[labels.NO_FINDING])
    names = {target for name in findings for target in nih[name]}
    names |= {implied for implied, by in IMPLIED.items() if names & set(by)}
    return frozenset(names)


def source_positives(source: str, truth: frozenset[str], rng: np.random.Generator) -> tuple[str, ...]:
    """The source's strings that state ``truth`` (harmonised): for each of its labels the source names,
    a string (drawn among those that fit) whose every meaning is in ``truth``; the catch-all when none."""
    table, names = _label_map(source)
    chosen: list[str] = []
    covered: set[str] = set()
    for name in names:
        if name not in truth or name in covered:
            continue
        fits = [string for string, targets in table.items() if name in targets and set(targets) <= truth]
        string = fits[int(rng.integers(len(fits)))]
        chosen.append(string)
        covered.update(table[string])
    if not chosen and source in CATCH_ALL:
        chosen.append(CATCH_ALL[source])
    return tuple(chosen)


def write_chexpert_tree(
    root: str | os.PathLike,
    num_patients: int,
    *,
    seed: int = 0,
    image_size: int = 64,
    site: str | sites.Site | None = None,
    valid_share: float = 0.2,
    lateral_rate: float = 0.3,
    uncertain_rate: float = 0.1,
    not_stated_rate: float = 0.5,
    folder: str = CHEXPERT_FOLDER,
    num_workers: int = 1,
    progress: bool = False,
) -> SourceTree:
    """``root/<folder>/`` holding ``train.csv``, ``valid.csv`` and ``train|valid/patientNNNNN/studyN/viewN_
    frontal|lateral.jpg``. The last ``valid_share`` of the patients are valid.csv's (the official test
    set), stated by consensus: 1 / 0 on every label. In train.csv a positive is uncertain (-1) at
    ``uncertain_rate``, a negative blank at ``not_stated_rate``; No Finding is 1 or blank, as CheXpert's
    labeller writes it."""
    site = _check_tree(num_patients, image_size, site)
    if folder not in chexpert.FOLDERS:
        raise ValueError(f"folder must be one of {chexpert.FOLDERS}, got {folder!r}")
    _check_rates(
        valid_share=valid_share,
        lateral_rate=lateral_rate,
        uncertain_rate=uncertain_rate,
        not_stated_rate=not_stated_rate,
    )
    split_of = _splits(num_patients, (("train", 1.0 - valid_share), ("test", valid_share)))
    columns = chexpert.LABEL_COLUMNS

    def write(draft: Path) -> list[dict]:
        base = draft / folder
        rows = {"train": [], "test": []}
        films = []
        for patient, rng in _patients(
            num_patients, seed, "chexpert", image_size, site, lateral_rate, progress, num_workers
        ):
            split = split_of[patient.number]
            part = "train" if split == "train" else "valid"
            sex = {"F": "Female", "M": "Male"}[patient.anatomy.sex]
            for study, group in _by_study(patient.films):
                states = _report_states(
                    source_positives("chexpert", harmonised_truth(group[0].labelled), rng),
                    columns,
                    rng,
                    uncertain_rate=uncertain_rate if part == "train" else 0.0,
                    not_stated_rate=not_stated_rate if part == "train" else 0.0,
                    positive_or_blank=("No Finding",) if part == "train" else (),
                )
                for view_number, film in enumerate(group, start=1):
                    kind = "lateral" if film.view == studies.LATERAL else "frontal"
                    relative = f"{part}/patient{patient.number:05d}/study{study + 1}/view{view_number}_{kind}.jpg"
                    _write_jpeg(base / relative, film.image)
                    frontal = film.view != studies.LATERAL
                    rows[split].append(
                        [
                            f"{folder}/{relative}",
                            sex,
                            str(patient.anatomy.age),
                            "Frontal" if frontal else "Lateral",
                            film.view if frontal else "",
                            *(_chexpert_text(s) for s in states),
                        ]
                    )
                    films.append(
                        _film_row(
                            relative,
                            f"patient{patient.number:05d}",
                            f"patient{patient.number:05d}/study{study + 1}",
                            film,
                            split,
                            patient,
                        )
                    )
        header = list(chexpert.METADATA_COLUMNS) + list(columns)
        _write_csv(base / chexpert.TRAIN_CSV, header, rows["train"])
        _write_csv(base / chexpert.VALID_CSV, header, rows["test"])
        return films

    return _write_tree("chexpert", root, folder, write)


def write_mimic_tree(
    root: str | os.PathLike,
    num_patients: int,
    *,
    seed: int = 0,
    image_size: int = 64,
    site: str | sites.Site | None = None,
    split_shares: tuple[float, float, float] = (0.7, 0.1, 0.2),
    lateral_rate: float = 0.3,
    uncertain_rate: float = 0.1,
    not_stated_rate: float = 0.5,
    labeller: str = "chexpert",
    gzipped: bool = True,
    num_workers: int = 1,
    progress: bool = False,
) -> SourceTree:
    """``root/`` holding ``mimic-cxr-2.0.0-metadata``, ``-<labeller>`` and ``-split`` (``.csv.gz`` as
    PhysioNet ships them when ``gzipped``) and ``files/pNN/pSUBJECT/sSTUDY/DICOM_ID.jpg``. Labels are
    one row per study (CheXpert's 14, columns in MIMIC's alphabetical order), uncertain and blank at the
    rates given; the official split (train / validate / test by ``split_shares``) is by patient."""
    site = _check_tree(num_patients, image_size, site)
    if labeller not in mimic.LABELLERS:
        raise ValueError(f"labeller must be one of {mimic.LABELLERS}, got {labeller!r}")
    _check_rates(lateral_rate=lateral_rate, uncertain_rate=uncertain_rate, not_stated_rate=not_stated_rate)
    split_of = _splits(num_patients, tuple(zip(("train", "validate", "test"), split_shares, strict=True)))
    columns = tuple(sorted(chexpert.LABEL_COLUMNS))

    def write(draft: Path) -> list[dict]:
        metadata, label_rows, split_rows, films = [], [], [], []
        for patient, rng in _patients(
            num_patients, seed, "mimic", image_size, site, lateral_rate, progress, num_workers
        ):
            subject = str(10_000_000 + (patient.number * 1_000_003) % 9_000_000)  # 8 digits, pNN of 10 to 18
            for study, group in _by_study(patient.films):
                study_id = str(50_000_000 + patient.number * 100 + study)
                states = _report_states(
                    source_positives("chexpert", harmonised_truth(group[0].labelled), rng),
                    columns,
                    rng,
                    uncertain_rate=uncertain_rate,
                    not_stated_rate=not_stated_rate,
                    positive_or_blank=("No Finding",),
                )
                label_rows.append([subject, study_id, *(_chexpert_text(s) for s in states)])
                for number, film in enumerate(group):
                    dicom_id = "-".join(
                        _digest(seed, "mimic", subject, study_id, number)[i : i + 8] for i in range(0, 40, 8)
                    )
                    relative = f"files/p{subject[:2]}/p{subject}/s{study_id}/{dicom_id}.jpg"
                    _write_jpeg(draft / relative, film.image)
                    view = {"PA": ("PA", "postero-anterior"), "AP": ("AP", "antero-posterior")}.get(
                        film.view, ("LATERAL", "lateral")
                    )
                    metadata.append(
                        [
                            dicom_id,
                            subject,
                            study_id,
                            "CHEST (PA AND LAT)",
                            view[0],
                            str(image_size),
                            str(image_size),
                            f"{2180 + study}0506",
                            "213014.531",
                            "CHEST (PA AND LAT)",
                            view[1],
                            "Erect",
                        ]
                    )
                    split_rows.append([dicom_id, study_id, subject, split_of[patient.number]])
                    films.append(
                        _film_row(relative, subject, study_id, film, mimic.SPLITS[split_of[patient.number]], patient)
                    )
        suffix = ".csv.gz" if gzipped else ".csv"
        _write_csv(draft / f"{mimic.PREFIX}metadata{suffix}", mimic.RELEASE_METADATA_HEADER, metadata)
        _write_csv(draft / f"{mimic.PREFIX}{labeller}{suffix}", [*mimic.STUDY_KEY, *columns], label_rows)
        _write_csv(draft / f"{mimic.PREFIX}split{suffix}", list(mimic.SPLIT_COLUMNS), split_rows)
        return films

    return _write_tree("mimic", root, "", write)


# Strings PadChest's reports carry that label_map.csv lists as not used; a report mentions one of them
# at ``unused_label_rate`` (pseudonodule among them: never a nodule).
PADCHEST_UNUSED_STRINGS = ("chronic changes", "unchanged", "pseudonodule", "kyphosis", "scoliosis")
# The 160K CSV's columns after its unnamed index column, with the values every phantom row shares (None:
# set per row); DICOM fields as a 12-bit CR film with a full-range window.
PADCHEST_COLUMNS = MappingProxyType(
    {
        "ImageID": None,
        "ImageDir": None,
        "StudyDate_DICOM": None,
        "StudyID": None,
        "PatientID": None,
        "PatientBirth": None,
        "PatientSex_DICOM": None,
        "ViewPosition_DICOM": None,
        "Projection": None,
        "MethodProjection": "Manual review of DICOM fields",
        "Pediatric": "No",
        "Modality_DICOM": "CR",
        "Manufacturer_DICOM": None,
        "PhotometricInterpretation_DICOM": "MONOCHROME2",
        "PixelRepresentation_DICOM": "0",
        "PixelAspectRatio_DICOM": "None",
        "SpatialResolution_DICOM": "None",
        "BitsStored_DICOM": "12",
        "WindowCenter_DICOM": "2047.0",
        "WindowWidth_DICOM": "4095.0",
        "Rows_DICOM": None,
        "Columns_DICOM": None,
        "XRayTubeCurrent_DICOM": "None",
        "Exposure_DICOM": "None",
        "ExposureInuAs_DICOM": "None",
        "ExposureTime": "None",
        "RelativeXRayExposure_DICOM": "None",
        "ReportID": None,
        "Report": None,
        "MethodLabel": None,
        "Labels": None,
        "Localizations": "[]",
        "LabelsLocalizationsBySentence": None,
        "labelCUIS": "[]",
        "LocalizationsCUIS": "[]",
    }
)


def write_padchest_tree(
    root: str | os.PathLike,
    num_patients: int,
    *,
    seed: int = 0,
    image_size: int = 64,
    site: str | sites.Site | None = None,
    lateral_rate: float = 0.3,
    physician_rate: float = 0.3,
    unused_label_rate: float = 0.2,
    spaced_label_rate: float = 0.2,
    image_dirs: int = 3,
    num_workers: int = 1,
    progress: bool = False,
) -> SourceTree:
    """``root/`` holding ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` (an unnamed index
    column, then the release's 35 columns) and 16-bit PNGs (12 bits used) in ``0/`` ... ``<image_dirs -
    1>/``. ``Labels`` is a Python-literal list: ``['normal']`` for a normal film, else the film's
    strings, plus a string listed as not used at ``unused_label_rate``; strings after the first carry
    the release's leading space at ``spaced_label_rate``. Each study is labelled by a physician at
    ``physician_rate``, else by the release's RNN. No official split."""
    site = _check_tree(num_patients, image_size, site)
    _check_rates(
        lateral_rate=lateral_rate,
        physician_rate=physician_rate,
        unused_label_rate=unused_label_rate,
        spaced_label_rate=spaced_label_rate,
    )
    if not isinstance(image_dirs, int) or image_dirs < 1:
        raise ValueError(f"image_dirs must be an integer >= 1, got {image_dirs!r}")

    manufacturer = "PhantomSite" if site is None else f"PhantomSite{site.name}"

    def write(draft: Path) -> list[dict]:
        rows, films = [], []
        for patient, rng in _patients(
            num_patients, seed, "padchest", image_size, site, lateral_rate, progress, num_workers
        ):
            patient_id = str(int(_digest(seed, "padchest", patient.number)[:30], 16))
            birth = FIRST_STUDY_YEAR - patient.anatomy.age
            for study, group in _by_study(patient.films):
                study_id = str(int(_digest(seed, "padchest", patient.number, study)[:30], 16))
                strings = list(source_positives("padchest", harmonised_truth(group[0].labelled), rng))
                if rng.random() < unused_label_rate:
                    strings.append(PADCHEST_UNUSED_STRINGS[int(rng.integers(len(PADCHEST_UNUSED_STRINGS)))])
                strings = [s if k == 0 or rng.random() >= spaced_label_rate else f" {s}" for k, s in enumerate(strings)]
                method = padchest.PHYSICIAN if rng.random() < physician_rate else padchest.METHODS[1]
                for number, film in enumerate(group):
                    image_id = f"{study_id}_{_digest(seed, 'padchest', study_id, number)[:6]}.png"
                    image_dir = str(int(_digest(seed, "padchest", image_id)[:8], 16) % image_dirs)
                    relative = f"{image_dir}/{image_id}"
                    stored = film.image.astype(np.uint16) * STORED_SCALE
                    _write_file(draft / relative, _encode(".png", stored))
                    values = {
                        **PADCHEST_COLUMNS,
                        "ImageID": image_id,
                        "ImageDir": image_dir,
                        "StudyDate_DICOM": f"{FIRST_STUDY_YEAR + study}0915",
                        "StudyID": study_id,
                        "PatientID": patient_id,
                        "PatientBirth": f"{birth}.0",
                        "PatientSex_DICOM": patient.anatomy.sex,
                        "ViewPosition_DICOM": {"PA": "POSTEROANTERIOR", "AP": "ANTEROPOSTERIOR"}.get(
                            film.view, "LATERAL"
                        ),
                        "Projection": {"PA": "PA", "AP": "AP_horizontal" if number % 2 else "AP"}.get(film.view, "L"),
                        "Manufacturer_DICOM": manufacturer,
                        "Rows_DICOM": str(image_size),
                        "Columns_DICOM": str(image_size),
                        "ReportID": str(4_000_000 + len(rows)),
                        "Report": " " + " ".join(s.strip() for s in strings) + " .",
                        "MethodLabel": method,
                        "Labels": repr(strings),
                        "LabelsLocalizationsBySentence": repr([[s.strip() for s in strings]]),
                    }
                    rows.append([str(len(rows)), *values.values()])
                    row = _film_row(relative, patient_id, study_id, film, contract.NO_SPLIT, patient)
                    films.append({**row, "age": FIRST_STUDY_YEAR + study - birth})
        _write_csv(draft / padchest.CSV, ["", *PADCHEST_COLUMNS], rows)  # the release's unnamed index first
        return films

    return _write_tree("padchest", root, "", write)


VINDR_READERS = tuple(f"R{k}" for k in range(1, 18))  # the PhysioNet release's radiologists
VINDR_NO_FINDING = "No finding"


def write_vindr_tree(
    root: str | os.PathLike,
    num_images: int,
    *,
    seed: int = 0,
    image_size: int = 64,
    site: str | sites.Site | None = None,
    test_share: float = 0.2,
    reader_disagreement: float = 0.05,
    monochrome1_rate: float = 0.5,
    num_workers: int = 1,
    progress: bool = False,
) -> SourceTree:
    """``root/`` as PhysioNet's VinDr-CXR 1.0.0: ``annotations/image_labels_train.csv`` (three readers
    per image, ``rad_ID`` column), ``annotations/image_labels_test.csv`` (one consensus row per image,
    the last ``test_share`` of the images) and ``train|test/<image_id>.dicom`` (12-bit, windowed,
    MONOCHROME1 at ``monochrome1_rate``). On each label but No finding, one of an image's three readers
    dissents from the film's truth at ``reader_disagreement``; a reader's No finding is 1 when the
    reader marks nothing else. The majority is then the truth on every label but No finding."""
    site = _check_tree(num_images, image_size, site)
    _check_rates(test_share=test_share, reader_disagreement=reader_disagreement, monochrome1_rate=monochrome1_rate)
    split_of = _splits(num_images, (("train", 1.0 - test_share), ("test", test_share)))
    columns = tuple(labelspace.mapping("vindr"))

    def write(draft: Path) -> list[dict]:
        rows = {"train": [], "test": []}
        films = []
        for patient, rng in _patients(
            num_images, seed, "vindr", image_size, site, 0.0, progress, num_workers, studies_=(1, 1)
        ):
            film = patient.films[0]
            split = split_of[patient.number]
            image_id = _digest(seed, "vindr", patient.number)[:32]
            positives = source_positives("vindr", harmonised_truth(film.labelled), rng)
            truth = np.array([column in positives for column in columns])
            finding_columns = [k for k, column in enumerate(columns) if column != VINDR_NO_FINDING]
            truth[columns.index(VINDR_NO_FINDING)] = not truth[finding_columns].any()
            if split == "test":
                rows["test"].append([image_id, *(str(int(v)) for v in truth)])
            else:
                readers = rng.choice(len(VINDR_READERS), size=3, replace=False)
                votes = np.repeat(truth[None], 3, axis=0)
                for k, column in enumerate(columns):
                    if column != VINDR_NO_FINDING and rng.random() < reader_disagreement:
                        dissenter = int(rng.integers(3))
                        votes[dissenter, k] = not votes[dissenter, k]
                votes[:, columns.index(VINDR_NO_FINDING)] = ~votes[:, finding_columns].any(axis=1)
                for reader, vote in zip(readers, votes, strict=True):
                    rows["train"].append([image_id, VINDR_READERS[reader], *(str(int(v)) for v in vote)])
            relative = f"{split}/{image_id}{vindr.DICOM_SUFFIX}"
            monochrome1 = rng.random() < monochrome1_rate
            _write_dicom(draft / relative, film.image, monochrome1, film.view, patient.anatomy, _digest(seed, relative))
            films.append(_film_row(relative, image_id, image_id, film, split, patient))
        _write_csv(draft / vindr.PHYSIONET_FILES["train"], ["image_id", "rad_ID", *columns], rows["train"])
        _write_csv(draft / vindr.PHYSIONET_FILES["test"], ["image_id", *columns], rows["test"])
        return films

    return _write_tree("vindr", root, "", write)


HOSPITAL_FORMATS = MappingProxyType({"png": ".png", "jpeg": ".jpg", "dicom": ".dcm"})
HOSPITAL_LABELS = (*labels.FINDINGS14, labels.NO_FINDING)


def write_hospital_tree(
    root: str | os.PathLike,
    num_patients: int,
    *,
    seed: int = 0,
    image_size: int = 64,
    site: str | sites.Site | None = None,
    formats: Sequence[str] = tuple(HOSPITAL_FORMATS),
    label_names: Sequence[str] = HOSPITAL_LABELS,
    split_shares: tuple[float, float, float] | None = (0.6, 0.2, 0.2),
    lateral_rate: float = 0.0,
    uncertain_rate: float = 0.1,
    not_stated_rate: float = 0.1,
    num_workers: int = 1,
    progress: bool = False,
) -> SourceTree:
    """``root/`` holding a hospital export as :mod:`lungjax.data.sources.hospital` documents it:
    ``labels.csv`` (path, patient_id, study_id, view, sex, age, split, one column per harmonised label of
    ``label_names``: 1 / 0 / -1 / blank) over ``films/<patient>/<study>_<n>.png|jpg|dcm``, each film's
    format drawn from ``formats``. The split is the hospital's own (train / validation / test by
    ``split_shares``, by patient) or blank on every row when ``split_shares`` is None."""
    site = _check_tree(num_patients, image_size, site)
    unknown = [f for f in formats if f not in HOSPITAL_FORMATS]
    if unknown or not formats:
        raise ValueError(f"formats must be some of {tuple(HOSPITAL_FORMATS)}, got {tuple(formats)!r}")
    vocabulary = labelspace.vocabulary()
    if not label_names or any(name not in vocabulary for name in label_names):
        raise ValueError(f"label_names must be harmonised names ({', '.join(vocabulary)}), got {tuple(label_names)!r}")
    _check_rates(lateral_rate=lateral_rate, uncertain_rate=uncertain_rate, not_stated_rate=not_stated_rate)
    if split_shares is None:
        split_of = dict.fromkeys(range(1, num_patients + 1), contract.NO_SPLIT)
    else:
        split_of = _splits(num_patients, tuple(zip(contract.SPLITS, split_shares, strict=True)))

    def write(draft: Path) -> list[dict]:
        rows, films = [], []
        for patient, rng in _patients(
            num_patients, seed, "hospital", image_size, site, lateral_rate, progress, num_workers
        ):
            patient_id = f"H{patient.number:06d}"
            for study, group in _by_study(patient.films):
                truth = harmonised_truth(group[0].labelled)
                states = _report_states(
                    tuple(n for n in label_names if n in truth),
                    tuple(label_names),
                    rng,
                    uncertain_rate=uncertain_rate,
                    not_stated_rate=not_stated_rate,
                )
                study_id = f"{patient_id}-S{study + 1}"
                for number, film in enumerate(group):
                    kind = formats[int(rng.integers(len(formats)))]
                    relative = f"films/{patient_id}/{study + 1}_{number + 1}{HOSPITAL_FORMATS[kind]}"
                    if kind == "dicom":
                        _write_dicom(
                            draft / relative, film.image, False, film.view, patient.anatomy, _digest(seed, relative)
                        )
                    elif kind == "jpeg":
                        _write_jpeg(draft / relative, film.image)
                    else:
                        _write_file(draft / relative, _encode(".png", film.image))
                    rows.append(
                        [
                            relative,
                            patient_id,
                            study_id,
                            film.view,
                            patient.anatomy.sex,
                            str(patient.anatomy.age),
                            split_of[patient.number],
                            *("" if s == contract.NOT_STATED else str(s) for s in states),
                        ]
                    )
                    films.append(_film_row(relative, patient_id, study_id, film, split_of[patient.number], patient))
        _write_csv(
            draft / hospital.CSV, [*hospital.REQUIRED[:2], "study_id", *hospital.REQUIRED[2:], *label_names], rows
        )
        return films

    return _write_tree("hospital", root, "", write)


WRITERS: Mapping[str, Callable[..., SourceTree]] = MappingProxyType(
    {
        "chexpert": write_chexpert_tree,
        "mimic": write_mimic_tree,
        "padchest": write_padchest_tree,
        "vindr": write_vindr_tree,
        "hospital": write_hospital_tree,
    }
)


def read_folder(source: str, root: str | os.PathLike) -> Path:
    """The folder an adapter reads in a tree that ``WRITERS[source]`` wrote at ``root`` with its default
    folder: ``SourceTree.manual_dir``, known before (or without) writing the tree."""
    return Path(root) / CHEXPERT_FOLDER if source == "chexpert" else Path(root)


# --- shared machinery ------------------------------------------------------------------------------


def _patients(
    num_patients: int,
    seed: int,
    source: str,
    image_size: int,
    site: sites.Site | None,
    lateral_rate: float,
    progress: bool,
    num_workers: int,
    studies_: tuple[int, int] = (1, 3),
) -> Iterator[tuple[studies.Patient, np.random.Generator]]:
    """Each patient's films (rendered by ``num_workers`` spawned processes when more than one; the same
    films either way), and a generator of the patient's own for what the tree draws about them."""
    if not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers must be an integer >= 1, got {num_workers!r}")
    stream = source if site is None else f"{source}/site {site.name}"
    draw = functools.partial(
        studies.draw_patient,
        seed=seed,
        stream=stream,
        image_size=image_size,
        studies=studies_,
        lateral_rate=lateral_rate,
        site=site,
    )
    numbers = range(1, num_patients + 1)
    with workers.process_pool(num_workers) as executor:
        if executor is None:
            patients = map(draw, numbers)
        else:
            size = max(1, min(num_patients // (8 * num_workers), PATIENTS_PER_TASK))
            patients = _drawn_in_order(executor, draw, numbers, size, TASKS_PER_WORKER * num_workers)
        if progress:
            from tqdm.auto import tqdm

            patients = tqdm(patients, total=num_patients, desc=f"phantom {source} patients", unit="patient")
        for patient in patients:
            entropy = [seed, zlib.crc32(stream.encode("utf-8")), patient.number, 1]
            yield patient, np.random.default_rng(np.random.SeedSequence(entropy))


def _drawn_in_order(
    executor, draw: Callable[[int], studies.Patient], numbers: range, size: int, in_flight: int
) -> Iterator[studies.Patient]:
    """``draw`` of each number, in order, drawn by ``executor`` in tasks of ``size`` numbers with at most
    ``in_flight`` tasks handed out at a time (``executor.map`` would hand out every number at once, and
    hold every film drawn ahead of the writer)."""
    tasks = (numbers[start : start + size] for start in range(0, len(numbers), size))
    pending = collections.deque(executor.submit(_draw_each, draw, task) for task in itertools.islice(tasks, in_flight))
    while pending:
        drawn = pending.popleft().result()
        task = next(tasks, None)
        if task is not None:
            pending.append(executor.submit(_draw_each, draw, task))
        yield from drawn


def _draw_each(draw: Callable[[int], studies.Patient], numbers: range) -> list[studies.Patient]:
    """A worker's task: the patients of ``numbers``."""
    return [draw(number) for number in numbers]


def _write_tree(source: str, root: str | os.PathLike, folder: str, write: Callable[[Path], list[dict]]) -> SourceTree:
    """Runs ``write`` into a draft beside ``root`` and renames it to ``root``: whole or absent."""
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"{root} exists; a phantom {source} tree is written into a new folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    draft = root.with_name(f".{root.name}.{socket.gethostname()}-{os.getpid()}")
    try:
        draft.mkdir()
        films = write(draft)
        os.rename(draft, root)
    finally:
        shutil.rmtree(draft, ignore_errors=True)
    return SourceTree(source, root / folder if folder else root, pd.DataFrame(films, columns=list(_FILM_COLUMNS)))


_FILM_COLUMNS = ("path", "patient_id", "study_id", "view", "split", "sex", "age", "findings", "labelled")


def _film_row(path, patient_id, study_id, film, split, patient) -> dict:
    values = (
        path,
        str(patient_id),
        str(study_id),
        film.view,
        split,
        patient.anatomy.sex,
        patient.anatomy.age,
        "|".join(film.findings),
        "|".join(film.labelled),
    )
    return dict(zip(_FILM_COLUMNS, values, strict=True))


def _by_study(films: Sequence[studies.Film]) -> Iterator[tuple[int, list[studies.Film]]]:
    groups: dict[int, list[studies.Film]] = {}
    for film in films:
        groups.setdefault(film.study, []).append(film)
    yield from groups.items()


def _splits(num_patients: int, shares: Sequence[tuple[str, float]]) -> dict[int, str]:
    """Patient number -> split: consecutive patients, each split's share rounded, the rest to the first."""
    if any(share < 0 for _, share in shares) or not np.isclose(sum(share for _, share in shares), 1.0):
        raise ValueError(f"split shares must be >= 0 and sum to 1, got {[share for _, share in shares]}")
    counts = [int(round(share * num_patients)) for _, share in shares[1:]]
    counts.insert(0, num_patients - sum(counts))
    if counts[0] < 0:
        raise ValueError(f"split shares {[share for _, share in shares]} leave no patient for {shares[0][0]}")
    names = [name for (name, _), count in zip(shares, counts, strict=True) for _ in range(count)]
    return dict(zip(range(1, num_patients + 1), names, strict=True))


def _check_tree(count: int, image_size: int, site: str | sites.Site | None) -> sites.Site | None:
    """Checks what every writer takes; returns the site (a preset's name resolved)."""
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"the number of patients must be an integer >= 1, got {count!r}")
    if not isinstance(image_size, int) or not images.MIN_SIZE <= image_size <= images.MAX_SIZE:
        raise ValueError(f"image_size must be an integer in [{images.MIN_SIZE}, {images.MAX_SIZE}], got {image_size!r}")
    return sites.site(site)


def _check_rates(**rates: float) -> None:
    for name, rate in rates.items():
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {rate!r}")


def _report_states(
    positives: Sequence[str],
    columns: Sequence[str],
    rng: np.random.Generator,
    *,
    uncertain_rate: float,
    not_stated_rate: float,
    positive_or_blank: Sequence[str] = (),
) -> list[int]:
    """A report's state per column: a positive uncertain at ``uncertain_rate``, a negative not stated at
    ``not_stated_rate``; the ``positive_or_blank`` columns are positive or not stated, never otherwise."""
    states = []
    for column in columns:
        if column in positive_or_blank:
            states.append(contract.POSITIVE if column in positives else contract.NOT_STATED)
        elif column in positives:
            states.append(contract.UNCERTAIN if rng.random() < uncertain_rate else contract.POSITIVE)
        else:
            states.append(contract.NOT_STATED if rng.random() < not_stated_rate else contract.NEGATIVE)
    return states


def _chexpert_text(state: int) -> str:
    """CheXpert's and MIMIC's coding: 1.0 / 0.0 / -1.0 / blank."""
    return NOT_STATED_TEXT if state == contract.NOT_STATED else f"{float(state):.1f}"


def _digest(*parts) -> str:
    """40 hex digits that depend on ``parts`` only: identifiers that are the same for a seed."""
    return hashlib.sha1("/".join(map(str, parts)).encode("utf-8")).hexdigest()


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    data = text.getvalue().encode("utf-8")
    _write_file(path, gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _encode(suffix: str, image: np.ndarray, options: Sequence[int] = ()) -> bytes:
    ok, encoded = cv2.imencode(suffix, image, list(options))
    if not ok:
        raise images.ImageError(f"OpenCV could not encode a {image.dtype} film as {suffix}")
    return encoded.tobytes()


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    _write_file(path, _encode(".jpg", image, (cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY)))


def _write_dicom(path: Path, image: np.ndarray, monochrome1: bool, view: str, anatomy, uid_seed: str) -> None:
    """A 12-bit DX film whose window displays it as ``image`` exactly (MONOCHROME1: stored inverted)."""
    try:
        import pydicom
    except ImportError as err:
        raise ImportError("writing phantom DICOM films needs pydicom: pip install 'lungjax[dicom]'") from err
    stored = ((255 - image) if monochrome1 else image).astype(np.uint16) * STORED_SCALE
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray, for presentation
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[uid_seed])
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    dataset = pydicom.dataset.FileDataset(str(path), {}, file_meta=meta, preamble=b"\x00" * 128)
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.Modality, dataset.BodyPartExamined = "DX", "CHEST"
    dataset.ViewPosition = "LL" if view == studies.LATERAL else view
    dataset.PatientSex, dataset.PatientAge = anatomy.sex, f"{anatomy.age:03d}Y"
    dataset.Rows, dataset.Columns = image.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
    dataset.WindowCenter, dataset.WindowWidth = DICOM_WINDOW
    dataset.PixelData = stored.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
