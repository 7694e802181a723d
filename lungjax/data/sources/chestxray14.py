"""NIH ChestX-ray14 as a source: the contract table of ``Data_Entry_2017.csv`` and NIH's official lists.

It reads NIH's files with the builder's own readers (:mod:`lungjax.data.metadata`, and
:mod:`lungjax.data.nih_layout` for where they lie), so this table and NIH's six-class and full14 datasets
agree on every row; how those datasets are built does not change. ``Finding Labels`` becomes NIH's 14
findings plus No Finding, all stated (NIH lists every finding it found: an absent one is negative);
Nodule and Mass also state the harmonised Nodule/Mass. With ``train_val_list.txt`` and
``test_list.txt`` the split is official (train / test), else there is none.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lungjax.data import labels as nih_labels
from lungjax.data import metadata, nih_layout
from lungjax.data.sources import contract, labelspace

SOURCE = "nih"
VIEWS = {"PA": "PA", "AP": "AP"}
SEXES = {"F": "F", "M": "M"}


def read(manual_dir: str | os.PathLike) -> contract.SourceTable:
    """NIH's download: the metadata CSV, the images (flat or in ``images_NNN/``), the official lists if present."""
    root = Path(manual_dir)
    data_entry = metadata.read_data_entry(metadata.find_data_entry(root))
    paths = {name: path.relative_to(root).as_posix() for name, path in nih_layout.index_images(root).items()}
    lists = [root / nih_layout.TRAIN_VAL_LIST, root / nih_layout.TEST_LIST]
    official = [metadata.read_image_list(p) for p in lists] if all(p.is_file() for p in lists) else [None, None]
    return table(data_entry, paths, *official)


def table(
    data_entry: pd.DataFrame,
    paths: Mapping[str, str],
    train_val: Sequence[str] | None = None,
    test: Sequence[str] | None = None,
) -> contract.SourceTable:
    """The contract table of ``data_entry`` (from :func:`metadata.read_data_entry`); ``paths`` maps each
    image name to its path under manual_dir. An image without a file is refused, as the builder does."""
    names = data_entry["Image Index"]
    missing = ~names.isin(list(paths))
    if missing.any():
        raise contract.SourceError(
            f"nih: {int(missing.sum())} images of the metadata have no file under images/ or images_NNN/images/, "
            f"e.g. {list(names[missing][: contract.ROWS_SHOWN])}"
        )
    findings = metadata.select_findings14(data_entry)["findings"]  # refuses names outside NIH's vocabulary
    vectors = np.stack(findings.to_numpy()) if len(findings) else np.zeros((0, len(nih_labels.FINDINGS14)), np.uint8)
    states = {name: vectors[:, k].astype(np.int8) for k, name in enumerate(nih_labels.FINDINGS14)}
    states[nih_labels.NO_FINDING] = (vectors.sum(axis=1) == 0).astype(np.int8)
    harmonised = labelspace.harmonise(SOURCE, states)
    frame = pd.DataFrame(
        {
            "path": names.map(paths),
            "patient_id": data_entry["Patient ID"].astype(str),
            "study_id": data_entry["Patient ID"].astype(str) + "/" + data_entry["Follow-up #"].astype(str),
            "view": data_entry["View Position"].map(VIEWS).fillna("unknown"),
            "sex": data_entry["Patient Gender"].map(SEXES).fillna("unknown"),
            "age": data_entry["Patient Age"].where(data_entry["Patient Age"] != metadata.MISSING_AGE).astype(float),
            "split": _official_split(names, train_val, test),
        }
    )
    frame = pd.concat([frame, contract.labels_frame(harmonised, frame.index)], axis=1)
    options = {"official_split": train_val is not None}
    return contract.validate(contract.SourceTable(SOURCE, frame, tuple(harmonised), options))


def _official_split(names: pd.Series, train_val: Sequence[str] | None, test: Sequence[str] | None) -> np.ndarray:
    if train_val is None or test is None:
        return np.full(len(names), contract.NO_SPLIT, dtype=object)
    on_train, on_test = names.isin(set(train_val)), names.isin(set(test))
    for bad, why in ((on_train & on_test, "on both lists"), (~on_train & ~on_test, "on neither list")):
        if bad.any():
            raise contract.SourceError(
                f"nih: {int(bad.sum())} images are {why} ({nih_layout.TRAIN_VAL_LIST}, {nih_layout.TEST_LIST}), "
                f"e.g. {list(names[bad][: contract.ROWS_SHOWN])}"
            )
    return np.where(on_test, "test", "train")
