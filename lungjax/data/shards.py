"""Writing a split's shards as TFDS lays them out, for a split of any size, without TensorFlow.

TFDS's own writer orders a split's examples by the md5 of their keys (salted with the split's
name), holding them in memory up to 1 GB and past that spilling them to bucket files through
``tf.io.gfile``: a split over 1 GB cannot be written where TensorFlow is not installed. This writer
keeps TFDS's layout (the same order, shard count, shard boundaries and split info, so the same
``dataset_info.json``) with plain file I/O: the serialized examples stay in memory up to
``IN_MEMORY_BYTES``; past that, all of them go to one spill file beside the shards, with only
(hashed key, offset, length) per example kept in memory, and are read back from it in key order.

Each ``tf.train.Example`` is serialized with its features in name order. TFDS serializes them in
the order of the protobuf runtime's map, which changes from one process to the next: two builds
of the same files gave different record bytes, shard sizes and so dataset fingerprints. Here a
rebuild gives the same bytes; the records parse to the same examples as TFDS's.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Generator, Iterator
from pathlib import Path

import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_serializer, hashing, naming, writer
from tensorflow_datasets.core.utils import shard_utils
from tqdm.auto import tqdm

# Serialized examples held in memory before the split goes to a spill file: a quarter of TFDS's 1 GB
# (a 3 GB split built in 450 MB, BENCHMARKS.md). The spill costs one more write and read of the
# split, small beside decoding and encoding its images.
IN_MEMORY_BYTES = 256 << 20
SPILL_SUFFIX = ".spill.tmp"


class DuplicateKeyError(ValueError):
    """Two examples of one split have the same key (TFDS would refuse them too)."""


class _KeyedExamples:
    """Serialized examples by hashed key, in memory up to a limit, then in one spill file."""

    def __init__(self, spill_path: Path, memory_limit: int):
        self.spill_path, self.memory_limit = spill_path, memory_limit
        self.in_memory: list[tuple[int, bytes]] | None = []
        self.index: list[tuple[int, int, int]] = []  # (hashed key, offset, length) in the spill file
        self.spill = None
        self.num_examples = self.num_bytes = 0

    def add(self, hkey: int, data: bytes) -> None:
        self.num_examples += 1
        self.num_bytes += len(data)
        if self.spill is not None:
            self._write([(hkey, data)])
            return
        self.in_memory.append((hkey, data))
        if self.num_bytes > self.memory_limit:
            self.spill = open(self.spill_path, "wb")  # closed by close()
            self._write(self.in_memory)
            self.in_memory = None

    def _write(self, pairs: list[tuple[int, bytes]]) -> None:
        with self._naming_the_spill():
            for hkey, data in pairs:
                self.index.append((hkey, self.spill.tell(), len(data)))
                self.spill.write(data)

    @contextlib.contextmanager
    def _naming_the_spill(self):
        """A failed write to the spill file names it (a file object's ``OSError`` does not)."""
        try:
            yield
        except OSError as err:
            if err.filename is not None:
                raise
            raise OSError(err.errno, err.strerror, os.fspath(self.spill_path)) from err

    def in_key_order(self) -> Iterator[tuple[int, bytes]]:
        """The examples sorted by hashed key; stops at two with the same key."""
        if self.spill is None:
            ordered = iter(sorted(self.in_memory, key=lambda pair: pair[0]))
        else:
            with self._naming_the_spill():
                self.spill.close()
            ordered = self._read_back()
        previous = None
        for hkey, data in ordered:
            if hkey == previous:
                raise DuplicateKeyError("two examples of one split have the same key")
            previous = hkey
            yield hkey, data

    def _read_back(self) -> Iterator[tuple[int, bytes]]:
        self.index.sort()
        with open(self.spill_path, "rb") as spill:
            for hkey, offset, length in self.index:
                yield hkey, os.pread(spill.fileno(), length, offset)

    def close(self) -> None:
        """Removes the spill file (whether or not the split was written)."""
        if self.spill is not None:
            try:
                with self._naming_the_spill():
                    self.spill.close()
            finally:
                self.spill_path.unlink(missing_ok=True)


def write_split(
    split: str,
    examples: Generator[tuple[str, dict]],
    *,
    features: tfds.features.FeaturesDict,
    filename_template: naming.ShardedFileTemplate,
    shard_config: shard_utils.ShardConfig,
    example_writer: writer.ExampleWriter,
) -> tfds.core.SplitInfo:
    """Writes ``examples`` ((key, example) pairs) as the split's shards; returns its split info.

    Whatever stops it, the spill file is removed and both generators (the examples', this one's
    progress bar) are closed, so that a progress line ends before the error is told.
    """
    serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
    hasher = hashing.Hasher(split)
    keyed = _KeyedExamples(Path(filename_template.data_dir) / f"{split}{SPILL_SUFFIX}", IN_MEMORY_BYTES)
    with contextlib.closing(examples), contextlib.closing(keyed):
        for key, example in examples:
            record = serializer.get_tf_example(features.encode_example(example)).SerializeToString(deterministic=True)
            keyed.add(hasher.hash_key(key), record)
        if keyed.num_examples == 0:
            raise ValueError(f"split {split!r} has no examples")
        num_shards = shard_config.get_number_shards(keyed.num_bytes, keyed.num_examples)
        ends = shard_utils.get_shard_boundaries(keyed.num_examples, num_shards)
        lengths = [end - start for start, end in zip([0, *ends[:-1]], ends, strict=True)]
        progress = tqdm(keyed.in_key_order(), total=keyed.num_examples, desc=f"{split}: write", unit="img")
        with contextlib.closing(iter(progress)) as ordered:
            for index, length in enumerate(lengths):
                path = filename_template.sharded_filepath(shard_index=index, num_shards=num_shards)
                example_writer.write(path, itertools.islice(ordered, length))  # ArrayRecord: no index files
    return tfds.core.SplitInfo(
        name=split, shard_lengths=lengths, num_bytes=keyed.num_bytes, filename_template=filename_template
    )
