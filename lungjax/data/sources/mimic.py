"""MIMIC-CXR-JPG 2.0.0 (Johnson et al. 2019): ``mimic-cxr-2.0.0-metadata.csv`` (one row per image),
``mimic-cxr-2.0.0-chexpert.csv`` or ``-negbio.csv`` (one row per study: the CheXpert or NegBio
labeller's 14 labels, 1 / 0 / -1 / blank, the same names and meaning as CheXpert's), and
``mimic-cxr-2.0.0-split.csv`` (the official train / validate / test split, by patient). Each may be
gzipped as PhysioNet ships it (``.csv.gz``). Images are ``files/pNN/pSUBJECT/sSTUDY/DICOM_ID.jpg``,
NN the first two digits of the subject id.

Labels join per study (``subject_id``, ``study_id``): every image of a study carries its report's
labels; a study without a labelled report states nothing. Sex and age are not in MIMIC-CXR-JPG (they
are in MIMIC-IV): unknown.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from lungjax.data.sources import chexpert, contract, labelspace

SOURCE = "mimic"  # its labels are CheXpert's (same labellers, same names): CheXpert's mapping applies
PREFIX = "mimic-cxr-2.0.0-"
LABELLERS = ("chexpert", "negbio")
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition")  # what the adapter reads
# The metadata file's whole header as the release has it (what rows in its exact format carry).
RELEASE_METADATA_HEADER = (
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
STUDY_KEY = ["subject_id", "study_id"]
SPLITS = {"train": "train", "validate": "validation", "test": "test"}
VIEWS = {"PA": "PA", "AP": "AP", "LATERAL": "lateral", "LL": "lateral"}  # others (LAO, AP AXIAL, blank): unknown


def file_path(manual_dir: Path, name: str) -> Path:
    """``mimic-cxr-2.0.0-NAME.csv``, or its ``.csv.gz`` as PhysioNet ships it."""
    plain = manual_dir / f"{PREFIX}{name}.csv"
    zipped = plain.with_name(plain.name + ".gz")
    return zipped if zipped.is_file() and not plain.is_file() else plain


def read(manual_dir: str | os.PathLike, *, labeller: str = "chexpert", no_finding_negates: bool = False):
    if labeller not in LABELLERS:
        raise contract.SourceError(f"unknown MIMIC-CXR labeller {labeller!r}; expected one of {LABELLERS}")
    root = Path(manual_dir)
    paths = {name: file_path(root, name) for name in ("metadata", labeller, "split")}
    frames = {name: contract.read_csv(path, str(path), dtype=str) for name, path in paths.items()}
    return table(
        frames["metadata"],
        frames[labeller],
        frames["split"],
        no_finding_negates=no_finding_negates,
        file_names=(str(paths["metadata"]), str(paths[labeller]), str(paths["split"])),
    )


def table(
    metadata: pd.DataFrame,
    labels: pd.DataFrame,
    split: pd.DataFrame,
    *,
    no_finding_negates: bool = False,
    file_names: tuple[str, str, str] = (f"{PREFIX}metadata.csv", f"{PREFIX}chexpert.csv", f"{PREFIX}split.csv"),
) -> contract.SourceTable:
    """The contract table from the three files' frames (read as strings)."""
    metadata_file, labels_file, split_file = file_names
    contract.require_columns(metadata, METADATA_COLUMNS, metadata_file)
    contract.require_columns(labels, (*STUDY_KEY, *chexpert.LABEL_COLUMNS), labels_file)
    contract.require_columns(split, SPLIT_COLUMNS, split_file)
    keys = (
        (metadata, ["dicom_id"], metadata_file),
        (labels, STUDY_KEY, labels_file),
        (split, ["dicom_id"], split_file),
    )
    for frame, key, file_name in keys:
        repeated = frame.duplicated(key)
        if repeated.any():
            row = int(np.flatnonzero(repeated.to_numpy())[0])
            raise contract.SourceError(f"{file_name} line {row + 2}: {key} {list(frame[key].iloc[row])} listed twice")
    official = split.rename(columns={"study_id": "study_id_split", "subject_id": "subject_id_split"})
    joined = metadata[["dicom_id", *STUDY_KEY]].merge(official, on="dicom_id", how="left", validate="one_to_one")
    missing = joined["split"].isna()
    if missing.any():
        row = int(np.flatnonzero(missing.to_numpy())[0])
        raise contract.SourceError(
            f"{metadata_file} line {row + 2}: image {metadata['dicom_id'].iloc[row]} is not in {split_file}"
        )
    moved = (joined["study_id"] != joined["study_id_split"]) | (joined["subject_id"] != joined["subject_id_split"])
    unknown_split = ~joined["split"].isin(list(SPLITS))
    for bad, why in ((moved, f"has another study or subject in {split_file}"), (unknown_split, "has an unknown split")):
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise contract.SourceError(
                f"{metadata_file} line {row + 2}: image {metadata['dicom_id'].iloc[row]} {why} "
                f"({joined['split'].iloc[row]!r}; splits are {list(SPLITS)})"
            )
    states = labelspace.harmonise(chexpert.SOURCE, contract.parse_states(labels, chexpert.LABEL_COLUMNS, labels_file))
    per_study = pd.concat([labels[STUDY_KEY], contract.labels_frame(states, labels.index)], axis=1)
    with_labels = metadata[STUDY_KEY].merge(per_study, on=STUDY_KEY, how="left", validate="many_to_one")
    names = tuple(states)
    subject = metadata["subject_id"]
    study_folder = "files/p" + subject.str[:2] + "/p" + subject + "/s" + metadata["study_id"]
    frame = pd.DataFrame(
        {
            "path": study_folder + "/" + metadata["dicom_id"] + ".jpg",
            "patient_id": subject,
            "study_id": metadata["study_id"],
            "view": metadata["ViewPosition"].map(VIEWS).fillna("unknown"),
            "sex": "unknown",
            "age": np.nan,
            "split": joined["split"].map(SPLITS),
        }
    )
    for name in names:
        frame[name] = with_labels[name].fillna(contract.NOT_STATED).to_numpy(dtype=np.int8)
    frame, negated = chexpert.negate_by_no_finding(frame) if no_finding_negates else (frame, 0)
    options = {
        "labeller": Path(labels_file).name,
        "no_finding_negates": no_finding_negates,
        "entries_negated_by_no_finding": negated,
        "images_of_unlabelled_studies": int(with_labels[names[0]].isna().sum()),
    }
    return contract.validate(contract.SourceTable(SOURCE, frame, names, options))
