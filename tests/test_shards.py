"""Writing a split's shards without TensorFlow: TFDS's layout and records, whatever the split's size,
and the same bytes from every build of the same files."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from array_record.python import array_record_data_source
from tensorflow_datasets.core import example_serializer, naming, writer
from tensorflow_datasets.core.utils import shard_utils
from tensorflow_datasets.proto import tf_example_pb2

from lungjax.data import building, nih, phantom, shards

FEATURES = tfds.features.FeaturesDict(
    {
        "name": tfds.features.Text(),
        "pixels": tfds.features.Tensor(shape=(64,), dtype=np.uint8),
        "label": tfds.features.ClassLabel(num_classes=3),
        "age": np.int32,
    }
)
ROOT = Path(__file__).parent.parent


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
        (
            f"film_{i:04d}.png",
            {"name": f"film_{i:04d}", "pixels": rng.integers(0, 256, 64, np.uint8), "label": i % 3, "age": 20 + i},
        )
        for i in range(count)
    ]


def template(folder: Path, split: str) -> naming.ShardedFileTemplate:
    folder.mkdir(parents=True)
    return naming.ShardedFileTemplate(
        data_dir=folder, dataset_name="films", split=split, filetype_suffix="array_record"
    )


def shard_records(path: Path) -> list[bytes]:
    source = array_record_data_source.ArrayRecordDataSource([str(path)])
    return [source[i] for i in range(len(source))]


def in_name_order(record: bytes) -> bytes:
    """A serialized Example with its features in name order (TFDS's own order varies by process)."""
    return tf_example_pb2.Example.FromString(record).SerializeToString(deterministic=True)


def assert_same_records_as_tfds(ours: Path, theirs: Path) -> None:
    """The same shard files, each with TFDS's records in TFDS's order, features in name order."""
    names = sorted(path.name for path in ours.glob("*.array_record-*"))
    assert names == sorted(path.name for path in theirs.glob("*.array_record-*")) and names
    for name in names:
        assert shard_records(ours / name) == [in_name_order(record) for record in shard_records(theirs / name)]


def test_a_spilled_split_is_written_as_tfds_writes_it(tmp_path, spills):
    """Three shards of 300 examples (spilled past 4 KB) against TFDS's in-memory writer."""
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
    assert spills == [f"train{shards.SPILL_SUFFIX}"]
    assert (ours.shard_lengths, ours.num_bytes) == (shard_lengths, num_bytes) and len(shard_lengths) == 3
    assert num_bytes > 4 * shards.IN_MEMORY_BYTES
    assert_same_records_as_tfds(tmp_path / "ours", tmp_path / "tfds")
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == sorted(
        p.name for p in (tmp_path / "tfds").iterdir()
    )


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
    assert spills and not list(folder.glob(f"*{shards.SPILL_SUFFIX}"))


def build(root: Path, data_dir: Path) -> nih.NihChestXray:
    return nih.build_dataset(root, data_dir, nih.make_config(task="full14", image_size=32), num_workers=1)


def test_a_build_that_spills_is_the_build_tfds_writes(tmp_path, monkeypatch, spills):
    """The builder with its own writer, every split spilled, without TensorFlow, against TFDS's own
    writer in memory: the same dataset info and build report, the same records in the same shards."""
    root = phantom.write_nih_tree(tmp_path / "nih", 12, seed=4, image_size=32, task="full14")
    with monkeypatch.context() as tfds_writes:
        tfds_writes.setattr(nih.NihChestXray, "_generate_splits", tfds.core.GeneratorBasedBuilder._generate_splits)
        before = Path(build(root, tmp_path / "tfds").data_dir)
    assert spills == []
    built = build(root, tmp_path / "ours")
    after = Path(built.data_dir)
    assert sorted(spills) == sorted(f"{split}{shards.SPILL_SUFFIX}" for split in built.info.splits)
    assert len(spills) == 3
    assert sorted(p.name for p in after.iterdir()) == sorted(p.name for p in before.iterdir())
    for name in ("dataset_info.json", "features.json", building.BUILD_REPORT):
        assert (after / name).read_bytes() == (before / name).read_bytes()
    assert_same_records_as_tfds(after, before)


BUILD_IN_A_PROCESS = """
    import sys
    from lungjax.data import nih, shards
    shards.IN_MEMORY_BYTES = int(sys.argv[3])
    nih.build_dataset(sys.argv[1], sys.argv[2], nih.make_config(task="full14", image_size=32), num_workers=1)
"""


def test_every_build_of_the_same_files_gives_the_same_bytes(tmp_path):
    """Two processes (the protobuf runtime orders a map differently in each), one spilling and one
    not: every file equal byte for byte, so the dataset's fingerprint is too."""
    root = phantom.write_nih_tree(tmp_path / "nih", 12, seed=4, image_size=32, task="full14")
    folders = []
    for name, in_memory_bytes in (("spilled", 4096), ("in_memory", shards.IN_MEMORY_BYTES)):
        data_dir = tmp_path / name
        command = [sys.executable, "-c", textwrap.dedent(BUILD_IN_A_PROCESS), root, data_dir, str(in_memory_bytes)]
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
        (folder,) = data_dir.glob("nih_chest_xray/full14_32/*")
        folders.append(folder)
    spilled, in_memory = ({p.name: p.read_bytes() for p in folder.iterdir()} for folder in folders)
    assert spilled == in_memory and any(".array_record-" in name for name in spilled)
