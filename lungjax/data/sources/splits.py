"""Train / validation / test for any source: its official split where it has one, else by patient.

Both reuse NIH's patient splitter (:func:`lungjax.data.metadata.split_by_patient`: seeded, stratified
by the positives of each label, no patient on two sides). A source with an official split keeps it;
when that split has no validation part, validation is the same share of its training patients as for
NIH's official lists (:data:`lungjax.data.metadata.OFFICIAL_VALIDATION_SHARE`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lungjax.data import metadata
from lungjax.data.sources import contract


def assign(table: contract.SourceTable, *, seed: int = 42) -> pd.Series:
    """The split of every row of ``table`` (index aligned with its frame)."""
    frame = table.frame
    positives = np.column_stack(
        [frame[name].to_numpy() == contract.POSITIVE for name in table.labels] or [np.zeros(len(frame), bool)]
    ).astype(np.uint8)
    by_patient = pd.DataFrame(
        {"Patient ID": frame["patient_id"].to_numpy(), "findings": list(positives)}, index=frame.index
    )
    split = frame["split"].copy()
    if (split == contract.NO_SPLIT).all():
        parts = metadata.split_by_patient(by_patient, names=contract.SPLITS, seed=seed)
    elif not (split == "validation").any():
        train = split == "train"
        parts = metadata.split_by_patient(
            by_patient[train],
            shares=(1 - metadata.OFFICIAL_VALIDATION_SHARE, metadata.OFFICIAL_VALIDATION_SHARE),
            names=("train", "validation"),
            seed=seed,
        )
    else:
        return split
    for name, part in parts.items():
        split.loc[part.index] = name
    return split.rename("split")


def patients_crossing(table: contract.SourceTable, split: pd.Series) -> int:
    """How many patients have images in more than one split (zero for every split made here)."""
    return int((split.groupby(table.frame["patient_id"]).nunique() > 1).sum())
