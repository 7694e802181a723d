"""What a dataset asks of a model: its classes, single- or multi-label, and how rows become labels.

The builder records the task in the dataset it writes (the build report), the config saved with every
checkpoint names it (``config.data.task``), and every later stage (loss, validation, evaluation,
Grad-CAM, predict) reads the class names and the kind of label from here.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

from lungjax.data import labels


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    class_names: tuple[str, ...]
    multi_label: bool  # a 0/1 vector per image (sigmoid per class) instead of one class (softmax)
    selection: str  # which rows of Data_Entry_2017.csv the dataset holds, and how they are labelled

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> dict:
        """The task as the build report records it."""
        return dataclasses.asdict(self)


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


def get(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[name]


def of_config(config) -> Task:
    """The task a (saved) config trains: its ``data.task``; six-class for a config saved before tasks."""
    return get(config.data.get("task", SIX_CLASS.name))
