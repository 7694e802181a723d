"""The validation fit: what is chosen on the validation split and then held fixed on every other split.
The temperatures and each operating point's per-class thresholds are saved beside each evaluation as
``validation_fit.json``, which predict and the export read; the report's Youden thresholds are chosen
here too, for its ``at_thresholds`` section.

A record names what it was fitted for (``FittedFor``): the checkpoint's step, the digest of its
weights (``runtime.checkpoint.params_sha256``) and the fingerprint of the dataset whose validation
split chose it. A reader uses a record only when all three match what it holds (``find``), so after a
retrain or a rebuild in the same workdir one model's thresholds are never applied to another's
probabilities; a record without the digest (written before lungjax recorded it) is passed over with
a note, and a damaged one is named in one line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np

from lungjax.data import tasks
from lungjax.evaluation import kinds
from lungjax.evaluation.fit import operating_points, temperature

VALIDATION_FIT_FILE = "validation_fit.json"  # what was chosen on validation: temperatures, thresholds
DIGEST_SHOWN = 12  # hex digits of a digest quoted in a message


class ValidationFitError(ValueError):
    """A ``validation_fit.json`` that must not be used: damaged, or fitted for other weights or another
    dataset than the reader's. ``reason`` names the file and what is wrong; the message adds what to do."""

    def __init__(self, reason: str, advice: str):
        super().__init__(f"{reason}; {advice}")
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class FittedFor:
    """The checkpoint and dataset a fit belongs to."""

    step: int
    params_sha256: str  # runtime.checkpoint.params_sha256 of the restored weights
    dataset_fingerprint: str  # runtime.run_info.dataset_fingerprint of the dataset the fit was chosen on

    def record(self) -> dict:
        return {
            "checkpoint_step": int(self.step),
            "checkpoint_params_sha256": self.params_sha256,
            "dataset_fingerprint": self.dataset_fingerprint,
        }


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


def fit_on_validation(config, validation: dict[str, np.ndarray], task: tasks.Task, fitted_for: FittedFor) -> dict:
    """The temperatures and each operating point's per-class thresholds, chosen on ``validation``
    (the predictions of the checkpoint and dataset ``fitted_for`` names), on stated entries only."""
    kind = kinds.of_task(task)
    positive, scores = kind.columns(validation["label"], validation["probs"], task.class_names)
    stated = kind.stated(validation, task.class_names)
    rules = operating_points.parse_all(config.eval.operating_points)
    chosen = operating_points.choose(rules, positive, scores, task.class_names, stated)
    return {
        **fitted_for.record(),
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


def find(
    workdir: str | os.PathLike, fitted_for: FittedFor, task: tasks.Task, tta_crops: int
) -> tuple[dict | None, list[str]]:
    """The record an evaluation of ``workdir`` wrote for ``fitted_for`` with ``tta_crops``, or None;
    and a note (one line) for each record of this step passed over as written without the digest.

    When none matches, raises ValidationFitError for a record of this step and these crops fitted for
    other weights or another dataset (a retrain or a rebuild since), or else for a damaged record: a
    damaged record of another evaluation does not hide a good one."""
    match, notes, stale, damaged = None, [], [], []
    for path in sorted(Path(workdir, "eval").glob(f"*/{VALIDATION_FIT_FILE}")):
        try:
            fit = read(path)
        except ValidationFitError as err:  # perhaps another step's: it matters only when nothing else matches
            damaged.append(err)
            continue
        if fit["checkpoint_step"] != fitted_for.step or fit["tta_crops"] != tta_crops:
            continue
        if "checkpoint_params_sha256" not in fit:
            notes.append(
                f"{path} does not name the weights it was fitted for (an older lungjax wrote it), so it may "
                "belong to another model at this step"
            )
            continue
        reason = _mismatch(fit, fitted_for, task)
        if reason is not None:
            stale.append(f"{path} was fitted for {reason}")
        elif match is None:
            match = fit
    if match is None and stale:
        raise ValidationFitError(
            f"{stale[0]}: its thresholds and temperatures are not this model's",
            "run --mode evaluate again to refit them",
        )
    if match is None and damaged:
        raise damaged[0]
    return match, notes


def read(path: Path) -> dict:
    """A ``validation_fit.json`` whose every field a reader uses has its type and range, or a
    ValidationFitError naming the file (truncated, hand-edited, another program's)."""
    try:
        fit = json.loads(path.read_bytes())
    except OSError as err:
        raise ValidationFitError(
            f"{path}: cannot read ({err.strerror})", "check its permissions, or remove it"
        ) from err
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        problem = f"not valid JSON ({err})"
    else:
        problem = _problem(fit)
    if problem is not None:
        raise ValidationFitError(f"{path}: damaged, {problem}", "run --mode evaluate again to rewrite it, or remove it")
    return fit


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _problem(fit) -> str | None:
    """What is wrong with a parsed record, or None."""
    if not isinstance(fit, dict):
        return f"a JSON {type(fit).__name__} where an object is due"
    expected = {
        "checkpoint_step": _is_int,
        "tta_crops": _is_int,
        "chosen_on": lambda v: isinstance(v, str),
        "class_names": lambda v: isinstance(v, list) and v and all(isinstance(n, str) for n in v),
        "multi_label": lambda v: isinstance(v, bool),
        "temperature": lambda v: isinstance(v, dict) and isinstance(v.get("temperatures"), list),
        "operating_points": lambda v: isinstance(v, dict) and all(isinstance(c, dict) for c in v.values()),
        "thresholds_apply_to": lambda v: isinstance(v, str),
    }
    if "checkpoint_params_sha256" in fit:  # absent from records written before it was recorded
        expected |= {
            "checkpoint_params_sha256": lambda v: isinstance(v, str),
            "dataset_fingerprint": lambda v: isinstance(v, str),
        }
    for key, valid in expected.items():
        if key not in fit:
            return f"no {key!r}"
        if not valid(fit[key]):
            return f"{key!r} is {json.dumps(fit[key])[:80]}"
    names, temperatures = fit["class_names"], fit["temperature"]["temperatures"]
    if len(temperatures) != (len(names) if fit["multi_label"] else 1) or not all(
        _is_number(t) and temperature.MIN_TEMPERATURE <= t <= temperature.MAX_TEMPERATURE for t in temperatures
    ):
        return f"temperatures {json.dumps(temperatures)[:80]} for {len(names)} classes"
    for rule, per_class in fit["operating_points"].items():
        if list(per_class) != names:
            return f"operating point {rule!r} has classes {list(per_class)}, not {names}"
        for name, row in per_class.items():
            if not isinstance(row, dict) or "threshold" not in row:
                return f"operating point {rule!r}: no threshold for {name!r}"
            threshold = row["threshold"]
            if threshold is not None and not (_is_number(threshold) and 0.0 <= threshold <= 1.0):
                return f"operating point {rule!r}: threshold of {name!r} is {json.dumps(threshold)}"
    return None


def _short(digest: str) -> str:
    return digest[:DIGEST_SHOWN]


def _mismatch(fit: dict, fitted_for: FittedFor, task: tasks.Task) -> str | None:
    """Why a valid record of the reader's step is not the reader's, or None."""
    if fit["checkpoint_params_sha256"] != fitted_for.params_sha256:
        return (
            f"other weights at checkpoint step {fitted_for.step} (sha256 {_short(fit['checkpoint_params_sha256'])}, "
            f"this checkpoint's {_short(fitted_for.params_sha256)}: retrained since it was evaluated)"
        )
    if fit["dataset_fingerprint"] != fitted_for.dataset_fingerprint:
        return (
            f"another dataset (fingerprint {_short(fit['dataset_fingerprint'])}, the dataset on disk has "
            f"{_short(fitted_for.dataset_fingerprint)}: rebuilt since the evaluation)"
        )
    if fit["class_names"] != list(task.class_names) or fit["multi_label"] != task.multi_label:
        return f"the classes {fit['class_names']}, this checkpoint's are {list(task.class_names)}"
    return None
