"""Training on several sources as one (``config.data.sources``): each source built by its own data
config, their splits concatenated into one random-access source that the loaders read like a
single split.

An entry of ``data.sources`` is ``(source, weight)``, or ``(source, weight, manual_dir)`` to read that
part from a folder (or phantom tree, ``phantom[:site]``) of its own instead of ``data.manual_dir``: two
hospitals' exports, or two phantom sites, are two parts of one source. Each part has a name
(:func:`part_name`) that names it everywhere: its build folder ``<data_dir>/<part name>/`` (two parts
never meet in one dataset folder), the dataset's name and fingerprint, the mix, and each part's
validation figures. Splits come from each part's own build, so a patient never crosses splits within
a source. With ``data.sources`` empty there is one source, ``data.source``, built where it always
was, and its split is read as it is.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import ml_collections
import numpy as np

from lungjax.data import dataset, records, task_labels
from lungjax.data.sources import labelspace


class Part(NamedTuple):
    """One entry of ``data.sources``: its name, source, mixing weight and the manual_dir it reads."""

    name: str
    source: str
    weight: float
    manual_dir: str  # the entry's own, else data.manual_dir


def part_name(source: str, manual_dir: str | None = None) -> str:
    """The name of a union's part: the source alone when the entry names no manual_dir of its own;
    ``<source>-<site>`` for ``phantom:<site>``, ``<source>-phantom`` for ``phantom`` and
    ``<source>-<folder's name>`` for a folder."""
    if manual_dir is None:
        return source
    if dataset.is_phantom_tree(manual_dir):
        return f"{source}-{dataset.phantom_tree_site(manual_dir) or dataset.PHANTOM_TREE}"
    return f"{source}-{os.path.basename(os.path.normpath(os.path.abspath(manual_dir)))}"


def parts(data_config) -> tuple[Part, ...]:
    """The parts of ``data.sources``, in order; one part, ``data.source`` (weight 1), without a union."""
    if not data_config.sources:
        return (Part(data_config.source, data_config.source, 1.0, data_config.manual_dir),)
    return tuple(
        Part(
            part_name(source, own[0] if own else None),
            source,
            float(weight),
            own[0] if own else data_config.manual_dir,
        )
        for source, weight, *own in data_config.sources
    )


def names_and_weights(data_config) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The union's part names and mixing weights; empty weights for a single source (a union of one part
    is one source read from its own folder: nothing to mix)."""
    found = parts(data_config)
    weights = tuple(part.weight for part in found) if len(found) > 1 else ()
    return tuple(part.name for part in found), weights


def source_config(data_config, part: Part, workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The data config that builds ``part`` of a union: the union's own, naming one source and its
    manual_dir, with the dataset under ``<data_dir>/<part name>``."""
    config = ml_collections.ConfigDict(data_config.to_dict())
    config.source, config.sources, config.manual_dir = part.source, (), part.manual_dir
    config.data_dir = os.fspath(dataset.data_dir(data_config, workdir) / part.name)
    return config


def _each_part(data_config, workdir: str | os.PathLike, open_part: Callable) -> dict[str, object]:
    """Part name -> ``open_part(its data config, workdir)``, in the config's order: ``data.source`` where
    it always was without a union, else each part under ``<data_dir>/<part name>`` (``source_config``)."""
    if not data_config.sources:
        return {data_config.source: open_part(data_config, workdir)}
    return {part.name: open_part(source_config(data_config, part, workdir), workdir) for part in parts(data_config)}


def build(data_config, workdir: str | os.PathLike) -> dict[str, object]:
    """Part name -> its built dataset, in the config's order; generates and builds what is missing."""
    return _each_part(data_config, workdir, dataset.build)


def built(data_config, workdir: str | os.PathLike) -> dict[str, object] | None:
    """Part name -> its built dataset, if every part is built, else None; never builds (``dataset.built``
    of each)."""
    builders = _each_part(data_config, workdir, dataset.built)
    return None if any(builder is None for builder in builders.values()) else builders


def open_built(data_config, workdir: str | os.PathLike) -> dict[str, object]:
    """Part name -> its built dataset, never building (``dataset.open_built`` of each)."""
    return _each_part(data_config, workdir, dataset.open_built)


def split(builders: Mapping[str, object], split_name: str) -> records.ExampleSource | UnionSource:
    """A split of every source: one source's as it is, several concatenated in ``builders``' order."""
    parts = {name: records.data_source(builder, split_name) for name, builder in builders.items()}
    return next(iter(parts.values())) if len(parts) == 1 else UnionSource(parts)


def dataset_name(builders: Mapping[str, object]) -> str:
    """The built dataset's config name; for a union each part's, after the part's name."""
    if len(builders) == 1:
        return next(iter(builders.values())).builder_config.name
    return " + ".join(f"{name}:{builder.builder_config.name}" for name, builder in builders.items())


def mixed_class_counts(reports: Mapping[str, dict], weights: Sequence[float]) -> tuple[list[int], int]:
    """(training images per class, training images) that class weights are computed from.

    One source: its build report's counts. A union: the class frequencies of the mix (each source's
    frequencies weighted by its share of the draws), over as many images as the sources hold
    together, rounded to whole images.
    """
    counts = [np.asarray(r["class_counts"]["train"], np.float64) for r in reports.values()]
    images = [r["images"]["train"] for r in reports.values()]
    if not weights:
        return [int(c) for c in counts[0]], images[0]
    shares = np.asarray(weights, np.float64) / np.sum(weights)
    total = sum(images)
    frequency = sum(share * c / n for share, c, n in zip(shares, counts, images, strict=True))
    return [int(c) for c in np.round(frequency * total)], total


def stated_counts(builders: Mapping[str, object], reports: Mapping[str, dict], task, uncertainty: str) -> dict:
    """Part name -> (positives, stated), both int64 (L,), of its training images for a masked task under
    the uncertainty policy: from a source build's report (``labelspace.policy_counts`` of its
    ``label_states``), or for NIH's builds by reading each record's labels through the task
    (``task_labels.TaskLabels``: a harmonised label such as Lung Lesion is several NIH findings at once,
    which per-finding counts cannot give)."""
    counts = {}
    for name, builder in builders.items():
        report = reports[name]
        if "label_states" in report:
            counts[name] = labelspace.policy_counts(
                report["label_states"]["train"], task.class_names, uncertainty=uncertainty
            )
            continue
        source = records.data_source(builder, "train")
        labels = task_labels.TaskLabels(task, source.specs, uncertainty)
        positives, stated = np.zeros(task.num_classes, np.int64), np.zeros(task.num_classes, np.int64)
        for index in range(len(source)):
            read = labels(records.image_and_feature(source.records[index], labels.stored)[1])
            positives += read["label"] * read["label_mask"]
            stated += read["label_mask"]
        counts[name] = positives, stated
    return counts


def mixed_stated_counts(
    counts: Mapping[str, tuple[np.ndarray, np.ndarray]], reports: Mapping[str, dict], weights: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """(positives, stated) per label (L,) that a masked task's class weights are computed from: each
    part's (``stated_counts``), mixed as :func:`mixed_class_counts` mixes class counts."""
    images = [reports[name]["images"]["train"] for name in counts]
    if not weights:
        return next(iter(counts.values()))
    shares = np.asarray(weights, np.float64) / np.sum(weights)
    total = sum(images)
    parts = list(counts.values())
    positives = sum(share * pos / n for share, (pos, _), n in zip(shares, parts, images, strict=True))
    stated = sum(share * st / n for share, (_, st), n in zip(shares, parts, images, strict=True))
    return np.round(positives * total).astype(np.int64), np.round(stated * total).astype(np.int64)


class UnionSource(Sequence):
    """Several sources' splits as one random-access source: source k's records at ``offsets[k]`` ..
    ``offsets[k] + sizes[k] - 1``. ``records`` is what the loaders hand to grain (picklable);
    ``union[i]`` is example i parsed, with its ``source`` name."""

    def __init__(self, parts: Mapping[str, records.ExampleSource]):
        first_name, first = next(iter(parts.items()))
        for name, part in parts.items():
            if part.specs != first.specs:
                raise ValueError(
                    f"sources {first_name!r} and {name!r} store different features ({sorted(first.specs)} vs "
                    f"{sorted(part.specs)}): a union needs sources of one label space"
                )
        self.names = tuple(parts)
        self.sizes = tuple(len(part) for part in parts.values())
        self.offsets = tuple(int(o) for o in np.concatenate([[0], np.cumsum(self.sizes)[:-1]]))
        self.records = ConcatenatedRecords([part.records for part in parts.values()])
        self.specs = first.specs

    def __len__(self) -> int:
        return sum(self.sizes)

    def ranges(self) -> dict[str, range]:
        """Source name -> its records' indices in the union (and rows of predictions over it, in order)."""
        return {name: range(o, o + n) for name, o, n in zip(self.names, self.offsets, self.sizes, strict=True)}

    def __getitem__(self, index: int) -> dict:
        example = records.parse_example(self.records[index], self.specs)
        example["source"] = self.names[self.records.part_of(index)]
        return example

    def __repr__(self) -> str:
        return f"UnionSource({', '.join(self.names)})"


class ConcatenatedRecords(Sequence):
    """Random-access sequences of serialized records, one after another."""

    def __init__(self, parts: Sequence[Sequence[bytes]]):
        self.parts = list(parts)
        self._ends = np.cumsum([len(part) for part in self.parts])

    def __len__(self) -> int:
        return int(self._ends[-1])

    def part_of(self, index: int) -> int:
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} of {len(self)}")
        return int(np.searchsorted(self._ends, index, side="right"))

    def __getitem__(self, index: int) -> bytes:
        part = self.part_of(index)
        start = int(self._ends[part - 1]) if part else 0
        return self.parts[part][index - start]

    def __repr__(self) -> str:
        return f"ConcatenatedRecords({', '.join(repr(part) for part in self.parts)})"
