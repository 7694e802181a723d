"""Reading radiographs from disk into 8-bit grayscale squares, safely.

Used by the builder (at build time) and by ``--mode predict``. Every loader refuses files that are
not images, images with more pixels than MAX_PIXELS (decompression bombs) and images longer than
MAX_ASPECT_RATIO times their width, from the size their header declares, before decoding.

Geometry: a non-square film is padded with black to a centred square (never cropped, so no part
of the chest is lost), then resized to the stored size with area interpolation (linear when
enlarging, where area would be nearest-neighbour). Boxes follow the same mapping (``scale_box``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import cv2
import numpy as np

MAX_PIXELS = 64 * 1024 * 1024  # NIH films are 1024x1024 (originals up to ~3,000x3,000)
# The sides of the square films lungjax stores, draws and feeds to a model. Below 32 pixels the models'
# stem (x1/4) and three stride-2 stages leave the last stage only padding; past 4096 a split of NIH's
# 112,120 films would not fit a disk.
MIN_SIZE, MAX_SIZE = 32, 4096
# The largest file read into memory: a MAX_PIXELS film stored uncompressed at 16-bit RGBA (512 MiB),
# twice over for metadata. A larger one cannot be a film of at most MAX_PIXELS.
MAX_FILE_BYTES = 16 * MAX_PIXELS
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
PNG_COMPRESSION = 0  # see encode_png
# Start-of-frame markers (baseline, progressive, lossless, ...): all but DHT, JPG and DAC in C0..CF.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RST0-7, SOI: no length, no payload
_JPEG_START_OF_SCAN, _JPEG_END = 0xDA, 0xD9
# A film's longer side over its shorter: chest films are 1 to 1.3 (14 x 17 in, 35 x 43 cm), long-length
# films about 3. Past 4 the padded square (``resize_square``) leaves the film under a quarter of the
# model's input, and bounds that square at 4 x MAX_PIXELS bytes (a 1 x 900,000 PNG would ask 810 GB).
MAX_ASPECT_RATIO = 4.0
# libjpeg decodes a JPEG at 1/2, 1/4 or 1/8 of its size by scaling its DCT blocks, skipping most of the
# inverse transform: what a film of ~2,500 x 2,000 stored at 256 needs (BENCHMARKS.md, reduced decode).
JPEG_REDUCTIONS = MappingProxyType(
    {8: cv2.IMREAD_REDUCED_GRAYSCALE_8, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2}
)


class ImageError(ValueError):
    """A file could not be turned into a radiograph; the message names the file and the reason."""


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk (its first, by the PNG standard) or a JPEG's frame header,
    or None when the header does not say."""
    if data.startswith(PNG_MAGIC):
        if data[8:16] != b"\x00\x00\x00\x0dIHDR" or len(data) < 24:
            return None
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    for marker, start, end in jpeg_segments(data):
        if marker in _JPEG_SOF_MARKERS and end - start >= 5:  # precision, height, width, ...
            return int.from_bytes(data[start + 3 : start + 5], "big"), int.from_bytes(
                data[start + 1 : start + 3], "big"
            )
    return None


def jpeg_segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, payload start, payload end) of each JPEG marker segment after start-of-image, up to the
    start of scan (the last one given), where the metadata and frame header all are.

    The markers are found as libjpeg finds them (``next_marker`` in jdmarker.c): bytes that are not a
    marker between two segments are skipped, as are fill bytes (0xFF) and stuffed zeros, and each
    segment is skipped by its length; so what is read here is what the decoder will read.
    """
    position = len(_JPEG_MAGIC) - 1  # after the start-of-image marker
    while (position := data.find(b"\xff", position)) >= 0:
        while position < len(data) and data[position] == 0xFF:
            position += 1
        if position >= len(data):
            return
        marker, position = data[position], position + 1
        if marker == 0x00 or marker in _JPEG_STANDALONE_MARKERS:
            continue
        if marker == _JPEG_END or position + 2 > len(data):
            return
        length = int.from_bytes(data[position : position + 2], "big")
        if length < 2:  # libjpeg stops here too ("Bogus marker length")
            return
        yield marker, position + 2, min(position + length, len(data))
        if marker == _JPEG_START_OF_SCAN:
            return
        position += length


def check_size(name: str, width: int, height: int) -> None:
    """Refuses a film whose declared size is empty, over MAX_PIXELS or beyond MAX_ASPECT_RATIO: called
    with the header's numbers before any pixel is decoded, so a file that lies costs nothing."""
    if width < 1 or height < 1:
        raise ImageError(f"{name}: the header declares {width}x{height} pixels: no image")
    if width * height > MAX_PIXELS:
        raise ImageError(f"{name}: {width}x{height} pixels exceeds the limit of {MAX_PIXELS}")
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise ImageError(
            f"{name}: {width}x{height} pixels, sides in a ratio of {ratio:,.1f} to 1, beyond the {MAX_ASPECT_RATIO:g} "
            "to 1 a radiograph may have: padded to a square, the film would be a sliver of the model's input"
        )


def jpeg_reduction(width: int, height: int, at_least: int) -> int:
    """The largest libjpeg reduction k (decoding at 1/k) that leaves the film's longer side at least
    ``at_least`` pixels (1: none). The longer side, because ``resize_square`` pads the film to a square of
    that side before resizing it to the stored size: at least that size, the resize still shrinks."""
    longer = max(width, height)
    return next((k for k in JPEG_REDUCTIONS if -(-longer // k) >= at_least), 1)


def decode_gray(data: bytes, name: str = "<bytes>", *, at_least: int | None = None) -> np.ndarray:
    """Encoded PNG/JPEG bytes -> 2-D uint8 grayscale.

    The size is read from the header and checked (``check_size``) before decoding; a header that does
    not say is refused, since nothing would bound what the decoder allocates. Colour images are
    converted with luminance weights, alpha is dropped, and 16-bit images are scaled to 8 bits by
    their own min..max range (not clipped: many 16-bit films use 12 bits).

    ``at_least``: a JPEG is decoded at the largest reduction that keeps its longer side at least this
    many pixels (``jpeg_reduction``; colour as libjpeg's luma), for a film about to be shrunk to that
    size; without it, or when no reduction applies, at full size.
    """
    if not (data.startswith(PNG_MAGIC) or data.startswith(_JPEG_MAGIC)):
        raise ImageError(f"{name}: not a PNG or JPEG image")
    size = _header_size(data)
    if size is None:
        kind = "PNG IHDR chunk" if data.startswith(PNG_MAGIC) else "JPEG frame header (SOF) before the scan"
        raise ImageError(f"{name}: corrupt or unreadable image: no {kind}, so no size to check before decoding")
    check_size(name, *size)
    reduction = jpeg_reduction(*size, at_least) if at_least and data.startswith(_JPEG_MAGIC) else 1
    # OpenCV's reduced grayscale reads turn the film by its EXIF orientation, IMREAD_UNCHANGED does not: the
    # orientation is applied once, by the caller that reads the tag (radiograph_files), for every path.
    flag = JPEG_REDUCTIONS[reduction] | cv2.IMREAD_IGNORE_ORIENTATION if reduction > 1 else cv2.IMREAD_UNCHANGED
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    except cv2.error as err:
        raise ImageError(f"{name}: corrupt or unreadable image ({err.msg.strip()})") from err
    if image is None:
        raise ImageError(f"{name}: corrupt or unreadable image")
    expected = tuple(-(-side // reduction) for side in size)  # libjpeg rounds a reduced side up
    if image.shape[:2] != expected[::-1]:
        raise ImageError(f"{name}: decoded {image.shape[1]}x{image.shape[0]} pixels, its header {size[0]}x{size[1]}")
    try:
        return to_gray_uint8(image)
    except ImageError as err:
        raise ImageError(f"{name}: {err}") from err


def to_gray_uint8(image: np.ndarray) -> np.ndarray:
    """Any decoded array (H,W), (H,W,2|3|4), uint8 or uint16/float -> (H,W) uint8.

    Alpha is ignored, not composited: a radiograph's alpha is opaque, and compositing a transparent
    film on black would invent pixels. OpenCV already expands gray+alpha PNGs to BGRA.
    """
    if image.ndim == 3:
        channels = image.shape[2]
        if channels == 2:  # LA: luminance + alpha
            image = image[..., 0]
        elif channels in (3, 4):  # OpenCV decodes to BGR(A)
            image = cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2GRAY)
        else:
            raise ImageError(f"unsupported channel count {channels}")
    if image.dtype != np.uint8:
        image = image.astype(np.float64)
        lo, hi = float(image.min()), float(image.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        image = np.round((image - lo) * scale).astype(np.uint8)
    return image


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """A file on disk -> (H,W) uint8; errors name the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ImageError(f"{path}: cannot read ({err.strerror})") from err
    return decode_gray(data, str(path))


def _padding(height: int, width: int) -> tuple[int, int, int]:
    """(side, top, left): the centred square a film is padded to, and the film's offset in it."""
    side = max(height, width)
    return side, (side - height) // 2, (side - width) // 2


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """A square image -> ``size`` square: area interpolation when shrinking, linear when enlarging
    (where area would be nearest-neighbour); the image itself when it already has that size."""
    if image.shape[0] == size:
        return image
    interpolation = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Pads to a square (zeros, centred) then resizes to ``size`` with area interpolation.

    Padding rather than cropping keeps all of the chest; NIH films are already square, so for them
    this is a plain resize.
    """
    height, width = image.shape
    side, top, left = _padding(height, width)
    if height != width:
        image = cv2.copyMakeBorder(
            image, top, side - height - top, left, side - width - left, cv2.BORDER_CONSTANT, value=0
        )
    return resize(image, size)


def model_input(gray: np.ndarray, stored_size: int, image_size: int) -> np.ndarray:
    """(H, W) uint8 -> (image_size, image_size, 1) uint8 for inference on a file: the builder's step
    (``resize_square`` to the stored size) then the eval pipeline's (``resize`` to the model's size)."""
    return resize(resize_square(gray, stored_size), image_size)[..., None]


def scale_box(
    box: tuple[float, float, float, float], shape: tuple[int, int], size: int
) -> tuple[float, float, float, float]:
    """An (x, y, w, h) box in a film of ``shape`` -> the same box in its ``resize_square`` output.

    Box edges are continuous coordinates (pixel ``i`` spans ``[i, i + 1)``), which a resize scales
    exactly; padding shifts them by the film's offset in its square.
    """
    side, top, left = _padding(*shape)
    scale = size / side
    x, y, w, h = box
    return (x + left) * scale, (y + top) * scale, w * scale, h * scale


def encode_png(image: np.ndarray) -> bytes:
    """Stored (uncompressed) PNG: decoding it in the input pipeline takes about a third of the time
    of a deflated one (230 vs 620 us at 256 px, measured in BENCHMARKS.md), the cost that
    bounds images/s per core, for ~40% more disk on noisy films. Rows are not filtered either
    (filter type 0), so the pixels are the PNG's bytes as they stand and the pipeline reads them
    without libpng (``records.decode_png``)."""
    ok, buffer = cv2.imencode(
        ".png",
        image,
        [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE],
    )
    if not ok:
        raise ImageError("PNG encoding failed")
    return buffer.tobytes()


def load_for_build(
    task: tuple[str, int, tuple[float, float, float, float] | None],
) -> tuple[bytes | None, tuple[float, float, float, float] | str | None, str | None]:
    """The builder's worker: (path, size, box or None) -> (PNG of the square, scaled box or None,
    ``pixel_digest`` of the source's pixels).

    ``box`` may also be a (k, 4) array of boxes (the 14-finding task's): each is scaled.

    A bad file gives (None, the reason naming it, None) instead of raising, so the builder can skip it.
    """
    path, size, box = task
    try:
        gray = read_gray(path)
    except ImageError as err:
        return None, str(err), None
    if box is not None:
        box = scale_box(box, gray.shape, size) if np.ndim(box) == 1 else [scale_box(b, gray.shape, size) for b in box]
    return encode_png(resize_square(gray, size)[..., None]), box, pixel_digest(gray)


def pixel_digest(gray: np.ndarray) -> str:
    """sha256 of a decoded film's shape and 8-bit pixels: the same for two builds of one download at any
    stored size, different for other pixels under the same name (however the file encodes them)."""
    digest = hashlib.sha256(f"{gray.shape[0]}x{gray.shape[1]}:".encode())
    digest.update(np.ascontiguousarray(gray, np.uint8).tobytes())
    return digest.hexdigest()
