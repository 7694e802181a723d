"""The table every source becomes, and its one validation.

One row per image: ``path`` (relative to the source's manual_dir, with ``/``), ``patient_id`` and
``study_id`` (strings), ``view`` (one of VIEWS), ``sex`` (one of SEXES), ``age`` (years, NaN when
unknown), ``split`` (the source's official split, one of SPLITS, or NO_SPLIT on every row of a source
without one), then one int8 column per label of the source's vocabulary, named in the harmonised
label space (:mod:`.labelspace`), holding one of four states:

    POSITIVE = 1, NEGATIVE = 0, UNCERTAIN = -1 (the report hedges), NOT_STATED = -2 (not mentioned).

CheXpert's own coding (1 / 0 / -1 / blank) reads across unchanged, blank becoming NOT_STATED: a
finding a report does not mention is not a negative. A label outside the source's vocabulary has no
column at all and counts as not stated wherever labels are asked for (:func:`labelspace.label_matrix`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd

POSITIVE, NEGATIVE, UNCERTAIN, NOT_STATED = 1, 0, -1, -2
STATE_NAMES = MappingProxyType(
    {POSITIVE: "positive", NEGATIVE: "negative", UNCERTAIN: "uncertain", NOT_STATED: "not stated"}
)
VIEWS = ("PA", "AP", "lateral", "unknown")
FRONTAL = ("PA", "AP")
SEXES = ("F", "M", "unknown")
SPLITS = ("train", "validation", "test")
NO_SPLIT = ""
COLUMNS = ("path", "patient_id", "study_id", "view", "sex", "age", "split")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
ROWS_SHOWN = 3  # offending rows an error message names


class SourceError(ValueError):
    """A source's files or table break the contract; the message names the file, the row and the rule."""


@dataclasses.dataclass(frozen=True)
class SourceTable:
    """One source's images, read: ``frame`` holds COLUMNS then ``labels`` (harmonised names, int8 states).

    ``options`` records every choice that changed the table (policies, filters, rules applied and how
    many entries they changed), so a build report can state them rather than hide them.
    """

    source: str
    frame: pd.DataFrame
    labels: tuple[str, ...]
    options: Mapping[str, object]

    def with_frame(self, frame: pd.DataFrame, **options) -> SourceTable:
        return dataclasses.replace(self, frame=frame.reset_index(drop=True), options={**self.options, **options})


def parse_states(frame: pd.DataFrame, columns, file_name: str) -> dict[str, np.ndarray]:
    """CheXpert-style label columns (1 / 0 / -1 / blank) -> int8 states; any other value is refused
    in one line naming the file, its line (header = line 1), the column and the value."""
    states = {}
    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = (values.isna() & frame[column].notna()) | ~(values.isin((1, 0, -1)) | values.isna())
        if bad.any():
            first = int(np.flatnonzero(bad.to_numpy())[0])
            raise SourceError(
                f"{file_name} line {first + 2}: column {column!r} holds {frame[column].iloc[first]!r}; "
                "label values are 1 (positive), 0 (negative), -1 (uncertain) or blank (not stated)"
            )
        states[column] = values.fillna(NOT_STATED).to_numpy(dtype=np.int8)
    return states


def require_columns(frame: pd.DataFrame, required, file_name: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise SourceError(f"{file_name} lacks the columns {missing}; it must have {list(required)}")


def read_csv(source: str | os.PathLike, file_name: str | None = None, **options) -> pd.DataFrame:
    """``pd.read_csv`` of a path or an open file; a file that is not readable CSV is one SourceError naming it."""
    name = file_name or str(source)
    if isinstance(source, str | os.PathLike) and not Path(source).is_file():
        raise SourceError(f"{name}: file not found")
    try:
        return pd.read_csv(source, **options)
    except UnicodeDecodeError as err:
        raise SourceError(f"{name} is not UTF-8 text (byte {err.start}: {err.reason})") from err
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        raise SourceError(f"{name} is not a readable CSV file ({' '.join(str(err).split())})") from err


def validate(table: SourceTable) -> SourceTable:
    """Checks the contract once for every source: columns, values, one row per path, official splits
    all-or-none and never splitting a patient. Returns the table unchanged; raises SourceError."""
    frame, name = table.frame, table.source
    require_columns(frame, (*COLUMNS, *table.labels), f"{name} table")
    for column, allowed in (("view", VIEWS), ("sex", SEXES), ("split", (*SPLITS, NO_SPLIT))):
        bad = ~frame[column].isin(allowed)
        if bad.any():
            raise SourceError(
                f"{name}: column {column!r} must be one of {allowed}; {_rows(frame, bad)} hold "
                f"{sorted(set(frame.loc[bad, column].astype(str)))[:ROWS_SHOWN]}"
            )
    for column in table.labels:
        values = frame[column]
        if values.dtype != np.int8 or not values.isin(tuple(STATE_NAMES)).all():
            raise SourceError(f"{name}: label {column!r} must hold int8 states {dict(STATE_NAMES)}")
    if frame["path"].duplicated().any():
        raise SourceError(f"{name}: paths listed twice: {_rows(frame, frame['path'].duplicated(keep=False))}")
    official = frame["split"] != NO_SPLIT
    if official.any() and not official.all():
        raise SourceError(f"{name}: an official split must name every row; {_rows(frame, ~official)} have none")
    if official.all() and len(frame):
        splits_per_patient = frame.groupby("patient_id", sort=False)["split"].nunique()
        crossing = splits_per_patient.index[splits_per_patient > 1]
        if len(crossing):
            patient = crossing[0]
            rows = frame[frame["patient_id"] == patient]
            shown = ", ".join(
                f"{p} ({s})" for p, s in zip(rows["path"][:ROWS_SHOWN], rows["split"][:ROWS_SHOWN], strict=True)
            )
            raise SourceError(
                f"{name}: patient {patient} is on two official splits ({len(crossing)} patients are): {shown}"
            )
    return table


def _rows(frame: pd.DataFrame, which: pd.Series) -> str:
    shown = frame.loc[which, "path"][:ROWS_SHOWN]
    return f"{int(which.sum())} rows, e.g. " + ", ".join(f"row {i} ({p})" for i, p in shown.items())


def select_views(table: SourceTable, views=FRONTAL) -> SourceTable:
    """Only the rows of the given views (frontal films by default), the choice recorded in the options."""
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise SourceError(f"views {unknown} are not among {VIEWS}")
    kept = table.frame["view"].isin(views)
    return table.with_frame(table.frame[kept], views=tuple(views), rows_of_other_views=int((~kept).sum()))


def labels_frame(states: Mapping[str, np.ndarray], index: pd.Index) -> pd.DataFrame:
    """Harmonised label states as the table's label columns (int8)."""
    return pd.DataFrame({name: np.asarray(v, dtype=np.int8) for name, v in states.items()}, index=index)
