"""Radiologists' labels beside NIH's text-mined ones: how much of the error is label noise.

Google's expert-adjudicated labels (Majkowska et al., Radiology 2019; ``google2019_nih-chest-xray-
labels.csv``, 4,376 NIH images, ``YES``/``NO`` per finding) cover two findings that map onto NIH's 14:
Pneumothorax, and "Nodule or mass" (NIH's Mass or Nodule, scored by the larger of the two
probabilities). On the evaluated images that carry them, the model's AUROC against each label set on
the same images, and how often the two label sets agree.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from lungjax.evaluation.stats import ranking

EXPERT_FILE = "google2019_nih-chest-xray-labels.csv"
# Report name -> (the expert file's column, the NIH findings it covers).
EXPERT_FINDINGS = {
    "Pneumothorax": ("Pneumothorax", ("Pneumothorax",)),
    "Nodule/Mass": ("Nodule or mass", ("Mass", "Nodule")),
}
EXPERT_VALUES = {"YES": True, "NO": False}


class ExpertLabelsError(ValueError):
    """The expert label file is not the one this comparison reads; the message says what differs."""


def read_expert_labels(path: str | os.PathLike) -> pd.DataFrame:
    """``Image Index`` and one boolean column per ``EXPERT_FINDINGS`` column."""
    columns = ["Image Index", *(column for column, _ in EXPERT_FINDINGS.values())]
    try:
        frame = pd.read_csv(path, usecols=columns, dtype=str)
    except ValueError as err:
        raise ExpertLabelsError(f"{path}: expected the columns {columns} ({err})") from err
    for column in columns[1:]:
        bad = ~frame[column].isin(list(EXPERT_VALUES))
        if bad.any():
            raise ExpertLabelsError(
                f"{path}: column {column!r} must hold YES or NO; {int(bad.sum())} rows do not, "
                f"e.g. {frame.loc[bad, 'Image Index'].head(3).tolist()}"
            )
        frame[column] = frame[column].map(EXPERT_VALUES)
    return frame


def _auroc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    if positive.all() or not positive.any():
        return None
    two_class = np.stack([1.0 - scores, scores], axis=1)
    return float(ranking.one_vs_rest_auc(positive.astype(np.int64), two_class)[1])


def compare(predictions: dict[str, np.ndarray], class_names, path: str | os.PathLike) -> dict:
    """Per expert finding: images, positives under each label set, both AUROCs and the agreement."""
    expert = read_expert_labels(path).set_index("Image Index")
    names = pd.Index(predictions["image_name"])
    rows = np.flatnonzero(names.isin(expert.index))
    result = {}
    for name, (column, findings) in EXPERT_FINDINGS.items():
        columns = [list(class_names).index(finding) for finding in findings]
        nih = predictions["label"][rows][:, columns].astype(bool).any(axis=1)
        scores = predictions["probs"][rows][:, columns].max(axis=1).astype(np.float64)
        radiologists = expert.loc[names[rows], column].to_numpy(bool)
        result[name] = {
            "images": int(len(rows)),
            "nih_positives": int(nih.sum()),
            "expert_positives": int(radiologists.sum()),
            "auroc_nih_labels": _auroc(nih, scores),
            "auroc_expert_labels": _auroc(radiologists, scores),
            "agreement": float((nih == radiologists).mean()) if len(rows) else None,
        }
    return result


def find(manual_dir: str | os.PathLike) -> Path | None:
    """The expert label file in a download folder, when it is there."""
    path = Path(manual_dir) / EXPERT_FILE
    return path if path.is_file() else None
