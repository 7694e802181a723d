"""What ``report.json`` holds: its version and its sections, in the order they are written.

``REPORT_VERSION`` changes whenever a key changes meaning or moves; a reader can refuse a version it
does not know. The metrics sections differ by task kind (``kinds``); everything after them is
common to both. Optional sections are written only when their input exists: ``expert_labels``
(the radiologists' labels beside the data), ``comparison`` (``config.eval.compare_to``).
"""

from __future__ import annotations

from typing import TypedDict

REPORT_VERSION = 2  # 2: ``task`` is a section (name, class names, kind; a label set's label space)

SINGLE_LABEL_METRICS = (
    "n_images",
    "n_patients",
    "accuracy",
    "balanced_accuracy",
    "macro_auc",
    "macro_pr_auc",
    "log_loss",
    "ece",
    "confusion_matrix",
    "per_class",
    "confidence_intervals",
    "at_thresholds",
    "reference",
)
MULTI_LABEL_METRICS = (
    "n_images",
    "n_patients",
    "mean_auroc",
    "mean_pr_auc",
    "means_over",
    "ece_bins",
    "per_finding",
    "confidence_intervals",
    "at_thresholds",
    "published",
)
DECISION_SECTIONS = ("operating_points", "calibration", "subgroups")


class Identity(TypedDict):
    """What was evaluated, on what: the keys after the sections."""

    task: dict
    split: str
    checkpoint_step: int
    dataset: str
    dataset_fingerprint: str
    split_scheme: str
    patients_crossing_splits: int | None
    patient_disjoint: bool
    tta_crops: int
    config: dict


IDENTITY = tuple(Identity.__annotations__)
EXPLAIN = "explain"  # the Grad-CAM figures' pointing game, written last (process 0 draws them)


def versioned(report: dict) -> dict:
    """``report`` with ``report_version`` as its first key."""
    return {"report_version": REPORT_VERSION, **report}


def expected_keys(metrics_keys: tuple[str, ...], present: set[str]) -> list[str]:
    """The keys of a complete report in order, given its kind's metrics keys and the keys it has (which
    says whether the optional sections are there). Without validation thresholds ``at_thresholds`` holds
    only the reason and follows the published figures."""
    expert = ["expert_labels"] if "expert_labels" in present else []
    comparison = ["comparison"] if "comparison" in present else []
    return ["report_version", *metrics_keys, *expert, *DECISION_SECTIONS, *comparison, *IDENTITY, EXPLAIN]
