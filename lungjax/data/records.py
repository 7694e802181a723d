"""Reading a built split: its ArrayRecord files of serialized ``tf.train.Example`` protos, and the
PNGs inside them.

Per-record cost is what bounds images/s per worker core (BENCHMARKS.md), so the loaders read the
serialized records themselves and parse only the features the consumer needs (TFDS's NumPy
example parser costs ~170 us a record, mostly Python bookkeeping over every feature), and the PNGs
the builder stores (unfiltered 8-bit gray) are decoded without libpng.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import cv2
import grain.python as grain
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2  # the Example proto, without TensorFlow

from lungjax.data import images

_IHDR = struct.Struct(">I4sIIBBBBB")  # length, b"IHDR", width, height, depth, colour, method, filter, interlace


_CHUNK_HEAD = struct.Struct(">I4s")


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> 2-D uint8 (a read-only array where the fast path applies).

    Fast path for what the builder stores: 8-bit gray, not interlaced, every row with filter type
    0 (none). The IDAT stream is inflated by zlib (which checks its Adler-32; for stored blocks
    that is a copy) and the pixels are a view of it, skipping each row's filter byte: ~10 us
    where libpng through OpenCV takes 100-250 us. Anything else goes to ``cv2.imdecode``.
    """
    image = decode_unfiltered_gray_png(data)
    if image is None:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise ValueError("undecodable image bytes")
    return image


def decode_unfiltered_gray_png(data: bytes) -> np.ndarray | None:
    """``decode_png``'s fast path: the pixels of a PNG in the builder's form, None for any other PNG."""
    if len(data) < 8 + _IHDR.size + 4 or not data.startswith(images.PNG_MAGIC):
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
            idat.append(view[body : body + length])
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


def image_and_feature(record: bytes, name: str) -> tuple[bytes, Sequence]:
    """(PNG bytes, the values of feature ``name``) of a serialized Example: all that a training batch
    reads from it (the stored labels: ``task_labels.TaskLabels`` turns them into what the task trains on)."""
    features = _features(record)
    feature = features[name]
    return features["image"].bytes_list.value[0], getattr(feature, feature.WhichOneof("kind")).value


def parse_example(
    record: bytes, specs: dict[str, tuple[np.dtype, tuple[int, ...]]], keys: Sequence[str] | None = None
) -> dict:
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
        elif dtype.kind == "O":
            out[key] = values[0]
        else:
            out[key] = dtype.type(values[0]).item()
    return out


def serialized_specs(features: tfds.features.FeaturesDict) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Feature name -> (NumPy dtype, shape) as ``features`` serializes it: what ``parse_example`` reads."""
    return {key: (np.dtype(spec.np_dtype), tuple(spec.shape)) for key, spec in features.get_serialized_info().items()}


class ExampleSource(Sequence):
    """A split's serialized Examples and how to parse them: ``source[i]`` is example ``i`` as TFDS
    decodes it with the image left encoded (the dict ``as_data_source(..., decoders={"image":
    SkipDecoding()})`` gives).

    ``records`` is the random-access sequence of serialized Examples that the loaders hand to grain
    (picklable; each worker opens its own readers). ``name`` names the dataset, config, version and
    split (not the files): it is in the ``repr``, which grain checks when restoring state.
    """

    def __init__(self, records: Sequence[bytes], specs: dict[str, tuple[np.dtype, tuple[int, ...]]], name: str):
        self.records, self.specs = _Records(records, name), specs

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


def data_source(builder: tfds.core.DatasetBuilder, split: str) -> ExampleSource:
    """Random-access source over a built split; images stay encoded until a worker decodes them."""
    info = builder.info
    return ExampleSource(
        grain.ArrayRecordDataSource(info.splits[split].file_instructions),
        serialized_specs(info.features),
        f"{info.full_name}/{split}",
    )
