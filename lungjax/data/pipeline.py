"""grain input pipeline: data source -> shard -> shuffle -> parse+decode+augment -> batch.

Images leave the pipeline as uint8 ``(N, S, S, 1)``: a quarter of the bytes of float32 on the
way to the device; the train step scales them. Augmentation is one OpenCV affine warp per image
that also does the resize from the stored size, so each image is resampled once.

Per-record cost is what bounds images/s per worker core (BENCHMARKS.md), so the loaders
read serialized ``tf.train.Example`` records straight from the split's ArrayRecord files and do
everything for one record in one transform: a protobuf parse of only the features the consumer
needs (TFDS's NumPy example parser costs ~170 us a record, mostly Python bookkeeping over every
feature), the PNG decode (a direct read of stored, unfiltered 8-bit gray PNGs, which the builder
writes; OpenCV for anything else), the warp and the intensity change.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import struct
import sys
import zlib
from collections.abc import Sequence
from collections.abc import Iterator

import cv2
import grain.python as grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2  # the Example proto, without TensorFlow

from lungjax import distributed

# Keys a training batch carries to the device; evaluation also keeps the identifying ones on host.
TRAIN_KEYS = ("image", "label")
EVAL_KEYS = ("image", "label", "image_name", "patient_id", "bbox")


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Ranges of random transforms, with Keras ``ImageDataGenerator`` meanings.

    rotation in degrees (uniform ±), shift as a fraction of the size (±), shear angle in degrees
    (±; Keras' ``shear_range`` is in degrees), zoom factor range 1±zoom drawn per axis, brightness
    as a fraction of full scale (±), contrast as a factor range 1±contrast. Borders repeat the edge
    pixel (Keras' ``fill_mode="nearest"``). No horizontal flip: the heart is on the left.
    """

    rotation: float = 0.0
    shift: float = 0.0
    shear: float = 0.0
    zoom: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0


AUGMENTATIONS = {
    "none": Augmentation(),
    "light": Augmentation(rotation=5.0, shift=0.05, zoom=0.05, brightness=0.1, contrast=0.1),
    # The reference's ImageDataGenerator(rotation_range=30, width/height_shift_range=0.2,
    # shear_range=0.2, zoom_range=0.3).
    "seed": Augmentation(rotation=30.0, shift=0.2, shear=0.2, zoom=0.3),
}


def augmentation(name: str) -> Augmentation:
    if name not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {sorted(AUGMENTATIONS)}, got {name!r}")
    return AUGMENTATIONS[name]


def affine_matrix(aug: Augmentation, in_size: int, out_size: int, rng: np.random.Generator | None
                  ) -> np.ndarray:
    """2x3 matrix mapping output pixel coordinates to input coordinates (resize + random affine).

    The linear part is ``scale * rotation @ shearing @ diag(zoom)``; composed in Python floats
    (a few small NumPy products cost ~50 us a record, more than the warp's share of the budget).
    """
    scale = in_size / out_size
    a, b, c, d = scale, 0.0, 0.0, scale  # linear = [[a, b], [c, d]]
    shift_x = shift_y = 0.0
    if rng is not None:
        theta = math.radians(rng.uniform(-aug.rotation, aug.rotation))
        shear = math.radians(rng.uniform(-aug.shear, aug.shear))
        zoom_x, zoom_y = rng.uniform(1 - aug.zoom, 1 + aug.zoom, size=2)
        cos_t, sin_t = math.cos(theta), math.sin(theta)
        # rotation @ shearing = [[cos, -cos sin_s - sin cos_s], [sin, -sin sin_s + cos cos_s]]
        sin_s, cos_s = math.sin(shear), math.cos(shear)
        r00, r01 = cos_t, -cos_t * sin_s - sin_t * cos_s
        r10, r11 = sin_t, -sin_t * sin_s + cos_t * cos_s
        a, b = scale * r00 * float(zoom_x), scale * r01 * float(zoom_y)
        c, d = scale * r10 * float(zoom_x), scale * r11 * float(zoom_y)
        shift_x, shift_y = (float(v) * in_size for v in rng.uniform(-aug.shift, aug.shift, size=2))
    centre_in, centre_out = (in_size - 1) / 2, (out_size - 1) / 2
    return np.array([[a, b, centre_in + shift_x - (a + b) * centre_out],
                     [c, d, centre_in + shift_y - (c + d) * centre_out]])


def warp(image: np.ndarray, matrix: np.ndarray, out_size: int) -> np.ndarray:
    """Applies an output->input affine ``matrix`` to a 2-D uint8 image."""
    return cv2.warpAffine(image, matrix, (out_size, out_size),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)


def resize(image: np.ndarray, out_size: int) -> np.ndarray:
    if image.shape[0] == out_size:
        return image
    interpolation = cv2.INTER_AREA if image.shape[0] > out_size else cv2.INTER_LINEAR
    return cv2.resize(image, (out_size, out_size), interpolation=interpolation)


def adjust_intensity(image: np.ndarray, aug: Augmentation, rng: np.random.Generator,
                     out: np.ndarray | None = None) -> np.ndarray:
    """Random contrast about the image mean, then brightness; saturates to uint8 (into ``out``)."""
    contrast = rng.uniform(1 - aug.contrast, 1 + aug.contrast)
    brightness = rng.uniform(-aug.brightness, aug.brightness) * 255.0
    beta = (1.0 - contrast) * cv2.mean(image)[0] + brightness
    return cv2.convertScaleAbs(image, out, alpha=contrast, beta=beta)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IHDR = struct.Struct(">I4sIIBBBBB")  # length, b"IHDR", width, height, depth, colour, method, filter, interlace
_CHUNK_HEAD = struct.Struct(">I4s")


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> 2-D uint8 (a read-only array where the fast path applies).

    Fast path for what the builder stores: 8-bit gray, not interlaced, every row with filter type
    0 (none). The IDAT stream is inflated by zlib (which checks its Adler-32; for stored blocks
    that is a copy) and the pixels are a view of it, skipping each row's filter byte: ~10 us
    where libpng through OpenCV takes 100-250 us. Anything else goes to ``cv2.imdecode``.
    """
    image = _decode_unfiltered_gray_png(data)
    if image is None:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise ValueError("undecodable image bytes")
    return image


def _decode_unfiltered_gray_png(data: bytes) -> np.ndarray | None:
    if len(data) < 8 + _IHDR.size + 4 or data[:8] != _PNG_SIGNATURE:
        return None
    length, kind, width, height, depth, colour, method, filtering, interlace = _IHDR.unpack_from(data, 8)
    if (length, kind, depth, colour, method, filtering, interlace) != (13, b"IHDR", 8, 0, 0, 0, 0):
        return None
    view, position, idat = memoryview(data), 8 + 8 + 13 + 4, []
    while position + 8 <= len(data):
        length, kind = _CHUNK_HEAD.unpack_from(data, position)
        body = position + 8
        if body + length + 4 > len(data):
            return None
        if kind == b"IDAT":
            idat.append(view[body:body + length])
        elif kind == b"IEND":
            break
        position = body + length + 4  # skip the chunk's CRC
    else:
        return None
    row = width + 1
    try:
        raw = zlib.decompress(b"".join(idat), bufsize=height * row)
    except zlib.error:
        return None
    if len(raw) != height * row:
        return None
    rows = np.frombuffer(raw, np.uint8).reshape(height, row)
    if rows[:, 0].any():  # some row is filtered: leave it to libpng
        return None
    return rows[:, 1:]


def _features(record):
    """The ``feature`` map of a serialized ``tf.train.Example``."""
    return tf_example_pb2.Example.FromString(record).features.feature


def _image_and_label(record):
    """(PNG bytes, label) from a serialized Example or an already decoded record dict."""
    if isinstance(record, dict):
        return record["image"], record["label"]
    features = _features(record)
    return features["image"].bytes_list.value[0], features["label"].int64_list.value[0]


def parse_example(record: bytes, specs: dict[str, tuple[np.dtype, tuple[int, ...]]],
                  keys: Sequence[str] | None = None) -> dict:
    """A serialized Example -> the dict TFDS's NumPy parser gives (images left encoded).

    ``specs``: feature name -> (NumPy dtype, shape) as serialized. Scalars come back as Python
    values (``int``, ``float``, ``bytes``), tensors as arrays of the spec's dtype and shape.
    """
    features = _features(record)
    out = {}
    for key in specs if keys is None else keys:
        dtype, shape = specs[key]
        feature = features[key]
        values = getattr(feature, feature.WhichOneof("kind")).value
        if shape:
            out[key] = np.array(values, dtype).reshape(shape)
        elif dtype == object:
            out[key] = values[0]
        else:
            out[key] = dtype.type(values[0]).item()
    return out


class Decode(grain.MapTransform):
    """Record dict with PNG bytes -> dict with a 2-D uint8 image; keeps only ``keys``.

    OpenCV is held to one thread: parallelism comes from grain's worker processes, and OpenCV's
    own thread pool on top of them oversubscribes the cores (warps ran twice as slow with 2 threads
    per process on 2 cores). The call costs well under a microsecond and must run in each worker.
    """

    def __init__(self, keys: tuple[str, ...]):
        self.keys = keys

    def map(self, record):
        cv2.setNumThreads(1)
        out = {key: record[key] for key in self.keys if key != "image"}
        out["image"] = np.array(decode_png(record["image"]))  # writable, as callers may expect
        return out


class RandomAffine(grain.RandomMapTransform):
    """Resize to ``out_size`` with the preset's random affine and intensity changes."""

    def __init__(self, aug: Augmentation, out_size: int):
        self.aug, self.out_size = aug, out_size

    def augment(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """2-D uint8 at any size -> (out_size, out_size, 1) uint8."""
        image = warp(image, affine_matrix(self.aug, image.shape[0], self.out_size, rng), self.out_size)
        if self.aug.brightness or self.aug.contrast:
            adjust_intensity(image, self.aug, rng, out=image)  # in place: no second allocation
        return image[..., None]

    def random_map(self, record, rng: np.random.Generator):
        return {**record, "image": self.augment(record["image"], rng)}


class TrainExample(RandomAffine):
    """Serialized Example (or record dict) -> ``{"image": (S, S, 1) uint8, "label": int}``.

    Parse, decode, warp and intensity in one transform: one grain step per record, and only the
    image and label are read out of the record.
    """

    def random_map(self, record, rng: np.random.Generator):
        cv2.setNumThreads(1)  # see Decode
        png, label = _image_and_label(record)
        return {"image": self.augment(decode_png(png), rng), "label": label}


class Resize(grain.MapTransform):
    """Deterministic resize for evaluation (area interpolation when shrinking)."""

    def __init__(self, out_size: int):
        self.out_size = out_size

    def map(self, record):
        return {**record, "image": resize(record["image"], self.out_size)[..., None]}


class EvalExample(grain.MapTransform):
    """Serialized Example (or record dict) -> the ``EVAL_KEYS`` with the image decoded and resized."""

    def __init__(self, specs: dict | None, out_size: int):
        self.specs, self.out_size = specs, out_size

    def map(self, record):
        cv2.setNumThreads(1)  # see Decode
        if isinstance(record, dict):
            out = {key: record[key] for key in EVAL_KEYS}
        else:
            out = parse_example(record, self.specs, EVAL_KEYS)
        out["image"] = resize(decode_png(out["image"]), self.out_size)[..., None]
        return out


class ExampleSource(Sequence):
    """A built ArrayRecord split: ``source[i]`` is example ``i`` as TFDS decodes it with the image
    left encoded (the same dict ``as_data_source(..., decoders={"image": SkipDecoding()})`` gives).

    ``records`` is the random-access source of the serialized Examples themselves, which the
    loaders hand to grain (picklable; each worker opens its own readers). Its ``repr`` names the
    dataset, config, version and split (not the files), which grain checks when restoring state.
    """

    def __init__(self, builder: tfds.core.DatasetBuilder, split: str):
        info = builder.info
        self.records = _Records(grain.ArrayRecordDataSource(info.splits[split].file_instructions),
                                f"{info.full_name}/{split}")
        self.specs = {key: (np.dtype(spec.np_dtype), tuple(spec.shape))
                      for key, spec in info.features.get_serialized_info().items()}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        return parse_example(self.records[index], self.specs)

    def __repr__(self) -> str:
        return f"ExampleSource({self.records.name})"


class _Records(Sequence):
    def __init__(self, source, name: str):
        self.source, self.name = source, name

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> bytes:
        return self.source[index]

    def __repr__(self) -> str:
        return f"ExampleRecords({self.name})"


def data_source(builder: tfds.core.DatasetBuilder, split: str):
    """Random-access source over a built split; images stay encoded until a worker decodes them.

    An :class:`ExampleSource` for ArrayRecord builds (the loaders read its raw records); TFDS's
    own data source for other file formats.
    """
    if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
        return ExampleSource(builder, split)
    return builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})


def _records(source):
    """What grain reads: the serialized Examples of an ExampleSource, any other source as is."""
    return source.records if isinstance(source, ExampleSource) else source


# Workers read their records themselves, one at a time: grain's default (16 reader threads with
# a 500-record buffer per process) cost about twice the CPU per record of this (BENCHMARKS.md),
# and each worker process is one core's worth of work, which is what worker_count counts.
READ_OPTIONS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


class EpochShuffleSampler:
    """Endless record order for training: a new permutation of the records every epoch, drawn
    from ``(seed, epoch)``, and grain's per-record generator (``Philox(key=seed + index)``) for
    the augmentation draws.

    Stands in for grain's ``IndexSampler(shuffle=True)``, whose per-record index shuffle runs
    through grain's dataset statistics wrappers and cost ~200 us a record, as much as decoding and
    warping it (BENCHMARKS.md). Here an epoch's permutation is drawn once (~0.1 ms for 14,000
    records) and a position is a lookup.
    """

    def __init__(self, num_records: int, seed: int):
        if num_records <= 0:
            raise ValueError(f"a sampler needs at least one record, got {num_records}")
        self._num_records, self._seed = num_records, seed
        self._epoch_order: tuple[int, np.ndarray] = (-1, np.zeros(0, np.int64))

    def __len__(self) -> int:
        return sys.maxsize  # endless

    def order(self, epoch: int) -> np.ndarray:
        """The record indices of ``epoch`` in the order they are read."""
        cached_epoch, order = self._epoch_order  # one read: grain may call from several threads
        if cached_epoch != epoch:
            order = np.random.default_rng([self._seed, epoch]).permutation(self._num_records)
            self._epoch_order = (epoch, order)
        return order

    def __getitem__(self, index: int) -> grain.RecordMetadata:
        epoch, position = divmod(index, self._num_records)
        return grain.RecordMetadata(index=index, record_key=int(self.order(epoch)[position]),
                                    rng=np.random.Generator(np.random.Philox(key=self._seed + index)))

    def __repr__(self) -> str:
        return f"EpochShuffleSampler(num_records={self._num_records}, seed={self._seed})"


def shard_options() -> grain.ShardOptions:
    return grain.ShardOptions(shard_index=jax.process_index(), shard_count=jax.process_count(),
                              drop_remainder=False)


def train_loader(source, *, batch_size: int, image_size: int, augment: str, seed: int,
                 worker_count: int = 0) -> grain.DataLoader:
    """Endless training batches of ``batch_size`` (per process), reshuffled every epoch.

    Deterministic for a seed and worker count (shuffle order and augmentation draws; each worker
    batches its own slice, so another worker count gives other batches), and its iterator's state
    can be saved and restored (``get_state``/``set_state``). The shuffle is a different
    permutation every epoch (``EpochShuffleSampler``).

    Every process walks the same global shuffled stream (the sampler is not sharded) and reads its
    rows of each global batch (``distributed.ProcessBatchSampler``): without grain workers the
    processes' batches together are, row for row, the batch one process would read, and a position
    in the stream means the same for any process count (``lungjax.distributed`` resumes on that).
    """
    sampler = distributed.ProcessBatchSampler(EpochShuffleSampler(len(source), seed),
                                              local_batch_size=batch_size, process_count=jax.process_count())
    operations = [TrainExample(augmentation(augment), image_size), grain.Batch(batch_size, drop_remainder=True)]
    return grain.DataLoader(data_source=_records(source), sampler=sampler, operations=operations,
                            worker_count=worker_count, shard_options=shard_options(), read_options=READ_OPTIONS)


def eval_batches(source, *, batch_size: int, image_size: int, worker_count: int = 0
                 ) -> Iterator[dict[str, np.ndarray]]:
    """Every example of this process's shard exactly once, in order, in full batches.

    Records are batched here, not in grain: grain's workers each batch their own slice, which
    would reorder examples and leave one short batch per worker. The last batch is padded and
    ``mask`` marks the real examples. Every process yields the same number of batches (empty,
    fully masked ones where its shard is shorter), so sharded computations stay in lockstep.
    """
    sampler = grain.IndexSampler(num_records=len(source), shard_options=shard_options(), shuffle=False,
                                 num_epochs=1, seed=0)
    specs = source.specs if isinstance(source, ExampleSource) else None
    loader = grain.DataLoader(data_source=_records(source), sampler=sampler,
                              operations=[EvalExample(specs, image_size)], worker_count=worker_count,
                              shard_options=shard_options(), read_options=READ_OPTIONS)
    per_process = math.ceil(len(source) / jax.process_count())
    records = iter(loader)
    for _ in range(math.ceil(per_process / batch_size)):
        chunk = list(itertools.islice(records, batch_size))
        batch = {key: np.stack([r[key] for r in chunk]) for key in chunk[0]} if chunk else None
        yield pad_batch(batch, batch_size, image_size)


def pad_batch(batch: dict[str, np.ndarray] | None, batch_size: int, image_size: int
              ) -> dict[str, np.ndarray]:
    """Pads a (possibly missing) batch to ``batch_size`` rows and adds the boolean ``mask``."""
    if batch is None:
        batch = {"image": np.zeros((0, image_size, image_size, 1), np.uint8), "label": np.zeros(0, np.int64),
                 "image_name": np.zeros(0, object), "patient_id": np.zeros(0, np.int64),
                 "bbox": np.zeros((0, 4), np.float32)}
    real = len(batch["label"])
    padded = {key: np.concatenate([value, np.zeros((batch_size - real, *value.shape[1:]), value.dtype)])
              for key, value in batch.items()}
    padded["mask"] = np.arange(batch_size) < real
    return padded
