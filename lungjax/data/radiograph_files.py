"""One radiograph file (DICOM, PNG or JPEG) -> the 8-bit film a reader would see, with what is odd about it.

For inference (``--mode predict`` and the standalone predictor): it imports only numpy, OpenCV and
:mod:`lungjax.data.images`, and pydicom only when a DICOM file comes, so serving a model needs none
of the training stack. Anything that makes a film unreadable, or one the model was not trained on
(several frames, colour, a lateral view), is an :class:`images.ImageError` naming the file and the
reason; anything that makes the prediction doubtful but still possible is a warning, a full sentence
in :attr:`Radiograph.warnings`, so no input check is ever silent.

Nothing is decoded before the header is checked. Only a regular file is opened (a FIFO would wait for
a writer), of at most ``images.MAX_FILE_BYTES``; a dangling or looping symbolic link is named as
such. The size a PNG's IHDR, a JPEG's frame header or a DICOM's Rows/Columns declare must pass
``images.check_size`` (pixel count and side ratio), which bounds what decoding and the padding to a
square allocate. File names that are not UTF-8 appear with their odd bytes as ``\\xNN`` escapes.

DICOM is displayed as a viewer displays it (PS3.3 C.11): the modality LUT (Modality LUT Sequence, or
RescaleSlope/Intercept), then the VOI LUT Sequence or else the first window (WindowCenter/Width with
VOILUTFunction LINEAR, LINEAR_EXACT or SIGMOID), whose output range ymin..ymax is 0..255 directly,
then MONOCHROME1 inverted so that bright is dense. A file with neither VOI LUT nor window has its own
range scaled to 8 bits, as the dataset builder does for 16-bit PNGs. PNG and JPEG go through
:func:`images.decode_gray` (16-bit films scaled by their range), then their EXIF orientation, which
OpenCV's ``IMREAD_UNCHANGED`` ignores, is applied.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import logging
import os
import stat
import struct
from pathlib import Path

import cv2
import numpy as np

from lungjax.data import images

DICOM_SUFFIXES = (".dcm", ".dicom")
DICOM_MAGIC_OFFSET = 128  # DICOM Part 10 files: a 128-byte preamble, then b"DICM"
DICOM_MAGIC = b"DICM"
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# What a path that is not a regular file is, for the one line that refuses it.
FILE_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}
FRONTAL_VIEWS = ("PA", "AP")
LATERAL_VIEWS = ("LL", "RL")  # and any ViewPosition containing "LAT" (LAT, LATERAL, LLAT, ...)
# BodyPartExamined values that are the chest: any containing one of these (CHEST, THORAX, CHEST_ABDOMEN, LUNG ...)
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG")
UNIFORM_STD = 2.0  # grey levels: below this the 8-bit film shows no anatomy
# Inversion check on a 32 x 32 thumbnail: the mediastinum and spine (the middle sixth of the width) are
# denser, so brighter, than the lung fields either side, over the lung rows (a quarter to two thirds
# down, below the neck and above the diaphragm). Collimation borders, padding and labels lie outside
# these bands. On 1,400 phantom films of 16 to 128 px the midline was 28 or more grey levels brighter
# (as much darker once inverted); the margin spares films whose midline barely stands out (a white-out).
INVERSION_GRID = 32
LUNG_ROWS = slice(8, 22)
MIDLINE_COLUMNS = slice(13, 19)
LUNG_COLUMNS = (slice(5, 12), slice(20, 27))
INVERSION_MARGIN = 10.0  # grey levels the midline must be darker than the lungs by for a warning
# A VOI LUT's output depth is taken from its largest entry (at least 8 bits) where its descriptor says
# otherwise: descriptors that say 16 for 8- or 12-bit data are common (Agfa CRs among them), and
# Cornerstone, Horos and dcm4che read the data's depth.
LUT_MIN_BITS = 8
EXIF_ORIENTATION_TAG = 0x0112
JPEG_APP1 = 0xE1  # the JPEG segment EXIF is stored in
# EXIF Orientation -> the stored pixels turned as they are meant to be seen (TIFF 6.0; as OpenCV's
# orientation-applying flags do).
ORIENTATIONS = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.T,
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].T,
    8: lambda a: np.rot90(a),
}


@dataclasses.dataclass(frozen=True)
class Radiograph:
    """A film as displayed, and the sentences that say what makes its prediction doubtful."""

    pixels: np.ndarray  # (H, W) uint8, bright = dense
    warnings: tuple[str, ...]
    source: str  # "dicom" | "png" | "jpeg"


def read(path: str | os.PathLike, *, allow_lateral: bool = False, at_least: int | None = None) -> Radiograph:
    """A DICOM, PNG or JPEG file -> :class:`Radiograph`; every failure is an ImageError naming the file.

    A lateral DICOM (the model was trained on frontal films) is refused unless ``allow_lateral``, when
    it is read with a warning. ``at_least``: a JPEG about to be shrunk to this size is decoded at a
    reduced scale (``images.decode_gray``).
    """
    path = Path(path)
    name = display_name(path)
    data = _file_bytes(path, name)
    if path.suffix.lower() in DICOM_SUFFIXES or data[DICOM_MAGIC_OFFSET:].startswith(DICOM_MAGIC):
        pixels, warnings, frontal = _read_dicom(data, name, allow_lateral)
        source = "dicom"
    else:
        pixels, warnings = _read_picture(data, name, at_least)
        frontal, source = True, "png" if data.startswith(images.PNG_MAGIC) else "jpeg"
    return Radiograph(pixels, tuple(warnings + _pixel_warnings(pixels, frontal)), source)


def display_name(path: str | os.PathLike) -> str:
    """The path as text that any UTF-8 output takes: a file name that is not UTF-8 (Python holds its
    bytes as lone surrogates, which a UTF-8 writer refuses) shows its undecodable bytes as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _file_bytes(path: Path, name: str) -> bytes:
    """The bytes of a regular file of at most ``images.MAX_FILE_BYTES``; anything else is an ImageError
    said from the file's status alone: a FIFO or device is never opened (opening a FIFO waits for a
    writer), and a dangling or looping symbolic link is named as such."""
    try:
        status = path.stat()
    except OSError as err:
        raise images.ImageError(f"{name}: {_unreachable(path, err)}") from err
    kind = stat.S_IFMT(status.st_mode)
    if kind != stat.S_IFREG:
        what = FILE_KINDS.get(kind, "not a regular file")
        link = f"a symbolic link to {display_name(os.readlink(path))}, " if path.is_symlink() else ""
        raise images.ImageError(f"{name}: {link}{what}, not an image file: not opened")
    if status.st_size > images.MAX_FILE_BYTES:
        raise images.ImageError(
            f"{name}: {status.st_size} bytes, over the {images.MAX_FILE_BYTES} an image of at most "
            f"{images.MAX_PIXELS} pixels needs: not read"
        )
    try:
        return path.read_bytes()
    except OSError as err:
        raise images.ImageError(f"{name}: cannot read ({err.strerror})") from err


def _unreachable(path: Path, err: OSError) -> str:
    """Why ``path`` has no status: its symbolic links lead nowhere, or in a circle, or it cannot be read."""
    if err.errno == errno.ELOOP:
        return "a symbolic link that leads back to itself (a loop): not read"
    if err.errno == errno.ENOENT and path.is_symlink():
        return f"a dangling symbolic link (to {display_name(os.readlink(path))}, which does not exist): not read"
    return f"cannot read ({err.strerror})"


def _pixel_warnings(pixels: np.ndarray, frontal: bool) -> list[str]:
    """What the displayed pixels themselves say: a blank film, or one that looks inverted.

    The inversion check is for frontal films (a lateral's midline is not the mediastinum) and is left
    out on a blank one, whose bands differ by noise only.
    """
    spread = float(pixels.std())
    if spread < UNIFORM_STD:
        return [
            f"The image is nearly uniform (standard deviation {spread:.1f} grey levels): it shows no anatomy, "
            "so the prediction for it means nothing."
        ]
    contrast = _midline_contrast(pixels) if frontal else 0.0
    if contrast < -INVERSION_MARGIN:
        return [
            f"The image looks inverted: its midline (mediastinum and spine) is {-contrast:.0f} grey levels darker "
            "than the lung fields, where a chest film shows it brighter; the model expects bright = dense, so "
            "its prediction for this image is likely wrong."
        ]
    return []


def _midline_contrast(pixels: np.ndarray) -> float:
    """Mean grey level of the midline band minus that of the two lung bands, on a 32 x 32 thumbnail."""
    thumbnail = cv2.resize(pixels, (INVERSION_GRID, INVERSION_GRID), interpolation=cv2.INTER_AREA)
    profile = thumbnail[LUNG_ROWS].astype(np.float64).mean(axis=0)
    lungs = np.concatenate([profile[band] for band in LUNG_COLUMNS])
    return float(profile[MIDLINE_COLUMNS].mean() - lungs.mean())


def _read_picture(data: bytes, name: str, at_least: int | None = None) -> tuple[np.ndarray, list[str]]:
    """PNG/JPEG bytes -> (H, W) uint8 turned by their EXIF orientation, and a warning for a bad one."""
    pixels = images.decode_gray(data, name, at_least=at_least)
    exif = _exif(data)
    orientation = None if exif is None else _tiff_orientation(exif)
    if orientation is None:
        return pixels, []
    if orientation not in ORIENTATIONS:
        return pixels, [
            f"The EXIF Orientation is {orientation}, not one of 1 to 8, so the image was read as stored: "
            "if it is rotated or mirrored, the prediction is for a film the model never saw that way."
        ]
    return np.ascontiguousarray(ORIENTATIONS[orientation](pixels)), []


def _exif(data: bytes) -> bytes | None:
    """The TIFF-structured EXIF block of a PNG (eXIf chunk) or JPEG (APP1 "Exif" segment), or None."""
    if data.startswith(images.PNG_MAGIC):
        position = len(images.PNG_MAGIC)
        while position + 8 <= len(data):
            length = int.from_bytes(data[position : position + 4], "big")
            if data[position + 4 : position + 8] == b"eXIf":
                return data[position + 8 : position + 8 + length]
            position += 12 + length  # length, type, data, CRC
        return None
    for marker, start, end in images.jpeg_segments(data):
        if marker == JPEG_APP1 and data[start : start + 6] == b"Exif\x00\x00":
            return data[start + 6 : end]
    return None


def _tiff_orientation(tiff: bytes) -> int | None:
    """The Orientation entry of the first image directory of a TIFF structure, or None."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return None
    directory = struct.unpack_from(order + "I", tiff, 4)[0]
    if directory + 2 > len(tiff):
        return None
    entries = struct.unpack_from(order + "H", tiff, directory)[0]
    end = min(directory + 2 + 12 * entries, len(tiff) - 11)
    for entry in range(directory + 2, end, 12):
        tag, kind = struct.unpack_from(order + "HH", tiff, entry)
        if tag == EXIF_ORIENTATION_TAG and kind == 3:  # SHORT
            return struct.unpack_from(order + "H", tiff, entry + 8)[0]
    return None


def _read_dicom(data: bytes, name: str, allow_lateral: bool) -> tuple[np.ndarray, list[str], bool]:
    """A single-frame grayscale DICOM -> ((H, W) uint8 as displayed, warnings, whether it is frontal).

    The header is read and checked (frames, size, colour, view) before the pixel data are decoded, so a
    decompression bomb or a film the model cannot read costs nothing.
    """
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError as err:
        raise images.ImageError(f"{name}: reading DICOM needs pydicom: pip install 'lungjax[dicom]'") from err
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        samples = int(dataset.get("SamplesPerPixel", 1) or 1)
        photometric = str(dataset.get("PhotometricInterpretation", "")).strip()
        view = str(dataset.get("ViewPosition", "") or "").strip().upper()
        body_part = str(dataset.get("BodyPartExamined", "") or "").strip().upper()
    except (InvalidDicomError, AttributeError, ValueError, OSError, EOFError) as err:
        raise images.ImageError(f"{name}: not a readable DICOM image ({err})") from err
    if frames > 1:
        raise images.ImageError(f"{name}: multi-frame DICOM ({frames} frames) is not supported: one film per file")
    images.check_size(name, columns, rows)
    if samples != 1 or photometric not in MONOCHROME:
        raise images.ImageError(
            f"{name}: colour DICOM is not supported, only MONOCHROME1/2 with one sample per pixel "
            f"(PhotometricInterpretation {photometric or 'missing'}, {samples} samples per pixel)"
        )
    lateral = view in LATERAL_VIEWS or "LAT" in view
    if lateral and not allow_lateral:
        raise images.ImageError(
            f"{name}: lateral view refused (ViewPosition {view}): the model was trained on frontal PA/AP films "
            "only; read(..., allow_lateral=True) reads it with a warning"
        )
    warnings = []
    if lateral:
        warnings.append(
            f"ViewPosition is {view}, a lateral view: the model was trained on frontal PA/AP films only, so its "
            "prediction for this film is unreliable (and the inversion check, made for frontal films, was skipped)."
        )
    elif view and view not in FRONTAL_VIEWS:
        warnings.append(
            f"ViewPosition is {view}, not a frontal PA or AP view: the model was trained on PA/AP films only, so "
            "its prediction for this film may be unreliable."
        )
    if body_part and not any(part in body_part for part in CHEST_BODY_PARTS):
        warnings.append(
            f"BodyPartExamined is {body_part}, not the chest: the model reads chest films only, so its prediction "
            "for this image is not meaningful."
        )
    decoder_log = logging.getLogger("pydicom")  # it logs each failed decoder's traceback: our line says it
    previous_level = decoder_log.level
    decoder_log.setLevel(logging.CRITICAL)
    try:
        stored = dataset.pixel_array
    except Exception as err:  # pydicom's decoders raise many types: a missing codec, damaged pixel data
        reason = " ".join(str(err).split())[:300]
        raise images.ImageError(f"{name}: cannot decode the DICOM pixel data ({type(err).__name__}: {reason})") from err
    finally:
        decoder_log.setLevel(previous_level)
    try:
        pixels, display_warnings = _display(dataset, stored, photometric == "MONOCHROME1")
    except (AttributeError, ValueError, TypeError, IndexError) as err:
        raise images.ImageError(f"{name}: unusable DICOM rescale, LUT or window attributes ({err})") from err
    return pixels, warnings + display_warnings, not lateral


def _display(dataset, stored: np.ndarray, monochrome1: bool) -> tuple[np.ndarray, list[str]]:
    """Stored values -> 8-bit display pixels (bright = dense): modality LUT, VOI, then MONOCHROME1 inverted."""
    values = _modality(dataset, stored)
    shown, warnings = _voi(dataset, values)
    if shown is None:  # no window: the film's own range, as the builder scales 16-bit films
        if monochrome1:
            values = values.max() + values.min() - values
        return images.to_gray_uint8(values), warnings
    gray = np.rint(shown * 255.0).astype(np.uint8)
    return (255 - gray if monochrome1 else gray), warnings  # MONOCHROME1: the VOI output's minimum is white


def _modality(dataset, stored: np.ndarray) -> np.ndarray:
    """PS3.3 C.11.1: the Modality LUT Sequence when present, else RescaleSlope/Intercept (default 1 and 0,
    when absent or empty; a slope of 0, which the standard's formula allows but no modality writes, is refused)."""
    if dataset.get("ModalityLUTSequence"):
        table, first, _ = _lut(dataset, dataset.ModalityLUTSequence[0])
        return _lookup(table, first, stored)
    slope, intercept = _first(dataset, "RescaleSlope"), _first(dataset, "RescaleIntercept")
    slope, intercept = 1.0 if slope is None else slope, 0.0 if intercept is None else intercept
    if slope == 0:
        raise ValueError(f"RescaleSlope 0 makes every pixel the intercept ({intercept:g}): a blank film")
    if not (np.isfinite(slope) and np.isfinite(intercept)):
        raise ValueError(f"RescaleSlope {slope} and RescaleIntercept {intercept} must be finite")
    return stored.astype(np.float64) * slope + intercept


def _voi(dataset, values: np.ndarray) -> tuple[np.ndarray | None, list[str]]:
    """PS3.3 C.11.2: the VOI LUT Sequence, else the first window, as a fraction 0..1 of the output range.

    None when the file carries neither, or a window that cannot be applied (then with a warning).
    """
    if dataset.get("VOILUTSequence"):
        table, first, declared = _lut(dataset, dataset.VOILUTSequence[0])
        bits = _data_bits(declared, int(table.max()))
        shown = _lookup(table, first, values) / (2**bits - 1)
        if bits == declared:
            return shown, []
        return shown, [
            f"The VOI LUT's descriptor declares {declared}-bit entries but its data are {bits}-bit (largest entry "
            f"{int(table.max())}), so they were read as {bits}-bit, as viewers do: a file whose descriptor is right "
            "and whose data are wrong would be displayed, and predicted, differently."
        ]
    center, width = _first(dataset, "WindowCenter"), _first(dataset, "WindowWidth")
    if center is None and width is None:
        return None, []
    function = str(dataset.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    if center is not None and width is not None:
        if function == "LINEAR" and width >= 1:  # C.11.2.1.2.1
            low = center - 0.5 - (width - 1) / 2
            return (np.clip((values - low) / (width - 1), 0, 1) if width > 1 else (values > low) * 1.0), []
        if function == "LINEAR_EXACT" and width > 0:  # C.11.2.1.3.2
            return np.clip((values - center) / width + 0.5, 0, 1), []
        if function == "SIGMOID" and width > 0:  # C.11.2.1.3.1, 1 / (1 + exp(-4 (x - c) / w)) without overflow
            return 0.5 + 0.5 * np.tanh(2 * (values - center) / width), []
    return None, [
        f"The file's window (WindowCenter {center}, WindowWidth {width}, VOILUTFunction {function}) cannot be "
        "applied (the standard needs both values, a width of at least 1 for LINEAR or above 0 for LINEAR_EXACT "
        "and SIGMOID), so the film's own range was scaled to 8 bits: its contrast, and so the prediction, may "
        "differ from what a viewer shows."
    ]


def _data_bits(declared: int, largest: int) -> int:
    """The bits a VOI LUT's entries really have: more than declared when an entry exceeds the declared
    range (it would wrap), fewer (at least LUT_MIN_BITS) when a descriptor of more than 8 bits holds
    narrower data (the film would be near black); else what the descriptor declares."""
    found = largest.bit_length()
    if found > declared:
        return found
    if declared > LUT_MIN_BITS and found < declared:
        return max(found, LUT_MIN_BITS)
    return declared


def _first(dataset, keyword: str) -> float | None:
    """The first value of a numeric attribute that may hold several (alternative windows), or None."""
    if keyword not in dataset or dataset[keyword].VM == 0:
        return None
    element = dataset[keyword]
    return float(element.value[0] if element.VM > 1 else element.value)


def _lut(dataset, item) -> tuple[np.ndarray, int, int]:
    """A LUT sequence item -> (its entries as float64, the first value mapped, the bits its descriptor declares).

    LUTData in OW holds 16-bit words in the file's byte order, or two 8-bit entries per word where its
    descriptor declares 8 bits and the bytes number the entries (PS3.3 C.11.1.1.1 and C.11.2.1.1: the
    data are stored as 8 bits allocated then); a word per 8-bit entry (the high byte padding, which the
    standard notes some writers do) is read as words.
    """
    entries, first, bits = (int(value) for value in item.LUTDescriptor)
    entries = entries or 2**16
    if not 1 <= bits <= 16:
        raise ValueError(f"LUTDescriptor gives {bits} bits per entry")
    data = item.LUTData
    if isinstance(data, bytes):
        little = dataset.original_encoding[1] is not False
        packed = bits <= 8 and len(data) in (entries, entries + 1)  # 8-bit entries, padded to an even length
        table = np.frombuffer(data, np.uint8 if packed else "<u2" if little else ">u2")
    else:
        table = np.asarray(data).ravel()
    if table.size < entries:
        raise ValueError(f"LUTData has {table.size} entries, its LUTDescriptor {entries}")
    return table[:entries].astype(np.float64), first, bits


def _lookup(table: np.ndarray, first: int, values: np.ndarray) -> np.ndarray:
    """A LUT applied to values: those below the first mapped one take the first entry, those past the
    end the last (C.11.1.1)."""
    return table[np.clip(np.rint(values) - first, 0, len(table) - 1).astype(np.intp)]
