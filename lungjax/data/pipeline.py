"""grain input pipeline: a built split -> shard -> shuffle -> parse+decode+augment -> batch.

Images leave the pipeline as uint8 ``(N, S, S, 1)``: a quarter of the bytes of float32 on the
way to the device; the train step scales them. Everything for one record happens in one transform
(parse only the needed features, decode, warp, intensity: :mod:`lungjax.data.records` and
:mod:`lungjax.data.augment`), one grain step per record.

With ``augment_on_device`` the host only decodes: a training batch carries the stored-size images
with each record's drawn transform (``"warp"``: the 2x3 output->input matrix, ``"intensity"``:
contrast and brightness), which the train step applies on the device (``training.device_augment``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import cv2
import grain.python as grain
import jax
import numpy as np

from lungjax.data import images, records, sampling, task_labels, tasks, union
from lungjax.data.augment import Augmentation, augment_image, augmentation, draw
from lungjax.data.task_labels import TaskLabels

# What an evaluation batch carries besides the image, the label and (masked tasks) the label mask: the
# features of these that the dataset stores (kept on the host). NIH's builds store boxes; the sources'
# builds the film's metadata, which the subgroup audit reads.
EVAL_KEYS = ("image_name", "patient_id", "bbox", "source", "view", "sex", "age")
# Workers read their records themselves, one at a time: grain's default (16 reader threads with
# a 500-record buffer per process) cost about twice the CPU per record of this (BENCHMARKS.md),
# and each worker process is one core's worth of work, which is what worker_count counts.
READ_OPTIONS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def _one_opencv_thread() -> None:
    """Parallelism comes from grain's worker processes: OpenCV's own thread pool on top of them
    oversubscribes the cores (warps ran twice as slow with 2 threads per process on 2 cores). The
    call costs well under a microsecond and must run in each worker, hence once per record."""
    cv2.setNumThreads(1)


class TrainExample(grain.RandomMapTransform):
    """Serialized Example -> ``{"image": (S, S, 1) uint8, "label": int or (C,) uint8}`` (and a masked
    task's ``"label_mask"``), randomly augmented; ``labels`` reads the record's stored labels.

    ``on_device``: the image stays at its stored size, unaugmented, and the record's transform, drawn
    from the same ``rng`` in the same order (``augment.draw``), travels with it as ``"warp"`` and
    ``"intensity"`` (float32) for the train step to apply.
    """

    def __init__(self, aug: Augmentation, out_size: int, labels: TaskLabels, on_device: bool = False):
        self.aug, self.out_size, self.labels, self.on_device = aug, out_size, labels, on_device

    def random_map(self, record, rng: np.random.Generator):
        _one_opencv_thread()
        png, stored = records.image_and_feature(record, self.labels.stored)
        image = records.decode_png(png)
        if not self.on_device:
            return {"image": augment_image(image, self.aug, self.out_size, rng), **self.labels(stored)}
        matrix, intensity = draw(self.aug, image.shape[0], self.out_size, rng)
        return {
            "image": image[..., None],
            "warp": matrix.astype(np.float32),
            "intensity": intensity.astype(np.float32),
            **self.labels(stored),
        }


class EvalExample(grain.MapTransform):
    """Serialized Example -> the image decoded and resized, the task's ``label`` (and ``label_mask``) and
    the ``EVAL_KEYS`` the dataset stores."""

    def __init__(self, specs: dict, out_size: int, labels: TaskLabels):
        self.specs, self.out_size, self.labels = specs, out_size, labels
        self.keys = ("image", labels.stored, *(key for key in EVAL_KEYS if key in specs))

    def map(self, record):
        _one_opencv_thread()
        out = records.parse_example(record, self.specs, self.keys)
        out.update(self.labels(out.pop(self.labels.stored)))
        out["label"] = np.asarray(out["label"], np.int64)  # as NIH's builds store it: reports keep their bytes
        if "bbox" in out:
            out["bbox"] = self.labels.boxes(out["bbox"])
        out["image"] = images.resize(records.decode_png(out["image"]), self.out_size)[..., None]
        return out

    def empty(self) -> dict[str, np.ndarray]:
        """A batch of no examples with every key ``map`` gives, for a process whose range is empty."""
        batch = {
            "image": np.zeros((0, self.out_size, self.out_size, 1), np.uint8),
            "label": np.zeros((0, *self.labels.label_shape), np.int64),
        }
        if self.labels.task.masked:
            batch["label_mask"] = np.zeros((0, *self.labels.label_shape), np.uint8)
        for key in self.keys[2:]:
            dtype, shape = self.specs[key]
            batch[key] = np.zeros((0, *shape), dtype)
        if "bbox" in batch:
            batch["bbox"] = np.zeros((0, *self.labels.label_shape, 4), batch["bbox"].dtype)
        return batch


def train_loader(
    source: records.ExampleSource | union.UnionSource,
    *,
    batch_size: int,
    image_size: int,
    augment: str,
    seed: int,
    task: tasks.Task | None = None,
    uncertainty: str = "ignore",
    worker_count: int = 0,
    augment_on_device: bool = False,
    weights: tuple[float, ...] = (),
) -> grain.DataLoader:
    """Endless training batches of ``batch_size`` (per process), reshuffled every epoch.

    ``task`` and ``uncertainty``: what the batches' labels are (``task_labels.TaskLabels``); no task: an
    NIH build's labels as stored.
    ``augment_on_device``: batches of decoded stored-size images and their transforms (``TrainExample``).

    Deterministic for a seed and worker count (shuffle order and augmentation draws; each worker
    batches its own slice, so another worker count gives other batches), and its iterator's state
    can be saved and restored (``get_state``/``set_state``). The shuffle is a different
    permutation every epoch (``sampling.EpochShuffleSampler``).

    Every process walks the same global shuffled stream (the sampler is not sharded) and reads its
    rows of each global batch (``sampling.ProcessBatchSampler``): without grain workers the
    processes' batches together are, row for row, the batch one process would read, and a position
    in the stream means the same for any process count (``sampling.data_state_for_process``).

    ``weights``: for a union of sources (``union.UnionSource``), each source's mixing weight
    (``sampling.MixedSampler``); empty for one source.
    """
    order = (
        sampling.MixedSampler(source.sizes, weights, seed)
        if weights
        else sampling.EpochShuffleSampler(len(source), seed)
    )
    sampler = sampling.ProcessBatchSampler(order, local_batch_size=batch_size, process_count=jax.process_count())
    operations = [
        TrainExample(
            augmentation(augment),
            image_size,
            TaskLabels(task or stored_task(source.specs), source.specs, uncertainty),
            on_device=augment_on_device,
        ),
        grain.Batch(batch_size, drop_remainder=True),
    ]
    return grain.DataLoader(
        data_source=source.records,
        sampler=sampler,
        operations=operations,
        worker_count=worker_count,
        shard_options=sampling.shard_options(),
        read_options=READ_OPTIONS,
    )


class _Range:
    """Records ``[start, stop)`` of a data source, as a data source of their own."""

    def __init__(self, records, start: int, stop: int):
        self.records, self.start, self.stop = records, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int):
        return self.records[self.start + index]


def process_range(num_records: int) -> tuple[int, int]:
    """This process's contiguous share ``[start, stop)`` of an evaluation split: process p reads the
    p-th block of ``ceil(n / processes)`` records (the last ones may be shorter or empty), so that
    concatenating the processes' predictions in process order gives the split's order. Our own
    arithmetic: grain's sharding of an unshuffled sampler skipped a record at each shard boundary
    (grain 0.2.18: 9 records over 2 processes read 0-3 and 5-8)."""
    per_process = math.ceil(num_records / jax.process_count())
    start = min(jax.process_index() * per_process, num_records)
    return start, min(start + per_process, num_records)


def eval_batches(
    source: records.ExampleSource,
    *,
    batch_size: int,
    image_size: int,
    task: tasks.Task | None = None,
    worker_count: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Every example of this process's range (``process_range``) exactly once, in order, in full batches.

    ``task``: what the labels are (``task_labels.TaskLabels``, uncertain entries masked:
    ``task_labels.EVALUATION_UNCERTAINTY``); None for an NIH build's stored labels as they are.

    Records are batched here, not in grain: grain's workers each batch their own slice, which
    would reorder examples and leave one short batch per worker. The last batch is padded and
    ``mask`` marks the real examples. Every process yields the same number of batches (empty,
    fully masked ones where its range is shorter), so sharded computations stay in lockstep.
    """
    labels = TaskLabels(task or stored_task(source.specs), source.specs, task_labels.EVALUATION_UNCERTAINTY)
    to_example = EvalExample(source.specs, image_size, labels)
    start, stop = process_range(len(source))
    examples = iter(())  # grain refuses an empty sampler; a process may have no records left
    if stop > start:
        examples = iter(
            grain.DataLoader(
                data_source=_Range(source.records, start, stop),
                sampler=grain.IndexSampler(
                    num_records=stop - start, shard_options=grain.NoSharding(), shuffle=False, num_epochs=1, seed=0
                ),
                operations=[to_example],
                worker_count=worker_count,
                shard_options=grain.NoSharding(),
                read_options=READ_OPTIONS,
            )
        )
    per_process = math.ceil(len(source) / jax.process_count())
    for _ in range(math.ceil(per_process / batch_size)):
        chunk = list(itertools.islice(examples, batch_size))
        batch = {key: np.stack([r[key] for r in chunk]) for key in chunk[0]} if chunk else to_example.empty()
        yield pad_batch(batch, batch_size)


def stored_task(specs: dict) -> tasks.Task:
    """The NIH task whose labels a build stores (the six-class index or full14's vector); full14 for a
    source's build, which ``TaskLabels`` then refuses without a label set."""
    return tasks.SIX_CLASS if specs.get(task_labels.LABEL, (None, None))[1] == () else tasks.FULL14


def pad_batch(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """Pads a batch to ``batch_size`` rows and adds the boolean ``mask`` marking the real ones."""
    real = len(batch["label"])
    padded = {
        key: np.concatenate([value, np.zeros((batch_size - real, *value.shape[1:]), value.dtype)])
        for key, value in batch.items()
    }
    padded["mask"] = np.arange(batch_size) < real
    return padded
