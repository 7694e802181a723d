"""PadChest (Bustos et al. 2020): ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` beside the
numbered image folders (``0/`` ... ``54/``, 16-bit PNGs): an image's path is ``ImageDir/ImageID``.

``Labels`` is a Python literal list of strings, read with :func:`ast.literal_eval` (a literal parser:
nothing is executed). Each string, stripped, is looked up whole in the mapping (``label_map.csv``):
mapped to harmonised labels, or listed as not used; a string in neither is refused, naming the row.
PadChest's reports were labelled exhaustively, so a harmonised label PadChest maps to is positive when
one of its strings is present and negative otherwise; a row without a label list (``nan`` in 103 rows
of the release) states nothing. Errors name the data row (1 = the first after the header; report
texts may span lines, so file lines would not match) and its ImageID.

``MethodLabel`` says who labelled the report: ``Physician`` (39,053 images) or ``RNN_model``;
``physician_test=True`` makes the physician-labelled images the test set and drops the model-labelled
images of their patients (the count is recorded). Otherwise there is no official split: :mod:`.splits`
splits by ``PatientID``.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np
import pandas as pd

from lungjax.data.sources import contract, labelspace

SOURCE = "padchest"
CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
COLUMNS = (
    "ImageID",
    "ImageDir",
    "StudyID",
    "PatientID",
    "PatientBirth",
    "PatientSex_DICOM",
    "StudyDate_DICOM",
    "Projection",
    "MethodLabel",
    "Labels",
)
PHYSICIAN = "Physician"
METHODS = (PHYSICIAN, "RNN_model")
VIEWS = {"PA": "PA", "AP": "AP", "AP_horizontal": "AP", "L": "lateral"}  # COSTAL, EXCLUDE, UNK: unknown
SEXES = {"F": "F", "M": "M"}  # O and blank: unknown
NO_LABEL_LIST = ("", "nan")


def read_csv(source: str | os.PathLike, file_name: str = CSV) -> pd.DataFrame:
    frame = contract.read_csv(source, file_name, usecols=lambda c: c in COLUMNS, dtype=str, keep_default_na=False)
    contract.require_columns(frame, COLUMNS, file_name)
    return frame[list(COLUMNS)]


def read(manual_dir: str | os.PathLike, *, physician_test: bool = False) -> contract.SourceTable:
    path = Path(manual_dir) / CSV
    return table(read_csv(path, str(path)), physician_test=physician_test, file_name=str(path))


def parse_labels(value: str) -> list[str]:
    """One ``Labels`` cell -> its stripped strings; anything but a literal list of strings is refused."""
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:  # literal_eval's refusals
        raise contract.SourceError(f"Labels {value!r} is not a list literal") from err
    if not isinstance(parsed, list) or not all(isinstance(s, str) for s in parsed):
        raise contract.SourceError(f"Labels {value!r} is not a list of strings")
    return [s.strip() for s in parsed]


def _row(frame: pd.DataFrame, row: int, file_name: str) -> str:
    return f"{file_name} row {row + 1} (ImageID {frame['ImageID'].iloc[row]})"


def table(frame: pd.DataFrame, *, physician_test: bool = False, file_name: str = CSV) -> contract.SourceTable:
    """The contract table of the 160K CSV (read with :func:`read_csv`)."""
    mapping = labelspace.mapping(SOURCE)
    names = labelspace.source_labels(SOURCE)
    column_of = {name: k for k, name in enumerate(names)}
    unlabelled = frame["Labels"].str.strip().isin(NO_LABEL_LIST)
    # Parse each distinct list once: the 160,861 rows hold 28,808 different lists.
    codes, distinct = pd.factorize(frame["Labels"])
    first_row = pd.Series(np.arange(len(frame))).groupby(codes).first()
    positives_of_list = np.zeros((len(distinct), len(names)), bool)
    for code, value in enumerate(distinct):
        if value.strip() in NO_LABEL_LIST:
            continue
        try:
            strings = parse_labels(value)
        except contract.SourceError as err:
            raise contract.SourceError(f"{_row(frame, int(first_row[code]), file_name)}: {err}") from None
        unknown = [string for string in strings if string not in mapping]
        if unknown:
            raise contract.SourceError(
                f"{_row(frame, int(first_row[code]), file_name)}: label {unknown[0]!r} is neither mapped nor listed "
                "as not used in lungjax/data/sources/label_map.csv"
            )
        targets = {name for string in strings for name in mapping[string]}
        positives_of_list[code, [column_of[t] for t in targets]] = True
    states = np.where(positives_of_list[codes], contract.POSITIVE, contract.NEGATIVE).astype(np.int8)
    states[unlabelled.to_numpy()] = contract.NOT_STATED
    method = frame["MethodLabel"]
    if not method.isin(METHODS).all():
        row = int(np.flatnonzero(~method.isin(METHODS).to_numpy())[0])
        raise contract.SourceError(f"{_row(frame, row, file_name)}: MethodLabel {method.iloc[row]!r} is not {METHODS}")
    birth = pd.to_numeric(frame["PatientBirth"], errors="coerce")
    study_year = pd.to_numeric(frame["StudyDate_DICOM"].str[:4], errors="coerce")
    metadata = pd.DataFrame(
        {
            "path": frame["ImageDir"].str.strip() + "/" + frame["ImageID"],
            "patient_id": frame["PatientID"],
            "study_id": frame["StudyID"],
            "view": frame["Projection"].map(VIEWS).fillna("unknown"),
            "sex": frame["PatientSex_DICOM"].map(SEXES).fillna("unknown"),
            "age": (study_year - birth).astype(np.float64),
            "split": contract.NO_SPLIT,
            "labelled_by": method,
        }
    )
    result = pd.concat([metadata, pd.DataFrame(states, columns=list(names), index=frame.index)], axis=1)
    options = {"physician_test": physician_test, "rows_without_labels": int(unlabelled.sum())}
    if physician_test:
        by_physician = method == PHYSICIAN
        physician_patients = set(frame.loc[by_physician, "PatientID"])
        dropped = ~by_physician & frame["PatientID"].isin(physician_patients)
        result["split"] = np.where(by_physician, "test", "train")
        result = result[~dropped.to_numpy()]
        options["model_labelled_rows_dropped_beside_physician_rows"] = int(dropped.sum())
    return contract.validate(contract.SourceTable(SOURCE, result.reset_index(drop=True), names, options))
