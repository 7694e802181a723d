"""Writing a split's shards without TensorFlow: the files TFDS's own writer makes, whatever the split's size."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_serializer, naming, writer
from tensorflow_datasets.core.utils import shard_utils

from lungjax.data import nih, phantom, records, shards

FEATURES = tfds.features.FeaturesDict(
    {"name": tfds.features.Text(), "pixels": tfds.features.Tensor(shape=(64,), dtype=np.uint8)}
)


@pytest.fixture
def without_tensorflow(monkeypatch):
    """TensorFlow is absent: the writer must not need it (TFDS's own one does past 1 GB)."""
    assert importlib.util.find_spec("tensorflow") is None and "tensorflow" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        import tensorflow  # noqa: F401
    return monkeypatch


@pytest.fixture
def spills(without_tensorflow):
    """Splits over a few KB go to the spill file; counts the splits that did."""
    counted = []
    read_back = shards._KeyedExamples._read_back

    def counting(self):
        counted.append(self.spill_path.name)
        return read_back(self)

    without_tensorflow.setattr(shards, "IN_MEMORY_BYTES", 4096)
    without_tensorflow.setattr(shards._KeyedExamples, "_read_back", counting)
    return counted


def examples(count: int) -> list[tuple[str, dict]]:
    rng = np.random.default_rng(0)
    return [
        (f"film_{i:04d}.png", {"name": f"film_{i:04d}", "pixels": rng.integers(0, 256, 64, np.uint8)})
        for i in range(count)
    ]


def template(folder: Path, split: str) -> naming.ShardedFileTemplate:
    folder.mkdir(parents=True)
    return naming.ShardedFileTemplate(
        data_dir=folder, dataset_name="films", split=split, filetype_suffix="array_record"
    )


def files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_a_spilled_split_is_the_files_tfds_writes(tmp_path, spills):
    """Three shards of 300 examples (19 KB serialized: spilled) against TFDS's in-memory writer."""
    shard_config = shard_utils.ShardConfig(num_shards=3)
    example_writer = writer.ExampleWriter(file_format=tfds.core.FileFormat.ARRAY_RECORD)
    ours = shards.write_split(
        "train",
        (pair for pair in examples(300)),
        features=FEATURES,
        filename_template=template(tmp_path / "ours", "train"),
        shard_config=shard_config,
        example_writer=example_writer,
    )
    theirs = writer.Writer(
        serializer=example_serializer.ExampleSerializer(FEATURES.get_serialized_info()),
        filename_template=template(tmp_path / "tfds", "train"),
        hash_salt="train",
        disable_shuffling=False,
        example_writer=example_writer,
        shard_config=shard_config,
    )
    for key, example in examples(300):
        theirs.write(key, FEATURES.encode_example(example))
    shard_lengths, num_bytes = theirs.finalize()
    assert spills == ["train.spill.tmp"]
    assert (ours.shard_lengths, ours.num_bytes) == (shard_lengths, num_bytes) and len(shard_lengths) == 3
    assert num_bytes > 4 * shards.IN_MEMORY_BYTES
    assert files(tmp_path / "ours") == files(tmp_path / "tfds")  # no spill file left either


def test_two_examples_with_one_key_are_refused_and_the_spill_removed(tmp_path, spills):
    folder = tmp_path / "ours"
    with pytest.raises(shards.DuplicateKeyError, match="same key"):
        shards.write_split(
            "train",
            (pair for pair in [*examples(100), examples(1)[0]]),
            features=FEATURES,
            filename_template=template(folder, "train"),
            shard_config=shard_utils.ShardConfig(),
            example_writer=writer.ExampleWriter(file_format=tfds.core.FileFormat.ARRAY_RECORD),
        )
    assert not list(folder.glob(f"*{shards.SPILL_SUFFIX}"))


def build(root: Path, data_dir: Path) -> nih.NihChestXray:
    return nih.build_dataset(root, data_dir, nih.make_config(task="full14", image_size=32), num_workers=1)


def test_a_build_that_spills_is_the_build_tfds_writes(tmp_path, monkeypatch, spills):
    """The builder with its own writer and every split spilled, without TensorFlow, against TFDS's
    own writer in memory: the same files byte for byte, the same examples read back."""
    root = phantom.write_nih_tree(tmp_path / "nih", 12, seed=4, image_size=32, task="full14")
    with monkeypatch.context() as tfds_writes:
        tfds_writes.setattr(nih.NihChestXray, "_generate_splits", tfds.core.GeneratorBasedBuilder._generate_splits)
        before = build(root, tmp_path / "tfds")
    assert spills == []
    after = build(root, tmp_path / "ours")
    assert sorted(spills) == sorted(f"{split}{shards.SPILL_SUFFIX}" for split in after.info.splits)
    assert len(spills) == 3
    assert files(Path(after.data_dir)) == files(Path(before.data_dir))
    for split in after.info.splits:
        ours, theirs = records.data_source(after, split), records.data_source(before, split)
        assert len(ours) == len(theirs) > 0
        assert [ours.records[i] for i in range(len(ours))] == [theirs.records[i] for i in range(len(theirs))]
