"""Paired comparison of two runs (or two checkpoints of one) on the same evaluated images.

Run a is the workdir evaluated, run b the one ``config.eval.compare_to`` names. Each model predicts
the images of its own dataset; the comparison needs those to be the same images with the same
labels and the same classes, and refuses otherwise, naming the difference. Same images means the same
source pixels, as each build report records them per image (``building.SOURCE_PIXELS``): two builds of one
download at different stored sizes hold the same images, so a 224 px model can be compared with a
128 px one, while a download with other pixels under the same names is refused. Per class: both
AUROCs, the difference a - b with a paired patient-bootstrap interval, and DeLong's test; for the
six-class task, McNemar's test on the argmax decisions.
"""

from __future__ import annotations

import numpy as np

from lungjax.data import metadata, tasks
from lungjax.evaluation import kinds
from lungjax.evaluation.stats import bootstrap, paired


class CompareError(ValueError):
    """Two runs cannot be compared on these images; the message names the difference."""


def check_same_pixels(names, pixels_a: dict[str, str] | None, pixels_b: dict[str, str] | None) -> str:
    """Refuses when an evaluated image of run a has other source pixels in run b's dataset, naming how many
    and which; otherwise says what was checked (the comparison section's ``source_pixels``).

    ``pixels_*``: each build report's ``building.SOURCE_PIXELS`` (image name -> digest of the decoded source
    film), None for a dataset built before lungjax recorded them: then nothing can be checked, and the
    sentence returned says so (rebuilding that dataset would record them, but would also change its
    fingerprint, which a run's checkpoints are tied to). Names only one dataset holds are ``align``'s.
    """
    names = [str(name) for name in names]
    unrecorded = [run for run, pixels in (("a", pixels_a), ("b", pixels_b)) if pixels is None]
    if unrecorded:
        return (
            f"not checked: the dataset of run {' and '.join(unrecorded)} records no digests of its source images "
            "(built by an earlier lungjax); only the image names and labels were compared"
        )
    differing = [name for name in names if name in pixels_b and pixels_a.get(name) != pixels_b[name]]
    if differing:
        raise CompareError(
            f"{len(differing)} of the {len(names)} evaluated images have other pixels in run b's dataset than in "
            f"run a's under the same name, e.g. {differing[: metadata.NAMES_SHOWN]} (digests of the decoded "
            "source films in each build_report.json); compare runs built from the same download"
        )
    return f"checked: the {len(names)} evaluated images have the same source pixels in both datasets"


def _stated(predictions: dict[str, np.ndarray]) -> np.ndarray:
    """Which labels the images state: a masked task's ``label_mask``, else all of them."""
    return predictions.get("label_mask", np.ones_like(predictions["label"], np.float32))


def align(a: dict[str, np.ndarray], b: dict[str, np.ndarray], task_a: tasks.Task, task_b: tasks.Task) -> dict:
    """``b``'s predictions in ``a``'s image order, or CompareError naming how the two splits differ."""
    if task_a.class_names != task_b.class_names:
        raise CompareError(
            f"the runs predict different classes: {list(task_a.class_names)} ({task_a.name}) vs "
            f"{list(task_b.class_names)} ({task_b.name})"
        )
    names_a, names_b = [str(n) for n in a["image_name"]], [str(n) for n in b["image_name"]]
    only_a, only_b = sorted(set(names_a) - set(names_b)), sorted(set(names_b) - set(names_a))
    if only_a or only_b:
        shown = metadata.NAMES_SHOWN
        raise CompareError(
            f"the evaluated splits hold different images: {len(only_a)} only in run a (e.g. {only_a[:shown]}), "
            f"{len(only_b)} only in run b (e.g. {only_b[:shown]}); compare runs built from the same download "
            "with the same split scheme and seed"
        )
    row_of = {name: i for i, name in enumerate(names_b)}
    order = np.array([row_of[name] for name in names_a])
    aligned = {key: value[order] for key, value in b.items()}
    differing = np.flatnonzero(
        (aligned["label"] != a["label"]).reshape(len(order), -1).any(axis=1)
        | (_stated(aligned) != _stated(a)).reshape(len(order), -1).any(axis=1)
    )
    if differing.size:
        raise CompareError(
            f"{differing.size} images carry different labels in the two runs, e.g. "
            f"{[names_a[i] for i in differing[: metadata.NAMES_SHOWN]]}"
        )
    return aligned


def comparison_report(
    a: dict[str, np.ndarray],
    b: dict[str, np.ndarray],
    task: tasks.Task,
    *,
    names: tuple[str, str],
    n_bootstrap: int,
    seed: int,
) -> dict:
    """The comparison section of ``report.json``; ``b`` must be ``align``-ed to ``a``."""
    kind = kinds.of_task(task)
    positive, scores_a = kind.columns(a["label"], a["probs"], task.class_names)
    _, scores_b = kind.columns(b["label"], b["probs"], task.class_names)
    stated = kind.stated(a, task.class_names)
    support = (positive & stated).sum(axis=0)
    mean_over = np.flatnonzero((support > 0) & (support < stated.sum(axis=0)))
    boot = (
        paired.paired_bootstrap(
            positive,
            scores_a,
            scores_b,
            mean_over,
            patient_ids=a["patient_id"],
            n_bootstrap=n_bootstrap,
            seed=seed,
            stated=stated,
        )
        if n_bootstrap
        else None
    )
    per_class = {}
    for c, name in enumerate(task.class_names):
        rows = stated[:, c]
        row = paired.delong(positive[rows, c], scores_a[rows, c], scores_b[rows, c])
        if boot is not None:
            row["difference_ci"] = bootstrap.interval(boot["difference"][:, c])
        per_class[name] = row
    defined = [per_class[task.class_names[c]] for c in mean_over]
    report = {
        "run_a": names[0],
        "run_b": names[1],
        "n_images": int(len(positive)),
        "n_patients": int(np.unique(a["patient_id"]).size),
        "mean_auroc_a": float(np.mean([r["auroc_a"] for r in defined])) if defined else None,
        "mean_auroc_b": float(np.mean([r["auroc_b"] for r in defined])) if defined else None,
        "mean_difference": float(np.mean([r["difference"] for r in defined])) if defined else None,
        "mean_over": [task.class_names[c] for c in mean_over],
        "mean_difference_ci": bootstrap.interval(boot["mean_difference"]) if boot is not None else None,
        "per_class": per_class,
        "delong_note": "DeLong's test treats images as independent; the bootstrap interval resamples patients.",
    }
    if not kind.multi_label:
        report["mcnemar"] = paired.mcnemar(
            a["probs"].argmax(axis=1) == a["label"], b["probs"].argmax(axis=1) == b["label"]
        )
    return report
