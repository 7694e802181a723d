"""What a dataset asks of a model: its classes, single- or multi-label, and how rows become labels.

The builder records the task in the dataset it writes (the build report), the config saved with every
checkpoint names it (``config.data.task``, or ``config.data.labels`` for a label set of the harmonised
vocabulary), and every later stage (loss, validation, evaluation, Grad-CAM, predict) reads the class
names and the kind of label from here.

A label-set task is *masked*: a source states some labels of an image and not others, so every batch
carries ``label_mask`` beside ``label`` and the loss and every statistic count stated entries only.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

from lungjax.data import labels
from lungjax.data.sources import labelspace


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    class_names: tuple[str, ...]
    multi_label: bool  # a 0/1 vector per image (sigmoid per class) instead of one class (softmax)
    selection: str  # which rows the dataset holds, and how they are labelled
    masked: bool = False  # multi-label with a mask: an entry counts only where the source states it

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> dict:
        """The task as the build report and ``report.json`` record it (``masked`` only when it is: NIH's
        build reports keep their bytes, and with them the datasets' fingerprints)."""
        described = dataclasses.asdict(self)
        if not self.masked:
            del described["masked"]
        return described


SIX_CLASS = Task(
    name="six_class",
    class_names=labels.CLASS_NAMES,
    multi_label=False,
    selection=(
        "rows whose Finding Labels name exactly one of Atelectasis, Cardiomegaly, Effusion, Nodule, Mass, "
        "Pneumothorax (Nodule and Mass merged), plus a seeded sample of No Finding rows; one class per image"
    ),
)
FULL14 = Task(
    name="full14",
    class_names=labels.FINDINGS14,
    multi_label=True,
    selection=("every row; Finding Labels split on '|' into NIH's 14 findings as a 0/1 vector, No Finding all zero"),
)
TASKS = MappingProxyType({task.name: task for task in (SIX_CLASS, FULL14)})
LABELS = "labels"  # the name of every label-set task; its class names are the config's labels


def get(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[name]


def label_set(labels, uncertainty: str = "ignore") -> Task:
    """The masked multi-label task over ``labels``: a named set (alone, or as the one element of
    ``config.data.labels``) or harmonised names; raises ``labelspace``'s SourceError for an unknown one."""
    if not isinstance(labels, str) and len(labels) == 1 and labels[0] in labelspace.named_sets():
        labels = labels[0]
    names = labelspace.resolve(labels if isinstance(labels, str) else tuple(labels))
    return Task(
        name=LABELS,
        class_names=names,
        multi_label=True,
        selection=(
            "every image of the source(s); each label of the harmonised vocabulary a 0/1 entry where the source "
            f"states it, masked where it does not (uncertain entries: policy {uncertainty!r})"
        ),
        masked=True,
    )


def of_config(config) -> Task:
    """The task a (saved) config trains: the label set ``data.labels`` when one is named, else its
    ``data.task``; six-class for a config saved before tasks."""
    chosen = config.data.get("labels", ())
    if chosen:
        return label_set(chosen, config.data.get("uncertainty", "ignore"))
    return get(config.data.get("task", SIX_CLASS.name))


def label_space(task: Task) -> dict[str, str] | None:
    """A label-set task's labels and their one-line definitions from the vocabulary (None for NIH's
    tasks): what reports, export manifests and serve show beside the class names."""
    if not task.masked:
        return None
    definitions = labelspace.vocabulary()
    return {name: definitions[name] for name in task.class_names}
