"""grain input pipeline: data source -> shard -> shuffle -> decode -> augment -> batch.

Images leave the pipeline as uint8 ``(N, S, S, 1)``: a quarter of the bytes of float32 on the
way to the device; the train step scales them. Augmentation is one OpenCV affine warp per image
that also does the resize from the stored size, so each image is resampled once.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator

import cv2
import grain.python as grain
import jax
import numpy as np
import tensorflow_datasets as tfds

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
    """2x3 matrix mapping output pixel coordinates to input coordinates (resize + random affine)."""
    scale = in_size / out_size
    linear = np.eye(2) * scale
    shift = np.zeros(2)
    if rng is not None:
        theta = np.deg2rad(rng.uniform(-aug.rotation, aug.rotation))
        shear = np.deg2rad(rng.uniform(-aug.shear, aug.shear))
        zoom_x, zoom_y = rng.uniform(1 - aug.zoom, 1 + aug.zoom, size=2)
        rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        shearing = np.array([[1.0, -np.sin(shear)], [0.0, np.cos(shear)]])
        linear = linear @ rotation @ shearing @ np.diag([zoom_x, zoom_y])
        shift = rng.uniform(-aug.shift, aug.shift, size=2) * in_size
    centre_in = np.full(2, (in_size - 1) / 2)
    centre_out = np.full(2, (out_size - 1) / 2)
    offset = centre_in + shift - linear @ centre_out
    return np.hstack([linear, offset[:, None]])


def warp(image: np.ndarray, matrix: np.ndarray, out_size: int) -> np.ndarray:
    """Applies an output->input affine ``matrix`` to a 2-D uint8 image."""
    return cv2.warpAffine(image, matrix, (out_size, out_size),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)


def resize(image: np.ndarray, out_size: int) -> np.ndarray:
    if image.shape[0] == out_size:
        return image
    interpolation = cv2.INTER_AREA if image.shape[0] > out_size else cv2.INTER_LINEAR
    return cv2.resize(image, (out_size, out_size), interpolation=interpolation)


def adjust_intensity(image: np.ndarray, aug: Augmentation, rng: np.random.Generator) -> np.ndarray:
    """Random contrast about the image mean, then brightness; saturates to uint8."""
    contrast = rng.uniform(1 - aug.contrast, 1 + aug.contrast)
    brightness = rng.uniform(-aug.brightness, aug.brightness) * 255.0
    beta = (1.0 - contrast) * cv2.mean(image)[0] + brightness
    return cv2.convertScaleAbs(image, alpha=contrast, beta=beta)


class Decode(grain.MapTransform):
    """PNG bytes -> 2-D uint8; keeps only the keys the consumer needs.

    OpenCV is held to one thread: parallelism comes from grain's worker processes, and OpenCV's
    own thread pool on top of them oversubscribes the cores (warps ran twice as slow with 2 threads
    per process on 2 cores). The call costs well under a microsecond and must run in each worker.
    """

    def __init__(self, keys: tuple[str, ...]):
        self.keys = keys

    def map(self, record):
        cv2.setNumThreads(1)
        out = {key: record[key] for key in self.keys if key != "image"}
        out["image"] = cv2.imdecode(np.frombuffer(record["image"], np.uint8), cv2.IMREAD_UNCHANGED)
        return out


class RandomAffine(grain.RandomMapTransform):
    """Resize to ``out_size`` with the preset's random affine and intensity changes."""

    def __init__(self, aug: Augmentation, out_size: int):
        self.aug, self.out_size = aug, out_size

    def random_map(self, record, rng: np.random.Generator):
        image = record["image"]
        image = warp(image, affine_matrix(self.aug, image.shape[0], self.out_size, rng), self.out_size)
        if self.aug.brightness or self.aug.contrast:
            image = adjust_intensity(image, self.aug, rng)
        return {**record, "image": image[..., None]}


class Resize(grain.MapTransform):
    """Deterministic resize for evaluation (area interpolation when shrinking)."""

    def __init__(self, out_size: int):
        self.out_size = out_size

    def map(self, record):
        return {**record, "image": resize(record["image"], self.out_size)[..., None]}


def data_source(builder: tfds.core.DatasetBuilder, split: str):
    """Random-access source over a built split; images stay encoded until a worker decodes them."""
    return builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})


def shard_options() -> grain.ShardOptions:
    return grain.ShardOptions(shard_index=jax.process_index(), shard_count=jax.process_count(),
                              drop_remainder=False)


def train_loader(source, *, batch_size: int, image_size: int, augment: str, seed: int,
                 worker_count: int = 0) -> grain.DataLoader:
    """Endless training batches of ``batch_size`` (per process), reshuffled every epoch.

    Deterministic for a seed and worker count (shuffle order and augmentation draws; each worker
    batches its own slice, so another worker count gives other batches), and its iterator's state
    can be saved and restored (``get_state``/``set_state``). The shuffle is grain's index shuffle,
    a different permutation every epoch.
    """
    sampler = grain.IndexSampler(num_records=len(source), shard_options=shard_options(), shuffle=True,
                                 num_epochs=None, seed=seed)
    operations = [Decode(TRAIN_KEYS), RandomAffine(augmentation(augment), image_size),
                  grain.Batch(batch_size, drop_remainder=True)]
    return grain.DataLoader(data_source=source, sampler=sampler, operations=operations,
                            worker_count=worker_count, shard_options=shard_options())


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
    loader = grain.DataLoader(data_source=source, sampler=sampler,
                              operations=[Decode(EVAL_KEYS), Resize(image_size)],
                              worker_count=worker_count, shard_options=shard_options())
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
