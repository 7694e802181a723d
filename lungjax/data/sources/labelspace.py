"""One label space for every source: the harmonised vocabulary, each source's exact mapping into it,
named label sets, and the label matrix and mask a model trains on.

The vocabulary (``vocabulary.csv``: name, one-line definition) and the mappings (``label_map.csv``:
source, the source's own label string, the harmonised names it means joined by ``|`` or blank when
the string is not used) are data files of this package, written once. Strings are compared whole,
never by substring: PadChest's ``pseudonodule`` is listed as not used and never reaches Nodule.

NIH's findings keep NIH's spelling (``Effusion``, ``Pleural_Thickening``), so the NIH set is exactly
:data:`lungjax.data.labels.FINDINGS14`; CheXpert's ``Pleural Effusion`` maps to ``Effusion``.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.resources
import io
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np

from lungjax.data import labels as nih_labels
from lungjax.data.sources import contract

# When several source labels of one image map to one harmonised label, the strongest statement wins:
# positive, then uncertain, then negative, then not stated.
_BY_STRENGTH = np.array([contract.NOT_STATED, contract.NEGATIVE, contract.UNCERTAIN, contract.POSITIVE], np.int8)

# Irvin et al. 2019, "CheXpert: A Large Chest Radiograph Dataset with Uncertainty Labels and Expert
# Comparison" (AAAI; arXiv:1901.07031), Table 2: validation AUROC of each uncertainty approach on the
# five competition findings. Of the three that are label policies (U-Ignore, U-Zeros, U-Ones; the other
# two, U-SelfTrained and U-MultiClass, are training methods), the best per finding:
#   Atelectasis      U-Ones  0.858 (U-Ignore 0.818, U-Zeros 0.811)
#   Cardiomegaly     U-Zeros 0.840 (U-Ignore 0.828, U-Ones 0.832)
#   Consolidation    U-Ignore 0.938 (U-Zeros 0.932, U-Ones 0.899)
#   Edema            U-Ones  0.941 (U-Ignore 0.934, U-Zeros 0.929)
#   Pleural Effusion U-Ones  0.934 (U-Ignore 0.928, U-Zeros 0.931)
# Other labels: ignore.
IRVIN2019 = MappingProxyType(
    {"Atelectasis": "ones", "Cardiomegaly": "zeros", "Consolidation": "ignore", "Edema": "ones", "Effusion": "ones"}
)
POLICIES = ("ignore", "zeros", "ones", "refuse")
NAMED_POLICIES = MappingProxyType({"irvin2019": IRVIN2019})


def _data_file(name: str) -> list[dict[str, str]]:
    text = importlib.resources.files("lungjax.data.sources").joinpath(name).read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def vocabulary() -> dict[str, str]:
    """Harmonised label name -> its one-line definition, in the vocabulary's order."""
    return {row["name"]: row["definition"] for row in _data_file("vocabulary.csv")}


def mapping(source: str) -> dict[str, tuple[str, ...]]:
    """A source's label strings -> the harmonised names each means (empty: listed as not used)."""
    rows = [row for row in _data_file("label_map.csv") if row["source"] == source]
    if not rows:
        raise contract.SourceError(f"no label mapping for source {source!r}")
    return {row["source_label"]: tuple(n for n in row["harmonised"].split("|") if n) for row in rows}


def source_labels(source: str) -> tuple[str, ...]:
    """The harmonised labels a source states, in the vocabulary's order."""
    used = {name for names in mapping(source).values() for name in names}
    return tuple(name for name in vocabulary() if name in used)


def harmonise(source: str, states: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The source's label states (its own names) -> states per harmonised label of the source, the
    strongest statement winning where several of its labels mean one harmonised label."""
    table = mapping(source)
    unknown = [name for name in states if name not in table]
    if unknown:
        raise contract.SourceError(f"{source}: labels {unknown} are neither mapped nor listed as not used")
    strength_of = np.zeros(_BY_STRENGTH.max() - _BY_STRENGTH.min() + 1, np.int8)  # state - NOT_STATED -> strength
    strength_of[_BY_STRENGTH - _BY_STRENGTH.min()] = np.arange(len(_BY_STRENGTH))
    strengths: dict[str, np.ndarray] = {}
    for name, values in states.items():
        strength = strength_of[np.asarray(values, np.int8) - _BY_STRENGTH.min()]
        for target in table[name]:
            strengths[target] = strength if target not in strengths else np.maximum(strengths[target], strength)
    return {name: _BY_STRENGTH[strengths[name]] for name in source_labels(source) if name in strengths}


def named_sets() -> dict[str, tuple[str, ...]]:
    """The label sets a config can name instead of listing labels."""
    shared = set(source_labels("nih")) & set(source_labels("chexpert")) & set(source_labels("padchest"))
    return {
        "nih14": nih_labels.FINDINGS14,
        "chexpert5": ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion"),
        "shared7": tuple(name for name in vocabulary() if name in shared and name != "No Finding"),
    }


def resolve(labels: str | Sequence[str]) -> tuple[str, ...]:
    """A named set or a list of harmonised names -> the names; an unknown one is refused."""
    if isinstance(labels, str):
        sets = named_sets()
        if labels not in sets:
            raise contract.SourceError(f"unknown label set {labels!r}; named sets: {', '.join(sets)}")
        return sets[labels]
    known = vocabulary()
    unknown = [name for name in labels if name not in known]
    if unknown:
        raise contract.SourceError(f"labels {unknown} are not in the harmonised vocabulary ({', '.join(known)})")
    if len(set(labels)) != len(labels):
        raise contract.SourceError(f"labels listed twice: {list(labels)}")
    return tuple(labels)


def policy_per_label(uncertainty: str | Mapping[str, str], names: Sequence[str]) -> dict[str, str]:
    """An uncertainty policy (one for all labels, a named per-label policy, or a mapping label -> policy,
    ``ignore`` for labels it leaves out) -> one of POLICIES per label."""
    if isinstance(uncertainty, str):
        if uncertainty in NAMED_POLICIES:
            uncertainty = NAMED_POLICIES[uncertainty]
        elif uncertainty in POLICIES:
            return dict.fromkeys(names, uncertainty)
        else:
            raise contract.SourceError(
                f"unknown uncertainty policy {uncertainty!r}; expected one of {POLICIES} or {tuple(NAMED_POLICIES)}"
            )
    bad = {label: p for label, p in uncertainty.items() if p not in POLICIES}
    if bad:
        raise contract.SourceError(f"unknown uncertainty policies {bad}; expected one of {POLICIES}")
    return {name: uncertainty.get(name, "ignore") for name in names}


@dataclasses.dataclass(frozen=True)
class Targets:
    """``label_states`` (rows, V) int8 over the whole vocabulary, in ``vocabulary()`` order, -> (``label``,
    ``label_mask``), both float32 (rows, L): label 1.0 / 0.0, mask 1.0 where stated; for one label set and
    uncertainty policy, resolved once (``Targets.of``), then applied to any number of batches.

    The one conversion from the four states to what a model trains on, vectorised over a batch: the input
    pipeline applies it per batch, ``label_matrix`` per table. Not stated is masked. Uncertain entries
    follow the policy: ``ignore`` masks them, ``zeros`` / ``ones`` state them as 0 / 1, ``refuse`` stops
    with the first row that has one (named by ``row_names`` when given).
    """

    names: tuple[str, ...]  # the labels, in the set's order
    columns: np.ndarray  # each label's column of label_states
    as_ones: np.ndarray  # per label: an uncertain entry is stated positive ("ones")
    as_stated: np.ndarray  # per label: an uncertain entry is stated ("zeros" or "ones")
    refused: np.ndarray  # per label: an uncertain entry stops ("refuse")
    width: int  # V, the vocabulary's size

    @classmethod
    def of(cls, labels: str | Sequence[str], *, uncertainty: str | Mapping[str, str] = "ignore") -> Targets:
        names = resolve(labels)
        vocabulary_names = tuple(vocabulary())
        policies = [policy_per_label(uncertainty, names)[name] for name in names]
        return cls(
            names=names,
            columns=np.array([vocabulary_names.index(name) for name in names], np.int64),
            as_ones=np.array([p == "ones" for p in policies], bool),
            as_stated=np.array([p in ("zeros", "ones") for p in policies], bool),
            refused=np.array([p == "refuse" for p in policies], bool),
            width=len(vocabulary_names),
        )

    def __call__(self, states: np.ndarray, row_names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        states = np.asarray(states)
        if states.ndim != 2 or states.shape[1] != self.width:
            raise contract.SourceError(
                f"label_states must be (rows, {self.width}) over the vocabulary, got shape {states.shape}"
            )
        chosen = states[:, self.columns]
        uncertain = chosen == contract.UNCERTAIN
        if (uncertain & self.refused).any():
            row, column = (int(i) for i in np.argwhere(uncertain & self.refused)[0])
            where = f"row {row}" if row_names is None else f"row {row} ({row_names[row]})"
            raise contract.SourceError(
                f"{where} is uncertain for {self.names[column]!r}, which the uncertainty policy 'refuse' does not allow"
            )
        label = (chosen == contract.POSITIVE) | (uncertain & self.as_ones)
        mask = (chosen == contract.POSITIVE) | (chosen == contract.NEGATIVE) | (uncertain & self.as_stated)
        return label.astype(np.float32), mask.astype(np.float32)


def targets(
    states: np.ndarray,
    labels: str | Sequence[str],
    *,
    uncertainty: str | Mapping[str, str] = "ignore",
    row_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``Targets.of(labels, uncertainty=...)(states, row_names)``: (label, label_mask) for one array."""
    return Targets.of(labels, uncertainty=uncertainty)(states, row_names)


def label_matrix(
    table: contract.SourceTable, labels: str | Sequence[str], *, uncertainty: str | Mapping[str, str] = "ignore"
) -> tuple[np.ndarray, np.ndarray]:
    """(values, mask), both (rows, labels): values 1.0 / 0.0, mask True where the entry is stated.

    ``targets`` on the table's states; a label outside the source's vocabulary is not stated.
    """
    vocabulary_names = tuple(vocabulary())
    states = np.full((len(table.frame), len(vocabulary_names)), contract.NOT_STATED, np.int8)
    for k, name in enumerate(vocabulary_names):
        if name in table.labels:
            states[:, k] = table.frame[name].to_numpy()
    try:
        values, mask = targets(states, labels, uncertainty=uncertainty, row_names=table.frame["path"].tolist())
    except contract.SourceError as err:
        raise contract.SourceError(f"{table.source}: {err}") from None
    return values, mask.astype(bool)


def policy_counts(
    state_counts: Mapping[str, Mapping[str, int]],
    labels: str | Sequence[str],
    *,
    uncertainty: str | Mapping[str, str] = "ignore",
) -> tuple[np.ndarray, np.ndarray]:
    """(positives, stated), both int64 (L,): how many images state each label, and how many of those as
    positive, under the policy, from counts of the four states per label (``state_counts[label][state
    name]``, the names of ``contract.STATE_NAMES``; a label absent is stated nowhere). What ``targets``
    would give summed over the images, for the class weights of a masked task."""
    names = resolve(labels)
    states = tuple(contract.STATE_NAMES)
    rows = np.repeat(np.array(states, np.int8)[:, None], len(vocabulary()), axis=1)  # one row per state
    label, mask = targets(rows, names, uncertainty=uncertainty)
    counts = np.array(
        [[state_counts.get(name, {}).get(contract.STATE_NAMES[state], 0) for name in names] for state in states],
        np.int64,
    )
    return (counts * label * mask).sum(axis=0).astype(np.int64), (counts * mask).sum(axis=0).astype(np.int64)
