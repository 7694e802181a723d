"""What every lungjax dataset builder shares: decoding in a worker pool, TFDS's layout written by the
TF-free shard writer, the build report, the build lock, the dataset's identity and atomic builds.

NIH's builder (:mod:`lungjax.data.nih`) and the sources' builder (:mod:`lungjax.data.source_builder`)
are both a :class:`ShardedBuilder` built through :func:`build_once`:

* a build is planned (every check that can fail without pixels) before TFDS writes anything;
* builds of one dataset into one ``data_dir`` serialise on a lock file beside it, and a second build
  waits, then finds the first one's dataset;
* what defines the dataset's content besides its config (``built_from``: digests of the metadata the
  build read, the skip policy, ...) is recorded in the build report, and a built dataset is served only
  to a build that names the same;
* any failure leaves ``data_dir`` as it was: what the build created is removed.
"""

from __future__ import annotations

import abc
import collections
import concurrent.futures
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import tensorflow_datasets as tfds
from absl import logging

from lungjax import locking, trees
from lungjax.data import metadata, shards, workers

BUILD_REPORT = "build_report.json"
SOURCE_PIXELS = "source_pixels"  # the build report's key: image name -> images.pixel_digest of its source
TASKS_IN_FLIGHT_PER_WORKER = 8  # enough to keep workers busy, few enough to bound memory


class DatasetMismatchError(metadata.MetadataError):
    """The dataset in ``data_dir`` was built from other files (or with another policy) than the config names."""


class DatasetNotBuiltError(metadata.MetadataError):
    """A dataset that must already be built is not; the message says how to build it."""


def ordered_map(fn: Callable, tasks: Sequence, pool: concurrent.futures.Executor | None, window: int) -> Iterator:
    """``map(fn, tasks)`` in order, on ``pool`` (or in this process when None).

    At most ``window`` tasks are submitted ahead of the consumer: ``Executor.map`` would submit
    all 112,120 at once and keep every finished result (an encoded image) in memory until the
    slower writer asks for it.
    """
    if pool is None:
        yield from map(fn, tasks)
        return
    pending = collections.deque(pool.submit(fn, task) for task in tasks[:window])
    try:
        for task in tasks[window:]:
            result = pending.popleft().result()
            pending.append(pool.submit(fn, task))
            yield result
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class ShardedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder whose images are decoded in a worker pool (``self.decode``) and whose splits are written
    by :mod:`lungjax.data.shards`; its build report lands atomically with the data.

    Subclasses yield examples from ``_split_generators`` and say what the report holds (``build_report``).
    How to build (worker count, skipping bad files) is an argument of the builder, not of its config:
    TFDS refuses a config named like a registered one but differing in any field.
    """

    def __init__(
        self, *, file_format: str = "array_record", num_workers: int = 0, skip_bad_images: bool = False, **kwargs
    ):
        """``num_workers``: decoding processes (0: one per CPU core; 1: in this process, no pool to
        start). ``skip_bad_images``: build without missing or unreadable images and list them in
        the build report, instead of stopping."""
        config = kwargs.pop("config", None)
        if isinstance(config, tfds.core.BuilderConfig):  # TFDS wants the registered instance, not an equal one
            config = next((c for c in self.BUILDER_CONFIGS if c == config), config)
        super().__init__(file_format=file_format, config=config, **kwargs)
        self.num_workers, self.skip_bad_images = num_workers, skip_bad_images
        self.built_from: dict | None = None  # what build_once checked this build against
        self._pool: concurrent.futures.Executor | None = None
        # image name -> images.pixel_digest of its decoded source film, for the builders that record it
        self.source_pixels: dict[str, str] = {}

    def workers(self) -> int:
        return self.num_workers or cpu_count()

    def decode(self, fn: Callable, jobs: Sequence) -> Iterator:
        """``fn`` over ``jobs`` in order, on the build's worker pool."""
        return ordered_map(fn, jobs, self._pool, window=TASKS_IN_FLIGHT_PER_WORKER * self.workers())

    @abc.abstractmethod
    def build_report(self, manual_dir: Path) -> dict:
        """The build report's content (``built_from`` is added to it)."""

    def _generate_splits(self, dl_manager, download_config) -> list[tfds.core.SplitInfo]:
        """Writes each split with :mod:`lungjax.data.shards` (TFDS's own writer needs TensorFlow for a
        split over 1 GB): TFDS's layout and records, the same bytes on every rebuild."""
        return [
            shards.write_split(
                name,
                examples,
                features=self.info.features,
                filename_template=self._get_filename_template(split_name=name),
                shard_config=download_config.get_shard_config(),
                example_writer=self._example_writer(),
            )
            for name, examples in self._split_generators(dl_manager).items()
        ]

    def _download_and_prepare(self, dl_manager, download_config):
        """Builds with one worker pool for all splits, then writes the report into TFDS's temporary
        directory, so it lands atomically with the data."""
        with workers.process_pool(self.workers()) as self._pool:
            super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
        report = {**self.build_report(Path(dl_manager.manual_dir)), "built_from": self.built_from}
        if self.source_pixels:  # what a comparison of two runs checks: the same pixels under each name
            report[SOURCE_PIXELS] = dict(sorted(self.source_pixels.items()))
        (Path(self.data_dir) / BUILD_REPORT).write_text(json.dumps(report, indent=2))


def read_build_report(builder: tfds.core.DatasetBuilder) -> dict:
    """The ``build_report.json`` the build wrote beside the dataset."""
    return json.loads((Path(builder.data_dir) / BUILD_REPORT).read_text())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_built_from(builder: tfds.core.DatasetBuilder, wanted: dict) -> None:
    """Refuses a built dataset that was made from other files or another policy than ``wanted``."""
    recorded = read_build_report(builder).get("built_from")
    if recorded == wanted:
        return
    if recorded is None:
        difference = "it records no source (built by an earlier lungjax)"
    else:
        before, now = trees.flatten(recorded), trees.flatten(wanted)
        difference = "; ".join(
            f"{key}: built from {before.get(key)!r}, now {now.get(key)!r}"
            for key in sorted(before.keys() | now.keys())
            if before.get(key) != now.get(key)
        )
    raise DatasetMismatchError(
        f"the dataset in {builder.data_dir} was not built from what the config names ({difference}); "
        "use another config.data.data_dir, or delete that folder to rebuild it"
    )


def build_lock_path(data_dir: Path, builder_name: str, config_name: str) -> Path:
    """The lock file that builds of one dataset into ``data_dir`` hold."""
    return data_dir / f".{builder_name}-{config_name}.lock"


def _say_waiting(held: locking.LockHeld) -> None:
    logging.warning(
        "another build of this dataset is running (%s): waiting for it to finish; if none runs there, delete %s",
        locking.owner_text(held.owner),
        held.path,
    )


def _remove_dead_builds(builder: tfds.core.DatasetBuilder) -> None:
    """TFDS's ``incomplete.*`` folders of this dataset: builds of it hold the build lock, so under it
    every such folder is what a killed build left."""
    for folder in Path(builder.data_path).parent.glob("incomplete.*"):
        logging.warning("removing %s, left by a build that was stopped", folder)
        shutil.rmtree(folder, ignore_errors=True)


def _created_by_build(data_dir: Path, dataset_path: Path) -> Path:
    """The outermost folder on the way from ``data_dir`` to ``dataset_path`` that does not exist yet."""
    created = dataset_path
    while created.parent != data_dir and not created.parent.exists():
        created = created.parent
    return created


Builder = TypeVar("Builder", bound=ShardedBuilder)


def build_once(
    make_builder: Callable[[], Builder],
    manual_dir: str | os.PathLike,
    data_dir: Path,
    wanted: dict,
    plan: Callable[[Builder], object],
) -> Builder:
    """Builds the dataset once (no-op when already built from ``wanted``), with its build report.

    ``make_builder`` makes the builder for ``data_dir``; ``plan`` runs every check that needs no pixels
    (under the lock, before TFDS writes anything). Any failure leaves ``data_dir`` as it was.
    """
    builder = make_builder()
    if builder.is_prepared():
        check_built_from(builder, wanted)
        return builder
    data_dir.mkdir(parents=True, exist_ok=True)
    with locking.hold(build_lock_path(data_dir, builder.name, builder.builder_config.name), wait=_say_waiting):
        builder = make_builder()  # another build may have finished while this one waited
        if builder.is_prepared():
            check_built_from(builder, wanted)
            return builder
        _remove_dead_builds(builder)
        plan(builder)
        builder.built_from = wanted
        created = [_created_by_build(data_dir, Path(builder.data_path)), data_dir / "downloads"]
        created = [path for path in created if not path.exists()]
        try:
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
        except BaseException:
            for path in created:
                shutil.rmtree(path, ignore_errors=True)
            raise
    return builder
