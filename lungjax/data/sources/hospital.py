"""A hospital's own films, described by one CSV, so a group trains on them without writing an adapter.

``labels.csv`` in manual_dir, one row per image::

    path,patient_id,study_id,view,sex,age,split,Atelectasis,Cardiomegaly,Effusion
    films/0001.png,P001,S01,PA,F,64,train,1,0,
    films/0002.dcm,P002,,AP,M,,test,0,-1,1

* ``path``: the image under manual_dir (PNG, JPEG or DICOM); it must exist;
* ``patient_id`` (required), ``study_id`` (optional column; blank: the image is its own study);
* ``view``: PA, AP, lateral or unknown (blank: unknown); ``sex``: F, M or unknown (blank: unknown);
  ``age``: years or blank;
* ``split``: train, validation or test on every row (the hospital's own split, patients never on two
  sides), or blank on every row (then :mod:`.splits` splits by patient);
* every other column is a label named exactly as in the harmonised vocabulary
  (:func:`.labelspace.vocabulary`), holding 1 (positive), 0 (negative), -1 (uncertain) or blank (not stated).

A missing column, an unknown label column or a value outside these is refused in one line naming the
file and its line; the build (:mod:`lungjax.data.source_builder`) checks that each film exists, and
names or, when asked, skips those that do not.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from lungjax.data.sources import contract, labelspace

SOURCE = "hospital"
CSV = "labels.csv"
REQUIRED = ("path", "patient_id", "view", "sex", "age", "split")
OPTIONAL = ("study_id",)


def read(manual_dir: str | os.PathLike, *, file_name: str = CSV) -> contract.SourceTable:
    root = Path(manual_dir)
    path = root / file_name
    csv = contract.read_csv(path, str(path), dtype=str, keep_default_na=False)
    return table(csv, str(path))


def table(csv: pd.DataFrame, file_name: str = CSV) -> contract.SourceTable:
    """The contract table of the CSV (read as strings, blanks kept as ''); files are not checked here."""
    contract.require_columns(csv, REQUIRED, file_name)
    csv = csv.apply(lambda column: column.str.strip())
    vocabulary = labelspace.vocabulary()
    label_columns = [c for c in csv.columns if c not in (*REQUIRED, *OPTIONAL)]
    unknown = [c for c in label_columns if c not in vocabulary]
    if unknown:
        raise contract.SourceError(
            f"{file_name} line 1: label columns {unknown} are not in the harmonised vocabulary "
            f"({', '.join(vocabulary)})"
        )
    if not label_columns:
        raise contract.SourceError(f"{file_name} line 1: no label column; name each after the harmonised vocabulary")
    _refuse_blank(csv, ("path", "patient_id"), file_name)
    view = _choice(csv, "view", contract.VIEWS, file_name)
    sex = _choice(csv, "sex", contract.SEXES, file_name)
    split = _choice(csv, "split", (*contract.SPLITS, contract.NO_SPLIT), file_name, blank=contract.NO_SPLIT)
    age = pd.to_numeric(csv["age"].replace("", np.nan), errors="coerce")
    bad_age = (age.isna() & (csv["age"] != "")) | (age < 0)
    _refuse(bad_age, csv["age"], "age", "a number of years or blank", file_name)
    study = csv["study_id"] if "study_id" in csv else pd.Series("", index=csv.index)
    states = contract.parse_states(csv.replace("", np.nan), label_columns, file_name)
    names = tuple(name for name in vocabulary if name in label_columns)
    frame = pd.DataFrame(
        {
            "path": csv["path"],
            "patient_id": csv["patient_id"],
            "study_id": study.where(study != "", csv["path"]),
            "view": view,
            "sex": sex,
            "age": age.astype(np.float64),
            "split": split,
        }
    )
    frame = pd.concat([frame, contract.labels_frame({n: states[n] for n in names}, csv.index)], axis=1)
    repeated = frame["path"].duplicated()
    _refuse(repeated, frame["path"], "path", "listed once", file_name)
    return contract.validate(contract.SourceTable(SOURCE, frame, names, {"file": Path(file_name).name}))


def _choice(csv: pd.DataFrame, column: str, allowed, file_name: str, blank: str = "unknown") -> pd.Series:
    values = csv[column].replace("", blank)
    _refuse(~values.isin(allowed), csv[column], column, f"one of {[a for a in allowed if a]} or blank", file_name)
    return values


def _refuse_blank(csv: pd.DataFrame, columns, file_name: str) -> None:
    for column in columns:
        _refuse(csv[column] == "", csv[column], column, "not blank", file_name)


def _refuse(bad: pd.Series, values: pd.Series, column: str, rule: str, file_name: str) -> None:
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise contract.SourceError(f"{file_name} line {row + 2}: {column} {values.iloc[row]!r} must be {rule}")
