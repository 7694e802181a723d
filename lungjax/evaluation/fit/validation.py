"""The validation fit: what is chosen on the validation split and then held fixed on every other split.
The temperatures and each operating point's per-class thresholds are saved beside each evaluation as
``validation_fit.json``, which predict and the export read; the report's Youden thresholds are chosen
here too, for its ``at_thresholds`` section."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from lungjax.data import tasks
from lungjax.evaluation import kinds
from lungjax.evaluation.fit import operating_points, temperature

VALIDATION_FIT_FILE = "validation_fit.json"  # what was chosen on validation: temperatures, thresholds


def youden_thresholds(validation: dict[str, np.ndarray], task: tasks.Task) -> tuple[dict[str, float] | None, dict]:
    """Per-class Youden thresholds on the validation predictions and what they reach there, or None
    and the reason. For the 14 findings a finding without validation positives (or negatives) has
    no threshold and the others keep theirs."""
    kind = kinds.of_task(task)
    try:
        thresholds = kind.youden_thresholds(validation, task.class_names)
    except ValueError as err:
        return None, {"note": f"no thresholds: {err} on the validation split"}
    on_validation = kind.youden_j(validation, thresholds, task.class_names)
    record = {"chosen_on": "validation", "on_validation": on_validation}
    undefined = [name for name, t in thresholds.items() if t is None]
    if undefined:
        record["undefined"] = {name: "no positive or no negative validation images" for name in undefined}
    return thresholds, record


def fit_on_validation(config, validation: dict[str, np.ndarray], task: tasks.Task, step: int) -> dict:
    """The temperatures and each operating point's per-class thresholds, chosen on ``validation``."""
    kind = kinds.of_task(task)
    positive, scores = kind.columns(validation["label"], validation["probs"], task.class_names)
    stated = kind.stated(validation, task.class_names)
    rules = operating_points.parse_all(config.eval.operating_points)
    chosen = operating_points.choose(rules, positive, scores, task.class_names, stated)
    return {
        "checkpoint_step": int(step),
        "chosen_on": "validation",
        "tta_crops": config.eval.tta_crops,
        "task": task.name,
        "class_names": list(task.class_names),
        "multi_label": task.multi_label,
        "temperature": temperature.fit(
            validation["label"], validation["probs"], task.class_names, task.multi_label, stated
        ),
        "operating_points": chosen,
        "thresholds_apply_to": "the uncalibrated probabilities; a class is called when its probability >= threshold",
    }


def load_validation_fit(workdir: str | os.PathLike, step: int, tta_crops: int) -> dict | None:
    """The ``validation_fit.json`` that an evaluation of checkpoint ``step`` with ``tta_crops`` wrote, or None."""
    for path in sorted(Path(workdir, "eval").glob(f"*/{VALIDATION_FIT_FILE}")):
        fit = json.loads(path.read_text())
        if fit["checkpoint_step"] == step and fit["tta_crops"] == tta_crops:
            return fit
    return None
