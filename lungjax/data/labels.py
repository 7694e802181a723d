"""NIH's finding names and the two label contracts built on them (see :mod:`lungjax.data.tasks`).

Labels come from NIH's ``Finding Labels`` column, which joins findings with ``|``. We split on ``|``
and compare whole names, never substrings (``Mass`` must not match ``Massive``).

* six-class: a row belongs to the subset only when it carries exactly one finding of interest
  (Nodule and Mass merged, as the reference did); its label is one index into ``CLASS_NAMES``;
* 14 findings: every row; its label is a 0/1 vector over ``FINDINGS14`` in NIH's order, and
  "No Finding" is the all-zero vector.
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Nodule/Mass",
    "Pneumothorax",
    "No Finding",
)
NUM_CLASSES = len(CLASS_NAMES)

# NIH's 14 findings, in the order of its release and of every paper's tables.
FINDINGS14: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"
# The findings NIH's BBox_List_2017.csv draws boxes for (the first eight, in the same order), and the
# one it names otherwise than the labels do.
BOXED_FINDINGS: tuple[str, ...] = FINDINGS14[:8]
BOX_LIST_NAMES = {"Infiltration": "Infiltrate"}

# NIH finding name -> class name. Nodule and Mass merge into one class, as in the reference.
_FINDING_TO_CLASS = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Effusion": "Effusion",
    "Nodule": "Nodule/Mass",
    "Mass": "Nodule/Mass",
    "Nodule/Mass": "Nodule/Mass",  # the reference's own manifest already merged them
    "Pneumothorax": "Pneumothorax",
    "No Finding": "No Finding",
}


def split_findings(finding_labels: str) -> list[str]:
    """NIH ``Finding Labels`` -> list of finding names."""
    return [name.strip() for name in str(finding_labels).split("|") if name.strip()]


def class_index(finding_labels: str) -> int | None:
    """Index into CLASS_NAMES for a single-finding row of the subset, else None."""
    findings = split_findings(finding_labels)
    if len(findings) != 1 or findings[0] not in _FINDING_TO_CLASS:
        return None
    return CLASS_NAMES.index(_FINDING_TO_CLASS[findings[0]])


def multi_hot(finding_labels: str) -> np.ndarray | None:
    """The 0/1 vector over FINDINGS14 of a ``Finding Labels`` value; None when it names anything
    else (a finding outside NIH's vocabulary, or "No Finding" beside a finding)."""
    findings = split_findings(finding_labels)
    if findings == [NO_FINDING]:
        return np.zeros(len(FINDINGS14), np.uint8)
    if not findings or any(name not in FINDINGS14 for name in findings):
        return None
    vector = np.zeros(len(FINDINGS14), np.uint8)
    vector[[FINDINGS14.index(name) for name in findings]] = 1
    return vector
