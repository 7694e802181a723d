"""NIH metadata: read ``Data_Entry_2017.csv``, select a task's rows (six classes or 14 findings), split them.

Pure pandas/NumPy, no pixels: everything about *which* images form the dataset and *where* each
one goes is decided here, so it can be tested on the real 112,120-row metadata without images.
"""

from __future__ import annotations

import codecs
import os
from pathlib import Path

import numpy as np
import pandas as pd

from lungjax.data import labels, nih_layout

# Columns we need from Data_Entry_2017.csv (NIH names; the size/spacing columns are not needed).
REQUIRED_COLUMNS = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
)
MANIFEST_COLUMNS = ("Image Index", "Finding Labels")
MAX_PLAUSIBLE_AGE = 120  # Kaggle's copy has uncorrected ages such as 414: kept as missing.
MISSING_AGE = -1
NAMES_SHOWN = 5  # offending rows or names an error message lists
NO_FINDING_SAMPLE = 3260  # the reference's number of "No Finding" images
SPLIT_NAMES = ("train", "validation", "test")
PATIENT_SPLIT_SHARES = (0.7, 0.1, 0.2)
# With NIH's official lists, validation is this share of the train_val patients (chosen like the patient
# split, so each finding keeps its prevalence): ~8,600 images, enough that Hernia (0.2%) still has
# about 14 positives for choosing the best checkpoint, and ~78,000 left to train on.
OFFICIAL_VALIDATION_SHARE = 0.1
VIEWS = ("both", "PA", "AP")


class MetadataError(ValueError):
    """The metadata files are missing or malformed; the message says what was expected."""


class MissingImagesError(MetadataError, FileNotFoundError):
    """The metadata lists images the download does not have."""


def read_data_entry(path: str | os.PathLike) -> pd.DataFrame:
    """Reads NIH's ``Data_Entry_2017.csv`` (2020 revision or Kaggle's copy) into a clean frame.

    The header's ``OriginalImage[Width,Height]`` holds an unquoted comma, so pandas sees more
    columns than names; we only keep the named columns we need. Kaggle's trailing empty column
    and implausible ages are tolerated (ages above 120 become MISSING_AGE).
    """
    path = Path(path)
    if not path.is_file():
        raise MetadataError(f"metadata file not found: {path} (expected NIH's {nih_layout.DATA_ENTRY_FILE})")
    frame = _read_csv(path, index_col=False, dtype={"Image Index": str, "Finding Labels": str})
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise MetadataError(
            f"{path} lacks the columns {missing}; an NIH {nih_layout.DATA_ENTRY_FILE} has {list(REQUIRED_COLUMNS)}"
        )
    frame = frame[list(REQUIRED_COLUMNS)].copy()
    _refuse_duplicates(frame, path)
    age = pd.to_numeric(frame["Patient Age"], errors="coerce")
    frame["Patient Age"] = age.where((age >= 0) & (age <= MAX_PLAUSIBLE_AGE), MISSING_AGE).astype(int)
    frame["Patient ID"] = _integers(frame, "Patient ID", path)
    frame["Follow-up #"] = _integers(frame, "Follow-up #", path)
    return frame.reset_index(drop=True)


def _read_csv(path: Path, **options) -> pd.DataFrame:
    """``pd.read_csv`` with a file that is not readable CSV text as one ``MetadataError`` naming it."""
    try:
        return pd.read_csv(path, **options)
    except UnicodeDecodeError as err:
        raise MetadataError(
            f"{path} is not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8 CSV, as NIH ships it"
        ) from err
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        raise MetadataError(f"{path} is not a readable CSV file ({' '.join(str(err).split())})") from err


def _rows(frame: pd.DataFrame, which: pd.Series) -> str:
    """The first few flagged rows as ``line N (Image Index)``: line numbers of the file, header = 1."""
    shown = frame.index[which][:NAMES_SHOWN]
    return ", ".join(f"line {i + 2} ({frame.at[i, 'Image Index']})" for i in shown)


def _refuse_duplicates(frame: pd.DataFrame, path: Path) -> None:
    """One image on two rows would be two examples with one key: refused before any image is read."""
    repeated = frame["Image Index"].duplicated(keep=False)
    if repeated.any():
        raise MetadataError(
            f"{path}: {int(repeated.sum())} rows share an Image Index with another row, e.g. {_rows(frame, repeated)}; "
            "each image must be listed once"
        )


def _integers(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() | (values != values.round())
    if bad.any():
        raise MetadataError(
            f"{path}: column {column!r} must hold whole numbers; {int(bad.sum())} rows do not, e.g. {_rows(frame, bad)}"
        )
    return values.astype(np.int64)


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Reads a manifest CSV (``Image Index``, ``Finding Labels``) that pins the exact image list."""
    frame = _read_csv(Path(path), index_col=False, dtype=str)
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise MetadataError(f"manifest {path} lacks the columns {missing}; expected {list(MANIFEST_COLUMNS)}")
    return frame[list(MANIFEST_COLUMNS)].reset_index(drop=True)


def read_boxes(path: str | os.PathLike) -> pd.DataFrame:
    """NIH's ``BBox_List_2017.csv`` -> ``Image Index``, ``finding``, ``label``, ``x``, ``y``, ``w``, ``h``.

    The header names four box columns with one unquoted ``Bbox [x,y,w,h]`` and some copies carry
    trailing empty columns, so columns are read by position. ``label`` is the box's class index
    (missing for findings outside the six classes), so a box is only attached to an example of
    the same class. Coordinates are pixels of the released 1024x1024 films.
    """
    frame = _read_csv(
        Path(path), header=None, skiprows=1, usecols=range(6), names=["Image Index", "finding", "x", "y", "w", "h"]
    )
    frame["label"] = frame["finding"].map(labels.class_index).astype("Int64")
    return frame


def read_image_list(path: str | os.PathLike) -> list[str]:
    """NIH's official ``train_val_list.txt`` / ``test_list.txt``: one image name per line, in order.

    The lists are text files that editors re-save in other encodings: UTF-8 with or without a
    byte-order mark, or UTF-16 with one, are read alike; anything else, or a list naming no image,
    stops the build naming the file.
    """
    path = Path(path)
    data = path.read_bytes()
    encoding = "utf-16" if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        raise MetadataError(
            f"{path} is not text in UTF-8 (or UTF-16 with a byte-order mark): {err.reason} at byte {err.start}"
        ) from None
    if "\x00" in text:
        raise MetadataError(f"{path} holds NUL characters: save it as UTF-8 (UTF-16 needs a byte-order mark)")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise MetadataError(f"{path} names no image: it should list one image name per line")
    return names


def select_subset(
    data_entry: pd.DataFrame,
    *,
    manifest: pd.DataFrame | None = None,
    no_finding_count: int = NO_FINDING_SAMPLE,
    seed: int = 42,
) -> pd.DataFrame:
    """The six-class single-label subset, with a ``label`` column (index into CLASS_NAMES).

    Without a manifest: every row whose ``Finding Labels`` is exactly one of the five findings
    (split on ``|``), plus a seeded sample of ``no_finding_count`` "No Finding" rows (all of them
    when fewer exist). With a manifest: exactly its rows, in its order, labelled by its own
    ``Finding Labels``; every manifest image must exist in the metadata.
    """
    if manifest is not None:
        chosen = manifest.merge(
            data_entry.drop(columns="Finding Labels"),
            on="Image Index",
            how="left",
            validate="one_to_one",
            indicator=True,
        )
        unknown = chosen.loc[chosen["_merge"] != "both", "Image Index"]
        if len(unknown):
            raise MetadataError(
                f"{len(unknown)} manifest images are not in {nih_layout.DATA_ENTRY_FILE}, e.g. {list(unknown[:5])}"
            )
        chosen = chosen.drop(columns="_merge")
        chosen["label"] = chosen["Finding Labels"].map(labels.class_index)
        bad = chosen.loc[chosen["label"].isna(), "Finding Labels"]
        if len(bad):
            raise MetadataError(f"manifest labels outside the six classes: {sorted(set(bad))[:5]}")
    else:
        frame = data_entry.assign(label=data_entry["Finding Labels"].map(labels.class_index))
        no_finding = labels.CLASS_NAMES.index("No Finding")
        findings = frame[frame["label"].notna() & (frame["label"] != no_finding)]
        normals = frame[frame["label"] == no_finding]
        if len(normals) > no_finding_count:
            normals = normals.sample(n=no_finding_count, random_state=seed)
        chosen = pd.concat([findings, normals]).sort_index()
    chosen = chosen.astype({"label": int}).reset_index(drop=True)
    for name in ("Patient Age", "Patient ID", "Follow-up #"):
        chosen[name] = chosen[name].astype(int)
    return chosen


def split_by_image(subset: pd.DataFrame, seed: int = 42) -> dict[str, pd.DataFrame]:
    """The reference's split: 70/20/10 at random per image (leaks patients across splits).

    Exactly ``train_test_split(test_size=0.1, random_state=42)`` then ``test_size=0.2222`` on
    the remainder, as the reference did, so its lists can be reproduced for comparison.
    """
    from sklearn.model_selection import train_test_split

    train_val, test = train_test_split(subset, test_size=0.1, random_state=seed)
    train, validation = train_test_split(train_val, test_size=0.2222, random_state=seed)
    return {"train": train, "validation": validation, "test": test}


def finding_matrix(frame: pd.DataFrame) -> np.ndarray:
    """(N, K) per-image counts the patient split balances: one-hot classes for the six-class
    ``label``, the 14 findings plus a "No Finding" column for the multi-label ``findings``."""
    if "findings" in frame:
        findings = np.stack(frame["findings"].to_numpy()) if len(frame) else np.zeros((0, len(labels.FINDINGS14)))
        return np.column_stack([findings, findings.sum(axis=1) == 0]).astype(np.float64)
    return np.eye(labels.NUM_CLASSES)[frame["label"].to_numpy(dtype=np.int64)]


def split_by_patient(
    subset: pd.DataFrame, *, shares=PATIENT_SPLIT_SHARES, names=SPLIT_NAMES, seed: int = 42
) -> dict[str, pd.DataFrame]:
    """Patient-disjoint split, stratified by class (by finding, for the 14 findings).

    Patients are placed one at a time, largest first (ties in seeded random order), into the
    split whose per-class targets they fill best: the score of a split is how much of its
    remaining per-class deficit the patient's films cover, relative to the targets. This keeps
    each class's share per split close to its overall share with no patient on two sides.
    """
    rng = np.random.default_rng(seed)
    patient_ids, patient_index = np.unique(subset["Patient ID"].to_numpy(), return_inverse=True)
    per_image = finding_matrix(subset)
    per_patient = np.zeros((len(patient_ids), per_image.shape[1]))
    np.add.at(per_patient, patient_index, per_image)
    films = np.bincount(patient_index, minlength=len(patient_ids))
    order = np.lexsort((rng.permutation(len(patient_ids)), -films))
    targets = np.outer(np.asarray(shares, dtype=np.float64), per_patient.sum(axis=0))  # (splits, classes)
    filled = np.zeros_like(targets)
    assignment = np.empty(len(patient_ids), dtype=np.int64)
    for p in order:
        deficit = (targets - filled) / np.maximum(targets, 1.0)
        best = int(np.argmax(deficit @ per_patient[p]))
        assignment[p] = best
        filled[best] += per_patient[p]
    which = assignment[patient_index]
    return {name: subset[which == i] for i, name in enumerate(names)}


def select_findings14(data_entry: pd.DataFrame, *, views: str = "both") -> pd.DataFrame:
    """Every row (of the chosen view positions), with ``findings``: its 0/1 vector over FINDINGS14.

    A ``Finding Labels`` value naming anything but NIH's 14 findings or a lone "No Finding" stops
    the build, naming the rows: a misspelt label must not silently become a negative.
    """
    if views not in VIEWS:
        raise MetadataError(f"views must be one of {VIEWS}, got {views!r}")
    vectors = data_entry["Finding Labels"].map(labels.multi_hot)
    bad = vectors.isna()
    if bad.any():
        raise MetadataError(
            f"{int(bad.sum())} rows have Finding Labels outside NIH's 14 findings and 'No Finding', e.g. "
            + ", ".join(
                f"{r['Image Index']}: {r['Finding Labels']!r}" for _, r in data_entry[bad].head(NAMES_SHOWN).iterrows()
            )
        )
    chosen = data_entry.assign(findings=vectors)
    if views != "both":
        chosen = chosen[chosen["View Position"] == views]
    return chosen.reset_index(drop=True)


def split_official(
    chosen: pd.DataFrame,
    train_val: list[str],
    test: list[str],
    *,
    all_names: pd.Series,
    all_patients: pd.Series,
    seed: int = 42,
) -> dict[str, pd.DataFrame]:
    """NIH's official split: ``test`` is ``test_list.txt``; validation is a seeded, stratified,
    patient-disjoint ``OFFICIAL_VALIDATION_SHARE`` of the train_val patients (see the constant).

    ``all_names`` / ``all_patients`` are every metadata row's (before any view filter): the lists
    must name only those, not overlap, cover every row, and keep each patient on one side; the first
    offenders are named otherwise.
    """
    known = set(all_names)
    problems = []
    for list_name, names in ((nih_layout.TRAIN_VAL_LIST, train_val), (nih_layout.TEST_LIST, test)):
        unknown = [n for n in names if n not in known]
        if unknown:
            problems.append(
                f"{list_name} names {len(unknown)} images missing from the metadata, e.g. {unknown[:NAMES_SHOWN]}"
            )
    train_val_set, test_set = set(train_val), set(test)
    both = sorted(train_val_set & test_set)
    if both:
        problems.append(f"{len(both)} images are on both lists, e.g. {both[:NAMES_SHOWN]}")
    neither = [n for n in all_names if n not in train_val_set and n not in test_set]
    if neither:
        problems.append(f"{len(neither)} metadata rows are on neither list, e.g. {neither[:NAMES_SHOWN]}")
    patient_of = dict(zip(all_names, all_patients, strict=True))
    crossing = sorted(
        {patient_of[n] for n in test_set if n in patient_of} & {patient_of[n] for n in train_val_set if n in patient_of}
    )
    if crossing:
        problems.append(f"{len(crossing)} patients have images on both lists, e.g. patients {crossing[:NAMES_SHOWN]}")
    if problems:
        raise MetadataError("NIH's split lists do not fit the metadata: " + "; ".join(problems))
    in_test = chosen["Image Index"].isin(test_set).to_numpy()
    development = split_by_patient(
        chosen[~in_test],
        shares=(1 - OFFICIAL_VALIDATION_SHARE, OFFICIAL_VALIDATION_SHARE),
        names=("train", "validation"),
        seed=seed,
    )
    return {**development, "test": chosen[in_test]}


def patients_crossing(splits: dict[str, pd.DataFrame]) -> int:
    """How many patients have films in more than one split (zero for the patient split)."""
    seen: dict[int, set[str]] = {}
    for name, frame in splits.items():
        for pid in frame["Patient ID"].unique():
            seen.setdefault(int(pid), set()).add(name)
    return sum(len(s) > 1 for s in seen.values())


def find_data_entry(manual_dir: Path) -> Path:
    for name in nih_layout.DATA_ENTRY_NAMES:
        if (manual_dir / name).is_file():
            return manual_dir / name
    raise MetadataError(f"no metadata CSV in {manual_dir}: expected one of {list(nih_layout.DATA_ENTRY_NAMES)}")
