"""Another source as an evaluation's test set: how it is named, built beside the evaluating run, and
which labels it states. Shared by ``--mode evaluate`` with ``config.eval.source`` and ``--mode external``."""

from __future__ import annotations

import os
from pathlib import Path

import ml_collections

from lungjax.data import building, dataset, union
from lungjax.runtime import distributed


class ExternalError(ValueError):
    """An external evaluation that cannot be made as asked (one line, exit 2)."""


def test_data_config(saved_data, source: str, manual_dir: str, workdir: str | os.PathLike):
    """The data config that builds test source ``(source, manual_dir)`` for a run whose data config is
    ``saved_data`` (its stored size, label set and build settings), under ``<workdir>/tfds/<name>``."""
    config = ml_collections.ConfigDict(saved_data.to_dict())
    config.source, config.manual_dir, config.sources = source, manual_dir, ()
    config.data_dir = os.fspath(Path(workdir).absolute() / "tfds" / union.part_name(source, manual_dir))
    return config


def build(saved_data, source: str, manual_dir: str, workdir: str | os.PathLike):
    """Test source ``(source, manual_dir)`` built for a run (``test_data_config``), building what is missing."""
    if source not in dataset.BUILT_SOURCES:
        raise ExternalError(
            f"an external test source is one of {', '.join(dataset.BUILT_SOURCES)} (a source's build states labels "
            f"by name), got {source!r}"
        )
    data_config = test_data_config(saved_data, source, manual_dir, workdir)
    return distributed.process_zero_first(lambda: dataset.build(data_config, workdir))


def stated_labels(builder) -> tuple[str, ...]:
    """The labels a source's build states at all (its build report's per-label state counts)."""
    return tuple(building.read_build_report(builder)["label_states"]["test"])


def run_name(workdir: str | os.PathLike) -> str:
    return Path(workdir).absolute().name


def trained_on(saved) -> tuple[str, ...]:
    """A run's sources by the names the external report matches them with (``union.part_name``)."""
    if not saved.data.get("sources"):
        return (union.part_name(saved.data.source, saved.data.manual_dir or None),)
    return tuple(
        union.part_name(entry[0], (entry[2] if len(entry) > 2 else saved.data.manual_dir) or None)
        for entry in saved.data.sources
    )
