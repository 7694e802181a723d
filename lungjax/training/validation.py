"""Validation during training: loss, accuracy and macro ROC-AUC on the validation split (for the 14
findings: mean binary cross-entropy and mean AUROC over the findings, under the same names, so the
best checkpoint is the one with the best mean AUROC), and the early-stopping rule that watches the
validation loss.

Predictions reuse inference's jit-compiled predictor (compiled once per run, here), so training
and evaluation score a model the same way. With several processes ``predict_split`` gathers the
whole split on every process, so the validation loss, and with it early stopping and the plateau
schedule, is the same everywhere and the processes never diverge.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lungjax import models
from lungjax.data import records, tasks, union
from lungjax.evaluation import inference
from lungjax.evaluation.render import plots
from lungjax.evaluation.sections import multi_label
from lungjax.evaluation.stats import calibration, ranking, rates

NUM_SAMPLE_IMAGES = 4


@dataclasses.dataclass
class Validation:
    # val_loss, val_accuracy and (when defined) val_macro_auc; for a union also each per source, "val_loss/<source>"
    scalars: dict[str, float]
    images: dict[str, np.ndarray]  # a strip of input images and the confusion matrix, uint8


def confusion_image(confusion: np.ndarray, class_names) -> np.ndarray:
    """The evaluation report's confusion-matrix plot, as an RGB array for TensorBoard."""
    return plots.figure_rgb(plots.confusion_matrix_figure(confusion, class_names))


class Validator:
    """Scores a model on the validation split: for a union of sources (``union.UnionSource``) over
    all of them, and each source's split on its own beside it (``val_loss/<source>``, ...)."""

    def __init__(self, source: records.ExampleSource | union.UnionSource, config, graphdef, mesh):
        self._source = source
        self._ranges = source.ranges() if isinstance(source, union.UnionSource) else {}
        self._config, self._mesh, self._task = config, mesh, tasks.of_config(config)
        self._predict = inference.make_predict_fn(
            graphdef, mesh, models.compute_dtype(config.half_precision), multi_label=self._task.multi_label
        )

    def __call__(self, model_state) -> Validation:
        config = self._config
        batches = inference.split_batches(
            self._source,
            global_batch_size=config.eval.batch_size,
            image_size=config.image_size,
            worker_count=config.worker_count,
            task=self._task,
        )
        first: list[np.ndarray] = []

        def keep_first(batches):
            for batch in batches:
                if not first:
                    first.append(batch["image"][batch["mask"]][:NUM_SAMPLE_IMAGES, ..., 0])
                yield batch

        predictions = inference.predict_split(self._predict, model_state, keep_first(batches), self._mesh)
        scalars, images = self._scalars(predictions), {}
        for name, rows in self._ranges.items():  # predictions are in the union's order
            if len(rows):
                part = {key: value[rows.start : rows.stop] for key, value in predictions.items()}
                scalars.update({f"{key}/{name}": value for key, value in self._scalars(part).items()})
        if not self._task.multi_label:
            true, predicted = predictions["label"].astype(np.int64), predictions["probs"].argmax(axis=1)
            confusion = rates.confusion_matrix(true, predicted, predictions["probs"].shape[1])
            images["validation/confusion_matrix"] = confusion_image(confusion, self._task.class_names)
        if first and len(first[0]):
            images["validation/inputs"] = np.concatenate(list(first[0]), axis=1)
        return Validation(scalars, images)

    def _scalars(self, predictions: dict[str, np.ndarray]) -> dict[str, float]:
        """Loss, accuracy (single-label) and macro AUROC (when defined) of these predictions."""
        true, probs = predictions["label"].astype(np.int64), predictions["probs"]
        if self._task.multi_label:
            return self._multi_label_scalars(true, probs, predictions["patient_id"], predictions.get("label_mask"))
        scalars = {
            "val_loss": calibration.log_loss(true, probs),
            "val_accuracy": float((probs.argmax(axis=1) == true).mean()),
        }
        auc = ranking.macro_auc(true, probs)
        if auc is not None:
            scalars["val_macro_auc"] = auc
        return scalars

    def _multi_label_scalars(
        self, true: np.ndarray, probs: np.ndarray, patient_ids: np.ndarray, stated: np.ndarray | None
    ) -> dict[str, float]:
        """Mean binary cross-entropy (unweighted) and mean AUROC over the findings where it is defined; a
        masked task's on the stated entries (``stated``) only."""
        report = multi_label.multilabel_report(
            true, probs, self._task.class_names, patient_ids=patient_ids, n_bootstrap=0, stated=stated
        )
        losses = [row["log_loss"] for row in report["per_finding"].values() if row["log_loss"] is not None]
        scalars = {"val_loss": float(np.mean(losses))}
        if report["mean_auroc"] is not None:
            scalars["val_macro_auc"] = report["mean_auroc"]
        return scalars


@dataclasses.dataclass
class EarlyStopping:
    """Stops after ``patience`` validations without a lower validation loss (Keras' default monitor).

    Its counters are saved in each checkpoint, so a resumed run keeps counting.
    """

    patience: int
    best_loss: float | None = None
    evals_without_improvement: int = 0

    def update(self, val_loss: float) -> None:
        if self.best_loss is None or val_loss < self.best_loss:
            self.best_loss, self.evals_without_improvement = val_loss, 0
        else:
            self.evals_without_improvement += 1

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.evals_without_improvement >= self.patience

    def to_dict(self) -> dict:
        return {"best_loss": self.best_loss, "evals_without_improvement": self.evals_without_improvement}
