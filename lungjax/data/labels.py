"""The six-class label contract shared by the builder, the pipeline and evaluation.

Labels come from NIH's ``Finding Labels`` column, which joins findings with ``|``. A row belongs to
the subset only when it carries exactly one finding of interest; we split on ``|`` and compare whole
names (never substrings: ``Mass`` must not match ``Massive``).
"""

from __future__ import annotations

CLASS_NAMES: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Nodule/Mass",
    "Pneumothorax",
    "No Finding",
)
NUM_CLASSES = len(CLASS_NAMES)

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
