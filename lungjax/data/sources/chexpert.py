"""CheXpert (Irvin et al. 2019): ``train.csv`` and ``valid.csv`` with the JPEG tree beside them.

manual_dir is the folder the archive unpacks to (``CheXpert-v1.0`` or ``CheXpert-v1.0-small``), holding
both CSVs and ``train/``, ``valid/``. Each CSV's ``Path`` starts with that folder's name, which is
dropped: paths are relative to manual_dir. Patient and study come from the path
(``train/patient00001/study1/view1_frontal.jpg``: patient ``patient00001``, study
``patient00001/study1``), never from a neighbouring row. The 14 label columns hold 1 / 0 / -1 / blank:
blank is not stated (the report does not mention it), not negative; uncertainty policies are applied
where labels are asked for (:func:`.labelspace.label_matrix`, e.g. ``uncertainty="irvin2019"``).

Official split: ``train.csv`` is train; the 200 studies of ``valid.csv``, labelled by three
radiologists, are the test set (validation is then drawn from the training patients, :mod:`.splits`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from lungjax.data.sources import contract, labelspace

SOURCE = "chexpert"
TRAIN_CSV, VALID_CSV = "train.csv", "valid.csv"
FOLDERS = ("CheXpert-v1.0", "CheXpert-v1.0-small")
METADATA_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
LABEL_COLUMNS = tuple(labelspace.mapping(SOURCE))
# A Path of train.csv (PART train) or valid.csv (PART valid); the folder, patient and study are its parts.
PATH_PATTERN = r"CheXpert-v1\.0(?:-small)?/PART/patient\d+/study\d+/view\d+_(?:frontal|lateral)\.jpg"
SEXES = {"Female": "F", "Male": "M", "Unknown": "unknown"}
# "No Finding" = 1 is reported only when no pathology is positive or uncertain; support devices are not
# a pathology, so the rule leaves them as they are.
NOT_NEGATED_BY_NO_FINDING = ("No Finding", "Support Devices")


def read_csv(source: str | os.PathLike, file_name: str) -> pd.DataFrame:
    """One CheXpert CSV, its columns checked."""
    frame = contract.read_csv(source, file_name, dtype={"Path": str, "Sex": str, "Frontal/Lateral": str, "AP/PA": str})
    contract.require_columns(frame, (*METADATA_COLUMNS, *LABEL_COLUMNS), file_name)
    return frame


def read(manual_dir: str | os.PathLike, *, no_finding_negates: bool = False) -> contract.SourceTable:
    root = Path(manual_dir)
    return table(
        read_csv(root / TRAIN_CSV, str(root / TRAIN_CSV)),
        read_csv(root / VALID_CSV, str(root / VALID_CSV)),
        no_finding_negates=no_finding_negates,
        file_names=(str(root / TRAIN_CSV), str(root / VALID_CSV)),
    )


def table(
    train: pd.DataFrame,
    valid: pd.DataFrame | None,
    *,
    no_finding_negates: bool = False,
    file_names: tuple[str, str] = (TRAIN_CSV, VALID_CSV),
) -> contract.SourceTable:
    """The contract table of ``train.csv`` (split train) and ``valid.csv`` (split test).

    ``no_finding_negates``: where No Finding is 1, every other label not stated (support devices
    aside) becomes negative, the reading of the CheXpert labeller's rule; off by default, and the
    count of entries it changed is recorded in the options.
    """
    parts = [_part(train, file_names[0], "train", "train")]
    if valid is not None:
        parts.append(_part(valid, file_names[1], "valid", "test"))
    frame = pd.concat(parts, ignore_index=True)
    frame, negated = negate_by_no_finding(frame) if no_finding_negates else (frame, 0)
    options = {"no_finding_negates": no_finding_negates, "entries_negated_by_no_finding": negated}
    return contract.validate(contract.SourceTable(SOURCE, frame, labelspace.source_labels(SOURCE), options))


def negate_by_no_finding(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Where No Finding is positive, every other label not stated (support devices aside) becomes
    negative; returns the frame and how many entries changed."""
    no_finding = frame["No Finding"].to_numpy() == contract.POSITIVE
    kept = {name for label in NOT_NEGATED_BY_NO_FINDING for name in labelspace.mapping(SOURCE)[label]}
    frame, negated = frame.copy(), 0
    for name in (n for n in labelspace.source_labels(SOURCE) if n not in kept):
        change = no_finding & (frame[name].to_numpy() == contract.NOT_STATED)
        frame.loc[change, name] = np.int8(contract.NEGATIVE)
        negated += int(change.sum())
    return frame, negated


def _part(csv: pd.DataFrame, file_name: str, part: str, split: str) -> pd.DataFrame:
    paths = csv["Path"]
    bad = ~paths.str.fullmatch(PATH_PATTERN.replace("PART", part)).fillna(False).astype(bool)
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        raise contract.SourceError(
            f"{file_name} line {first + 2}: Path {csv['Path'].iloc[first]!r} is not "
            f"{' or '.join(FOLDERS)}/{part}/patientN/studyN/viewN_frontal|lateral.jpg"
        )
    sex = csv["Sex"].map(SEXES)
    if sex.isna().any():
        first = int(np.flatnonzero(sex.isna().to_numpy())[0])
        raise contract.SourceError(f"{file_name} line {first + 2}: Sex {csv['Sex'].iloc[first]!r} is not {list(SEXES)}")
    frontal = csv["Frontal/Lateral"] == "Frontal"
    view = np.where(
        csv["Frontal/Lateral"] == "Lateral",
        "lateral",
        np.where(frontal & csv["AP/PA"].isin(contract.FRONTAL), csv["AP/PA"], "unknown"),
    )
    states = labelspace.harmonise(SOURCE, contract.parse_states(csv, LABEL_COLUMNS, file_name))
    metadata = pd.DataFrame(
        {
            "path": paths.str.replace(r"^[^/]+/", "", regex=True),
            "patient_id": paths.str.replace(r"^[^/]+/[^/]+/([^/]+)/.*$", r"\1", regex=True),
            "study_id": paths.str.replace(r"^[^/]+/[^/]+/([^/]+/[^/]+)/.*$", r"\1", regex=True),
            "view": view,
            "sex": sex,
            "age": pd.to_numeric(csv["Age"], errors="coerce").astype(np.float64),
            "split": split,
        }
    )
    return pd.concat([metadata, contract.labels_frame(states, csv.index)], axis=1)
