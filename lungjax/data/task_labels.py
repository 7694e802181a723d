"""What a task trains on and is scored against, from the labels a record stores.

A record stores one of two things: NIH's builds a ``label`` (a class index, or the 0/1 vector over
NIH's 14 findings), the sources' builds ``label_states`` (the four states over the whole harmonised
vocabulary). A six-class or full14 task reads ``label`` as it is. A label-set task (masked) reads
``label_states`` through its label set and uncertainty policy (``labelspace.Targets``), or an NIH
build's vector through NIH's mapping into the vocabulary (every NIH finding and No Finding stated),
so a label set trains on either kind of build.
"""

from __future__ import annotations

import numpy as np

from lungjax.data import labels as nih_labels
from lungjax.data import nih, tasks
from lungjax.data.sources import contract, labelspace

STATES = "label_states"  # the sources' builds
LABEL = "label"  # NIH's builds
# Evaluation scores what a source states for certain: an uncertain entry is masked whatever policy trained.
EVALUATION_UNCERTAINTY = "ignore"


class TaskLabels:
    """A record's stored labels -> ``{"label": ...}`` and, for a masked task, ``"label_mask"`` (uint8
    (L,), 1 where the entry counts). Picklable: grain's worker processes each hold a copy.

    ``stored``: the feature this record kind stores (``STATES`` or ``LABEL``), what ``__call__`` takes.
    """

    def __init__(self, task: tasks.Task, specs: dict, uncertainty: str = "ignore"):
        self.task = task
        self.stored = STATES if STATES in specs else LABEL
        if self.stored == STATES and not task.masked:
            raise contract.SourceError(
                f"this dataset stores label states over the harmonised vocabulary (a source's build): task "
                f"{task.name!r} cannot read it; name the labels to train with config.data.labels (e.g. chexpert5)"
            )
        if self.stored == LABEL and task.masked and specs[LABEL][1] != (len(nih_labels.FINDINGS14),):
            raise contract.SourceError(
                "a label set reads NIH's builds of the 14 findings only (data.task='full14'), not the six-class one"
            )
        self.targets = labelspace.Targets.of(task.class_names, uncertainty=uncertainty) if task.masked else None
        if self.stored == LABEL and task.masked:
            self.nih_positive, self.nih_stated = _nih_into_vocabulary()

    @property
    def label_shape(self) -> tuple[int, ...]:
        return (self.task.num_classes,) if self.task.multi_label else ()

    def __call__(self, stored) -> dict[str, np.ndarray | int]:
        if not self.task.masked:
            return {"label": np.asarray(stored, np.uint8) if self.task.multi_label else int(np.ravel(stored)[0])}
        states = np.asarray(stored, np.int8) if self.stored == STATES else self.nih_states(stored)
        label, mask = self.targets(states[None])
        return {"label": label[0].astype(np.uint8), "label_mask": mask[0].astype(np.uint8)}

    def boxes(self, bbox: np.ndarray) -> np.ndarray:
        """An NIH full14 record's boxes (14, 4), one per finding in NIH's order, as the task's: a label
        set's labels in its own order, each NIH finding's box under its name and ``NO_BOX`` for the
        others (a box belongs to the finding it was drawn for, never to a label it maps into)."""
        if not self.task.masked:
            return bbox
        out = np.tile(np.asarray(nih.NO_BOX, bbox.dtype), (self.task.num_classes, 1))
        for k, name in enumerate(self.task.class_names):
            if name in nih_labels.FINDINGS14:
                out[k] = bbox[nih_labels.FINDINGS14.index(name)]
        return out

    def nih_states(self, findings) -> np.ndarray:
        """An NIH build's 0/1 vector over the 14 findings -> states over the vocabulary."""
        findings = np.asarray(findings, bool)
        present = np.append(findings, not findings.any())  # the 14 findings, then No Finding
        positive = (present[:, None] & self.nih_positive).any(axis=0)
        states = np.full(self.nih_stated.shape, contract.NOT_STATED, np.int8)
        states[self.nih_stated] = np.where(positive[self.nih_stated], contract.POSITIVE, contract.NEGATIVE)
        return states


def _nih_into_vocabulary() -> tuple[np.ndarray, np.ndarray]:
    """(positive (15, V): NIH label j positive alone makes vocabulary label v positive; stated (V,)),
    from ``labelspace.harmonise`` on one row per NIH label (the 14 findings, then No Finding): an NIH
    record states each of them, positive or negative, so these two arrays carry the whole mapping."""
    names = (*nih_labels.FINDINGS14, nih_labels.NO_FINDING)
    basis = np.eye(len(names), dtype=np.int8)  # 1 = POSITIVE, 0 = NEGATIVE
    harmonised = labelspace.harmonise("nih", {name: basis[:, j] for j, name in enumerate(names)})
    vocabulary = tuple(labelspace.vocabulary())
    positive = np.zeros((len(names), len(vocabulary)), bool)
    stated = np.zeros(len(vocabulary), bool)
    for name, column in harmonised.items():
        positive[:, vocabulary.index(name)] = column == contract.POSITIVE
        stated[vocabulary.index(name)] = True
    return positive, stated
