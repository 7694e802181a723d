"""VinDr-CXR (Nguyen et al. 2022), in either of its two releases:

* PhysioNet (``vindr-cxr/1.0.0``): ``annotations/image_labels_train.csv`` and
  ``annotations/image_labels_test.csv`` (``image_id``, the reader, then one 0/1 column per each of its
  28 labels), DICOMs in ``train/`` and ``test/``. Three radiologists read each training image, one row
  each; the test labels are the consensus of five, one row per image (a reader column there is
  allowed, and read like the training one). Official split: train / test.
* Kaggle's VinBigData competition (2021): ``train.csv``, one row per box (``image_id``,
  ``class_name``, ``class_id``, ``rad_id``, box corners) over its 14 findings and ``No finding``,
  DICOMs in ``train/``; its test labels were never released, so no official split.

Images are ``<part>/<image_id>.dicom``. Readers become one image-level state per label by the reader
policy: ``majority`` (more than half of the image's readers; the default), ``any`` or ``all``. A reader
who drew several boxes of one finding counts once. Every label is stated (positive or negative).
Neither release names patients, so each image is its own patient. The films are posteroanterior
(the dataset's paper: "postero-anterior (PA) view"); sex and age are in the DICOM headers only.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from lungjax.data.sources import contract, labelspace

SOURCE = "vindr"
PHYSIONET_FILES = {"train": "annotations/image_labels_train.csv", "test": "annotations/image_labels_test.csv"}
KAGGLE_FILE = "train.csv"
KAGGLE_COLUMNS = ("image_id", "class_name", "rad_id")
# The competition's classes (class_id 0-14): 14 of the 22 local findings, and No finding.
KAGGLE_CLASSES = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    "No finding",
)
READER_COLUMNS = ("rad_id", "rad_ID")  # the Kaggle and PhysioNet spellings
POLICIES = ("majority", "any", "all")
DICOM_SUFFIX = ".dicom"


def read(manual_dir: str | os.PathLike, *, readers: str = "majority") -> contract.SourceTable:
    """The PhysioNet release when ``annotations/`` holds its CSVs, else Kaggle's ``train.csv``."""
    root = Path(manual_dir)
    if (root / PHYSIONET_FILES["train"]).is_file():
        frames = {part: contract.read_csv(root / name, str(root / name)) for part, name in PHYSIONET_FILES.items()}
        return physionet_table(
            frames, readers=readers, file_names={p: str(root / n) for p, n in PHYSIONET_FILES.items()}
        )
    if (root / KAGGLE_FILE).is_file():
        frame = contract.read_csv(root / KAGGLE_FILE, str(root / KAGGLE_FILE), dtype=str)
        return kaggle_table(frame, readers=readers, file_name=str(root / KAGGLE_FILE))
    raise contract.SourceError(
        f"{root} holds neither VinDr-CXR's {PHYSIONET_FILES['train']} (PhysioNet) nor {KAGGLE_FILE} (Kaggle)"
    )


def physionet_table(
    frames: dict[str, pd.DataFrame], *, readers: str = "majority", file_names: dict[str, str] | None = None
) -> contract.SourceTable:
    """The contract table of ``image_labels_train.csv`` (and ``image_labels_test.csv`` when given)."""
    names = labelspace.mapping(SOURCE)
    parts = []
    for part, frame in frames.items():
        file_name = (file_names or PHYSIONET_FILES)[part]
        contract.require_columns(frame, ("image_id",), file_name)
        reader = next((c for c in READER_COLUMNS if c in frame.columns), None)
        label_columns = [c for c in frame.columns if c not in ("image_id", reader)]
        unknown = [c for c in label_columns if c not in names]
        if unknown:
            raise contract.SourceError(
                f"{file_name}: label columns {unknown} are neither mapped nor listed as not used in label_map.csv"
            )
        states = contract.parse_states(frame, label_columns, file_name)
        uncertain_or_blank = [c for c in label_columns if not np.isin(states[c], (0, 1)).all()]
        if uncertain_or_blank:
            column = uncertain_or_blank[0]
            row = int(np.flatnonzero(~np.isin(states[column], (0, 1)))[0])
            raise contract.SourceError(f"{file_name} line {row + 2}: column {column!r} must be 0 or 1")
        if reader is None:
            reader_ids = pd.Series(np.arange(len(frame)), index=frame.index).astype(str)
            if frame["image_id"].duplicated().any():
                raise contract.SourceError(f"{file_name}: images listed twice without a reader column {READER_COLUMNS}")
        else:
            reader_ids = frame[reader].astype(str)
        votes = pd.DataFrame({c: states[c] for c in label_columns}, index=frame.index)
        parts.append(_by_image(frame["image_id"], reader_ids, votes, readers, part, part, file_name))
    return _finish(pd.concat(parts, ignore_index=True), readers, official=True)


def kaggle_table(
    frame: pd.DataFrame, *, readers: str = "majority", file_name: str = KAGGLE_FILE
) -> contract.SourceTable:
    """The contract table of the competition's box-level ``train.csv``."""
    contract.require_columns(frame, KAGGLE_COLUMNS, file_name)
    unknown = ~frame["class_name"].isin(KAGGLE_CLASSES)
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise contract.SourceError(
            f"{file_name} line {row + 2}: class_name {frame['class_name'].iloc[row]!r} is not one of the "
            f"competition's classes {KAGGLE_CLASSES}"
        )
    votes = pd.crosstab([frame["image_id"], frame["rad_id"]], frame["class_name"]).clip(upper=1)
    votes = votes.reindex(columns=list(KAGGLE_CLASSES), fill_value=0).reset_index()
    image_ids, reader_ids = votes.pop("image_id"), votes.pop("rad_id")
    table = _by_image(image_ids, reader_ids, votes.astype(np.int8), readers, "train", contract.NO_SPLIT, file_name)
    return _finish(table, readers, official=False)


def _by_image(
    image_ids: pd.Series,
    reader_ids: pd.Series,
    votes: pd.DataFrame,
    readers: str,
    part: str,
    split: str,
    file_name: str,
) -> pd.DataFrame:
    """One row per image: each label's state under the reader policy, from one 0/1 row per reader."""
    if readers not in POLICIES:
        raise contract.SourceError(f"unknown reader policy {readers!r}; expected one of {POLICIES}")
    keys = pd.DataFrame({"image_id": image_ids.to_numpy(), "reader": reader_ids.to_numpy()})
    if keys.duplicated().any():
        row = int(np.flatnonzero(keys.duplicated().to_numpy())[0])
        reader, image = keys["reader"].iloc[row], keys["image_id"].iloc[row]
        raise contract.SourceError(f"{file_name} line {row + 2}: reader {reader} read image {image} twice")
    grouped = votes.set_axis(keys["image_id"].to_numpy()).groupby(level=0, sort=False)
    count = grouped.sum()
    reader_count = grouped.size().to_numpy()[:, None]
    positive = {"majority": 2 * count > reader_count, "any": count > 0, "all": count == reader_count}[readers]
    states = labelspace.harmonise(
        SOURCE, {c: np.where(positive[c], contract.POSITIVE, contract.NEGATIVE) for c in positive.columns}
    )
    ids = count.index.to_numpy()
    metadata = pd.DataFrame(
        {
            "path": [f"{part}/{i}{DICOM_SUFFIX}" for i in ids],
            "patient_id": ids,
            "study_id": ids,
            "view": "PA",
            "sex": "unknown",
            "age": np.nan,
            "split": split,
            "readers": reader_count[:, 0],
        }
    )
    return pd.concat([metadata, contract.labels_frame(states, metadata.index)], axis=1)


def _finish(frame: pd.DataFrame, readers: str, official: bool) -> contract.SourceTable:
    names = tuple(name for name in labelspace.source_labels(SOURCE) if name in frame.columns)
    options = {"readers": readers, "official_split": official}
    return contract.validate(contract.SourceTable(SOURCE, frame, names, options))
