"""The two kinds of task, and the one place evaluation branches on them.

* single label (the six classes): one softmax over the classes, one true class per image; metrics
  at the argmax, top-1 calibration, a confusion matrix, the reference's figures beside ours;
* multi label (NIH's 14 findings, or a label set of the harmonised vocabulary): an independent sigmoid
  per finding, any number present per image; each finding scored as its own binary problem, the
  published tables beside ours. A label set is *masked*: its predictions carry ``label_mask`` (N, C),
  1 where the source states the entry, and every statistic counts stated entries only. Masked
  multi-label is this kind with that mask; without one every entry is stated (all ones), so NIH's
  numbers are the very numbers of a mask of ones.

Everything that differs between the two (the metrics section, the Youden thresholds, the plots, the
Grad-CAM figures, the document, the console table, a prediction's truth in ``predictions.csv``) is a
method of :class:`Kind`; callers ask ``of_task(task)`` or, for a written report, ``of_report(report)``
(its ``"task"`` section), and never test the task themselves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lungjax.data import labels, tasks
from lungjax.evaluation import gradcam
from lungjax.evaluation.render import document, plots, table
from lungjax.evaluation.sections import multi_label, published, reference, single_label
from lungjax.evaluation.stats import checks, youden

CALIBRATED_TITLE = "After temperature scaling"


@dataclasses.dataclass(frozen=True)
class Kind:
    """What evaluation does differently for one kind of task (module docstring)."""

    multi_label: bool
    truth_column: str  # predictions.csv's header of the truth
    metrics_fn: Callable[..., dict]
    context_key: str  # the published figures the report sets beside its own
    context_fn: Callable[[], dict]
    youden_fn: Callable
    youden_j_fn: Callable
    document_fn: Callable[[dict, Sequence[str]], document.Document]
    table_fn: Callable[[dict], str]

    def columns(self, labels_: np.ndarray, probs: np.ndarray, class_names) -> tuple[np.ndarray, np.ndarray]:
        """Every class as its own binary problem, checked: (positive (N, C) bool, scores (N, C) float64).

        A six-class prediction becomes six one-vs-rest columns (positive: the true class is k; score:
        its softmax probability), a 14-finding prediction already is 14 such columns."""
        if self.multi_label:
            return checks.check_multilabel_predictions(labels_, probs, class_names)
        labels_, probs = checks.check_predictions(labels_, probs, class_names)
        return labels_[:, None] == np.arange(len(class_names)), probs

    def stated(self, predictions: dict, class_names) -> np.ndarray:
        """(N, C) bool: the entries that count, per class column (``columns``): a masked task's
        ``label_mask``, else every entry."""
        return checks.check_stated(predictions.get("label_mask"), (len(predictions["probs"]), len(class_names)))

    def metrics_section(self, predictions: dict, class_names, *, thresholds, n_bootstrap: int, seed: int) -> dict:
        """The task's metrics beside the published figures it is read against."""
        masked = {"stated": predictions.get("label_mask")} if self.multi_label else {}
        report = self.metrics_fn(
            predictions["label"],
            predictions["probs"],
            class_names,
            patient_ids=predictions["patient_id"],
            thresholds=thresholds,
            n_bootstrap=n_bootstrap,
            seed=seed,
            **masked,
        )
        report[self.context_key] = self.context_fn()
        return report

    def youden_thresholds(self, predictions: dict, class_names) -> dict:
        if self.multi_label:
            return self.youden_fn(
                predictions["label"], predictions["probs"], class_names, predictions.get("label_mask")
            )
        return self.youden_fn(predictions["label"], predictions["probs"], class_names)

    def youden_j(self, predictions: dict, thresholds: dict, class_names) -> dict:
        if self.multi_label:
            return self.youden_j_fn(
                predictions["label"], predictions["probs"], thresholds, class_names, predictions.get("label_mask")
            )
        return self.youden_j_fn(predictions["label"], predictions["probs"], thresholds, class_names)

    def truth_header(self, class_names, masked: bool) -> list[str]:
        """``predictions.csv``'s truth columns: one (the class, or the findings), or for a masked task one
        per label (``true <label>``: 1, 0, or blank where the image does not state it)."""
        if masked:
            return [f"true {name}" for name in class_names]
        return [self.truth_column]

    def truth(self, label, class_names, stated=None) -> list[str]:
        """An example's truth as ``predictions.csv`` writes it (``truth_header``): the class name, or the
        findings joined with ``|`` (NIH's form; "No Finding" for none), or per label of a masked task
        (``stated`` given) 1, 0 or blank."""
        if stated is not None:
            return [str(int(y)) if s else "" for y, s in zip(label, stated, strict=True)]
        if self.multi_label:
            return ["|".join(n for n, y in zip(class_names, label, strict=True) if y) or labels.NO_FINDING]
        return [class_names[int(label)]]

    def write_plots(self, out: Path, true, probs, calibrated, class_names, report: dict, stated=None) -> None:
        """ROC, PR, confusion matrix and reliability diagrams before and after temperature scaling; for the
        14 findings (or a label set, on the images stating each label) one ROC and one reliability panel
        per finding."""
        if self.multi_label:
            plots.plot_roc_grid(true, probs, class_names, out / "roc.png", stated)
            plots.plot_reliability_grid(true, probs, class_names, out / "reliability.png", stated=stated)
            plots.plot_reliability_grid(
                true,
                calibrated,
                class_names,
                out / "reliability_calibrated.png",
                title=CALIBRATED_TITLE,
                stated=stated,
            )
            return
        plots.plot_roc_curves(true, probs, class_names, out / "roc.png")
        plots.plot_pr_curves(true, probs, class_names, out / "pr.png")
        plots.plot_confusion_matrix(np.asarray(report["confusion_matrix"]), class_names, out / "confusion_matrix.png")
        plots.plot_reliability_diagram(true, probs, out / "reliability.png")
        plots.plot_reliability_diagram(true, calibrated, out / "reliability_calibrated.png", title=CALIBRATED_TITLE)

    def explain(self, cam_fn, model_state, source, predictions: dict, out: Path, *, class_names, **kwargs) -> dict:
        """The Grad-CAM figures and the pointing game: per true class, or per finding."""
        if self.multi_label:
            return gradcam.explain_findings(
                cam_fn, model_state, source, predictions, out, class_names=class_names, **kwargs
            )
        return gradcam.explain_split(cam_fn, model_state, source, predictions, out, **kwargs)

    def document(self, report: dict, figures: Sequence[str] = ()) -> document.Document:
        return self.document_fn(report, figures)

    def table(self, report: dict) -> str:
        return self.table_fn(report)


SINGLE_LABEL = Kind(
    multi_label=False,
    truth_column="true_class",
    metrics_fn=single_label.classification_report,
    context_key="reference",
    context_fn=reference.reference_figures,
    youden_fn=youden.youden_thresholds,
    youden_j_fn=youden.youden_j,
    document_fn=document.six_class_document,
    table_fn=table.single_label_table,
)
MULTI_LABEL = Kind(
    multi_label=True,
    truth_column="true_findings",
    metrics_fn=multi_label.multilabel_report,
    context_key="published",
    context_fn=published.tables,
    youden_fn=youden.youden_thresholds_multilabel,
    youden_j_fn=youden.youden_j_multilabel,
    document_fn=document.multilabel_document,
    table_fn=table.multi_label_table,
)


def of_task(task: tasks.Task) -> Kind:
    return MULTI_LABEL if task.multi_label else SINGLE_LABEL


def of_report(report: dict) -> Kind:
    """The kind of a written report, from its ``task`` section."""
    return MULTI_LABEL if report["task"]["multi_label"] else SINGLE_LABEL
