"""Reading one radiograph for inference: DICOM display (LUTs, windows, MONOCHROME1), refusals, EXIF
orientation, and the warnings that say what makes a prediction doubtful. Every file is made here."""

import contextlib
import logging
import os
import re
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import write_dicom

from lungjax.data import images, phantom, radiograph_files

pydicom = pytest.importorskip("pydicom")

STACK = ("flax", "optax", "orbax", "grain", "tensorflow_datasets", "jax", "pandas", "scipy", "sklearn", "matplotlib")
# Stored values 0..5118 (a ramp down the rows, so neither midline nor lungs stand out), rescaled by 2x - 1024.
STORED = (np.arange(40 * 64, dtype=np.uint16) * 2).reshape(40, 64)
SLOPE, INTERCEPT = 2.0, -1024.0
RESCALED = STORED * SLOPE + INTERCEPT


def lut_item(first: int, bits: int, table: np.ndarray, vr: str = "US"):
    """A LUT sequence item: LUTDescriptor (entries, first mapped value, bits) and LUTData as US or OW."""
    item = pydicom.Dataset()
    item.LUTDescriptor = [len(table), first, bits]
    data = table.astype("<u2").tobytes() if vr == "OW" else [int(v) for v in table]
    item.add_new(0x00283006, vr, data)
    return item


def voi_reference(x: np.ndarray, c: float, w: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (LINEAR) and C.11.2.1.3 (SIGMOID, LINEAR_EXACT) as written there, output 0..255."""
    ymin, ymax = 0.0, 255.0
    if function == "LINEAR":
        y = ((x - (c - 0.5)) / (w - 1) + 0.5) * (ymax - ymin) + ymin
        y = np.where(x <= c - 0.5 - (w - 1) / 2, ymin, np.where(x > c - 0.5 + (w - 1) / 2, ymax, y))
    elif function == "LINEAR_EXACT":
        y = ((x - c) / w + 0.5) * (ymax - ymin) + ymin
        y = np.where(x <= c - w / 2, ymin, np.where(x > c + w / 2, ymax, y))
    else:
        y = (ymax - ymin) / (1 + np.exp(-4 * (x - c) / w)) + ymin
    return np.round(y).astype(np.uint8)


def range_reference(x: np.ndarray) -> np.ndarray:
    """A film without a window: its own min..max scaled to 0..255."""
    return np.round((x - x.min()) * 255.0 / (x.max() - x.min())).astype(np.uint8)


def lut_reference(x: np.ndarray, first: int, table: np.ndarray) -> np.ndarray:
    """PS3.3 C.11.1.1: values below the first mapped one take entry 0, those past the end the last."""
    return table[np.clip(np.round(x).astype(np.int64) - first, 0, len(table) - 1)].astype(np.float64)


def with_exif(data: bytes, orientation: int, order: str = "<") -> bytes:
    """PNG or JPEG bytes with an EXIF block holding one Orientation entry (TIFF: header, IFD0, no next IFD)."""
    tiff = (b"II*\x00" if order == "<" else b"MM\x00*") + struct.pack(order + "I", 8)
    tiff += struct.pack(order + "H", 1) + struct.pack(order + "HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff += struct.pack(order + "I", 0)
    if data.startswith(b"\x89PNG"):
        chunk = len(tiff).to_bytes(4, "big") + b"eXIf" + tiff + zlib.crc32(b"eXIf" + tiff).to_bytes(4, "big")
        return data[:33] + chunk + data[33:]  # after the signature and IHDR
    after_app0 = 4 + int.from_bytes(data[4:6], "big")  # OpenCV writes SOI, then a JFIF APP0
    payload = b"Exif\x00\x00" + tiff
    return data[:after_app0] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[after_app0:]


@pytest.fixture(scope="module")
def films():
    """Phantom chest films at 32 px: the six classes and three 14-finding films (several findings each)."""
    rng = np.random.default_rng(7)
    out = [phantom.render_radiograph(label, phantom.sample_anatomy(rng), rng, size=32)[0] for label in range(6)]
    for findings in (("Effusion", "Cardiomegaly"), ("Mass", "Pneumothorax"), ("Emphysema", "Infiltration")):
        out.append(phantom.render_findings(findings, phantom.sample_anatomy(rng), rng, size=32)[0])
    return out


def png(path, pixels: np.ndarray):
    cv2.imwrite(str(path), pixels)
    return path


def test_import_loads_no_training_stack_and_pydicom_only_for_dicom(tmp_path):
    dicom = write_dicom(tmp_path / "film.dcm", STORED)
    code = (
        "import sys, lungjax.data.radiograph_files as rf\n"
        f"print([name for name in {STACK!r} + ('pydicom',) if name in sys.modules])\n"
        f"rf.read({str(dicom)!r})\n"
        f"print([name for name in {STACK!r} if name in sys.modules], 'pydicom' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines() == ["[]", "[] True"]


def test_dicom_without_window_scales_its_own_range(tmp_path):
    radiograph = radiograph_files.read(
        write_dicom(tmp_path / "f.dcm", STORED, RescaleSlope=SLOPE, RescaleIntercept=INTERCEPT)
    )
    np.testing.assert_array_equal(radiograph.pixels, range_reference(RESCALED))
    assert radiograph.source == "dicom" and radiograph.warnings == ()


@pytest.mark.parametrize(
    "function, center, width",
    [
        (None, 4000.0, 3001.0),  # no VOILUTFunction: LINEAR
        ("LINEAR", [4000.0, 100.0], [3001.0, 50.0]),  # several windows: the first
        ("LINEAR_EXACT", 4000.0, 3000.0),
        ("SIGMOID", 4000.0, 3000.0),
    ],
)
def test_dicom_window_after_rescale_as_the_standard_defines_it(tmp_path, function, center, width):
    attributes = {"RescaleSlope": SLOPE, "RescaleIntercept": INTERCEPT, "WindowCenter": center, "WindowWidth": width}
    if function is not None:
        attributes["VOILUTFunction"] = function
    mono2 = radiograph_files.read(write_dicom(tmp_path / "mono2.dcm", STORED, **attributes))
    mono1 = radiograph_files.read(write_dicom(tmp_path / "mono1.dcm", STORED, "MONOCHROME1", **attributes))
    c, w = (v[0] if isinstance(v, list) else v for v in (center, width))
    expected = voi_reference(RESCALED, c, w, function or "LINEAR")
    np.testing.assert_array_equal(mono2.pixels, expected)
    np.testing.assert_array_equal(mono1.pixels, 255 - expected)  # inverted after the window: bright = dense
    unwindowed = range_reference(RESCALED)
    assert np.mean(mono2.pixels != unwindowed) > 0.9 and np.abs(mono2.pixels - unwindowed.astype(float)).max() > 60
    assert mono2.warnings == () and mono1.warnings == ()


@pytest.mark.parametrize("vr", ["US", "OW"])
def test_dicom_voi_lut_sequence_is_preferred_to_the_window(tmp_path, vr):
    table = np.round(1023 * np.sqrt(np.arange(1024) / 1023)).astype(np.uint16)  # 10 bits, not linear
    path = write_dicom(
        tmp_path / "lut.dcm",
        STORED,
        RescaleSlope=SLOPE,
        RescaleIntercept=INTERCEPT,
        WindowCenter=4000.0,
        WindowWidth=3001.0,
        VOILUTSequence=pydicom.Sequence([lut_item(500, 10, table, vr)]),
    )
    expected = np.round(lut_reference(RESCALED, 500, table) / 1023 * 255).astype(np.uint8)
    np.testing.assert_array_equal(radiograph_files.read(path).pixels, expected)


def test_dicom_modality_lut_sequence_then_window(tmp_path):
    table = (np.arange(4096, dtype=np.int64) ** 2 // 4096).astype(np.uint16)  # 12 bits, not linear
    path = write_dicom(
        tmp_path / "modality.dcm",
        STORED,
        ModalityLUTSequence=pydicom.Sequence([lut_item(16, 12, table)]),
        WindowCenter=2000.0,
        WindowWidth=2001.0,
    )
    modality = lut_reference(STORED.astype(np.float64), 16, table)
    np.testing.assert_array_equal(radiograph_files.read(path).pixels, voi_reference(modality, 2000.0, 2001.0, "LINEAR"))


@pytest.mark.parametrize(
    "attributes, said",
    [
        ({"VOILUTFunction": "CUBIC", "WindowCenter": 10.0, "WindowWidth": 100.0}, "CUBIC"),
        ({"WindowWidth": 100.0}, "None"),
    ],
)
def test_dicom_window_that_cannot_be_applied_falls_back_with_a_warning(tmp_path, attributes, said):
    radiograph = radiograph_files.read(write_dicom(tmp_path / "w.dcm", STORED, **attributes))
    np.testing.assert_array_equal(radiograph.pixels, range_reference(STORED.astype(np.float64)))
    (warning,) = radiograph.warnings
    assert said in warning and "own range" in warning and "viewer" in warning


@pytest.mark.parametrize(
    "stored, photometric, attributes, reason",
    [
        (np.zeros((2, 8, 8), np.uint16), "MONOCHROME2", {}, "multi-frame DICOM (2 frames) is not supported"),
        (np.zeros((8, 8, 3), np.uint8), "RGB", {}, "colour DICOM is not supported"),
        (np.zeros((8, 8), np.uint16), "YBR_FULL", {"SamplesPerPixel": 1}, "PhotometricInterpretation YBR_FULL"),
        (np.zeros((8, 8), np.uint16), "MONOCHROME2", {"Rows": 10_000, "Columns": 10_000}, "exceeds the limit"),
        (STORED, "MONOCHROME2", {"ViewPosition": "LL"}, "lateral view refused"),
        (STORED, "MONOCHROME2", {"ViewPosition": "rl"}, "lateral view refused"),
        (STORED, "MONOCHROME2", {"ViewPosition": "Lateral"}, "lateral view refused"),
    ],
)
def test_dicom_refusals_name_the_file_and_the_reason(tmp_path, stored, photometric, attributes, reason):
    path = write_dicom(tmp_path / "refused.dcm", stored, photometric, **attributes)
    with pytest.raises(images.ImageError, match=re.escape(reason)) as error:
        radiograph_files.read(path)
    assert str(error.value).startswith(f"{path}: ")


def test_a_lateral_view_is_read_when_allowed_with_a_warning_and_no_inversion_check(tmp_path, films):
    inverted = (255 - films[0]).astype(np.uint16) * 16  # a frontal check would call this inverted
    radiograph = radiograph_files.read(
        write_dicom(tmp_path / "lat.dcm", inverted, ViewPosition="lat"), allow_lateral=True
    )
    (warning,) = radiograph.warnings
    assert "LAT, a lateral view" in warning and "frontal PA/AP films only" in warning
    frontal = radiograph_files.read(write_dicom(tmp_path / "pa.dcm", inverted, ViewPosition="PA"))
    assert "looks inverted" in " ".join(frontal.warnings)


@pytest.mark.parametrize(
    "attributes, said",
    [
        ({"BodyPartExamined": "ABDOMEN"}, "BodyPartExamined is ABDOMEN, not the chest"),
        ({"BodyPartExamined": "chest"}, None),
        ({"BodyPartExamined": "THORAX"}, None),
        ({"ViewPosition": "RLD"}, "ViewPosition is RLD, not a frontal PA or AP view"),
        ({"ViewPosition": "ap"}, None),
    ],
)
def test_dicom_body_part_and_view_warnings(tmp_path, attributes, said):
    warnings = radiograph_files.read(write_dicom(tmp_path / "w.dcm", STORED, **attributes)).warnings
    if said is None:
        assert warnings == ()
    else:
        (warning,) = warnings
        assert said in warning and "prediction" in warning


def test_dicom_decoder_failures_are_one_error_and_no_logged_traceback(tmp_path, caplog):
    path = write_dicom(tmp_path / "jp2.dcm", np.zeros((8, 8), np.uint16))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"  # JPEG 2000 lossless, but the data are not
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 40])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    caplog.set_level("DEBUG", logger="pydicom")
    with pytest.raises(images.ImageError, match="cannot decode the DICOM pixel data"):
        radiograph_files.read(path)
    assert not [r for r in caplog.records if r.name.startswith("pydicom") and r.levelno >= logging.WARNING]
    assert logging.getLogger("pydicom").level == logging.DEBUG  # restored


def test_png_16_bit_is_scaled_by_its_range(tmp_path):
    film = np.linspace(1000, 3000, 48 * 40).reshape(48, 40).astype(np.uint16)
    radiograph = radiograph_files.read(png(tmp_path / "f16.png", film))
    np.testing.assert_array_equal(radiograph.pixels, range_reference(film.astype(np.float64)))
    assert radiograph.source == "png" and radiograph.warnings == ()


@pytest.mark.parametrize("kind, order", [(".jpg", "<"), (".jpg", ">"), (".png", ">")])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_opencv_does(tmp_path, kind, order, orientation):
    film = np.tile(np.linspace(40, 200, 40, dtype=np.uint8), (24, 1))
    film[:6, :10] = 255  # a bright top-left corner, so that every turn and mirror differs
    data = with_exif(cv2.imencode(kind, film)[1].tobytes(), orientation, order)
    path = tmp_path / f"film{kind}"
    path.write_bytes(data)
    radiograph = radiograph_files.read(path)
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)  # OpenCV applies EXIF here
    np.testing.assert_array_equal(radiograph.pixels, expected)
    assert radiograph.source == kind[1:].replace("jpg", "jpeg") and radiograph.warnings == ()
    if orientation == 6:  # 90 degrees clockwise: portrait, the corner now top right
        assert radiograph.pixels.shape == (40, 24) and radiograph.pixels[:5, -5:].min() > 200


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_reduced_jpeg_decode_turns_the_film_by_its_exif_orientation_once(tmp_path, orientation):
    """OpenCV's reduced reads apply the EXIF orientation themselves: the reader must not turn the film twice."""
    film = np.tile(np.linspace(40, 200, 320, dtype=np.uint8), (240, 1))
    film[:48, :80] = 255
    path = tmp_path / "film.jpg"
    path.write_bytes(with_exif(cv2.imencode(".jpg", film)[1].tobytes(), orientation))
    full, reduced = radiograph_files.read(path), radiograph_files.read(path, at_least=60)
    assert reduced.pixels.shape == tuple(-(-side // 4) for side in full.pixels.shape)  # read at 1/4
    shrunk = cv2.resize(full.pixels, reduced.pixels.shape[::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(shrunk.astype(int) - reduced.pixels).mean() < 2


def test_an_invalid_exif_orientation_is_a_warning(tmp_path):
    film = np.tile(np.linspace(40, 200, 40, dtype=np.uint8), (24, 1))
    path = tmp_path / "odd.jpg"
    path.write_bytes(with_exif(cv2.imencode(".jpg", film)[1].tobytes(), 9))
    radiograph = radiograph_files.read(path)
    assert radiograph.pixels.shape == (24, 40)
    (warning,) = radiograph.warnings
    assert "EXIF Orientation is 9" in warning and "read as stored" in warning


def test_nearly_uniform_images_are_a_warning(tmp_path):
    flat = np.full((40, 40), 120, np.uint8)
    flat[::7, ::5] = 123  # a standard deviation of about 1 grey level
    for radiograph in (
        radiograph_files.read(png(tmp_path / "flat.png", flat)),
        radiograph_files.read(write_dicom(tmp_path / "flat.dcm", np.full((40, 40), 900, np.uint16))),
    ):
        (warning,) = radiograph.warnings
        assert "nearly uniform" in warning and "no anatomy" in warning


def test_inversion_warning_on_inverted_phantom_films_only(tmp_path, films):
    for number, film in enumerate(films):
        normal = radiograph_files.read(png(tmp_path / f"{number}.png", film))
        inverted = radiograph_files.read(png(tmp_path / f"{number}_inverted.png", 255 - film))
        assert normal.warnings == ()
        (warning,) = inverted.warnings
        assert "looks inverted" in warning and "darker than the lung fields" in warning


def test_dicom_inversion_check_sees_the_displayed_film(tmp_path, films):
    stored = (255 - films[1]).astype(np.uint16) * 16  # high values where the film is dark
    as_mono1 = radiograph_files.read(write_dicom(tmp_path / "m1.dcm", stored, "MONOCHROME1"))
    as_mono2 = radiograph_files.read(write_dicom(tmp_path / "m2.dcm", stored, "MONOCHROME2"))
    assert as_mono1.warnings == ()
    assert len(as_mono2.warnings) == 1 and "looks inverted" in as_mono2.warnings[0]


# ------------------------------------------------------------------ files that lie about themselves


def png_bytes(width: int, height: int, rows: bytes | None = None, first_chunk: bytes = b"IHDR") -> bytes:
    """A grayscale 8-bit PNG written by hand: any declared size, the IDAT of ``rows`` (None: no IDAT)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")

    header = chunk(first_chunk, struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    data = b"" if rows is None else chunk(b"IDAT", zlib.compress(rows))
    return b"\x89PNG\r\n\x1a\n" + header + data + chunk(b"IEND", b"")


def sof0(width: int, height: int) -> bytes:
    """A baseline frame header (SOF0) for one 8-bit component."""
    return b"\xff\xc0\x00\x0b\x08" + struct.pack(">HH", height, width) + b"\x01\x01\x11\x00"


def after_app0(data: bytes) -> int:
    """Where the segment after OpenCV's JFIF APP0 starts."""
    return 4 + int.from_bytes(data[4:6], "big")


@pytest.mark.parametrize(
    "declared, table",
    [
        (16, np.round(255 * np.sqrt(np.arange(1024) / 1023))),  # 8-bit data, a 16-bit descriptor: near black
        (16, np.round(4095 * np.sqrt(np.arange(1024) / 1023))),  # 12-bit data in a 16-bit descriptor (Agfa CRs)
        (8, np.round(4095 * np.sqrt(np.arange(1024) / 1023))),  # 12-bit data, an 8-bit descriptor: wrapped bands
    ],
)
def test_voi_lut_whose_descriptor_depth_disagrees_with_its_data_is_read_at_the_datas_depth(tmp_path, declared, table):
    table = table.astype(np.uint16)
    bits = int(table.max()).bit_length()
    item = lut_item(500, 10, table)
    item.LUTDescriptor = [len(table), 500, declared]
    path = write_dicom(
        tmp_path / "lut.dcm", STORED, RescaleSlope=SLOPE, RescaleIntercept=INTERCEPT, VOILUTSequence=[item]
    )
    radiograph = radiograph_files.read(path)
    expected = np.round(lut_reference(RESCALED, 500, table) / (2**bits - 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(radiograph.pixels, expected)
    assert radiograph.pixels.max() == 255 and radiograph.pixels.min() == 0  # the full range: no black film, no wrap
    (warning,) = radiograph.warnings
    assert f"declares {declared}-bit entries but its data are {bits}-bit" in warning


def test_voi_lut_of_8_bit_entries_packed_in_ow_reads_as_the_same_lut_in_us(tmp_path):
    table = np.round(255 * np.sqrt(np.arange(1024) / 1023)).astype(np.uint8)
    packed = lut_item(500, 8, table)
    packed.add_new(0x00283006, "OW", table.tobytes())  # two entries a word: 8 bits allocated (PS3.3 C.11.2.1.1)
    read = [
        radiograph_files.read(write_dicom(tmp_path / f"{name}.dcm", STORED, VOILUTSequence=[item]))
        for name, item in (("us", lut_item(500, 8, table)), ("ow", packed))
    ]
    expected = np.round(lut_reference(STORED.astype(np.float64), 500, table)).astype(np.uint8)
    np.testing.assert_array_equal(read[0].pixels, expected)
    np.testing.assert_array_equal(read[1].pixels, expected)
    assert read[0].warnings == read[1].warnings == ()


@pytest.mark.parametrize("slope", [0, "0", "0.0", "-0"])
def test_rescale_slope_zero_is_refused(tmp_path, slope):
    path = write_dicom(tmp_path / "zero.dcm", STORED, RescaleSlope=slope, RescaleIntercept=-1024)
    with pytest.raises(
        images.ImageError, match=re.escape("RescaleSlope 0 makes every pixel the intercept (-1024)")
    ) as error:
        radiograph_files.read(path)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


def test_an_empty_rescale_slope_counts_as_absent(tmp_path):
    radiograph = radiograph_files.read(write_dicom(tmp_path / "empty.dcm", STORED, RescaleSlope=None))
    np.testing.assert_array_equal(radiograph.pixels, range_reference(STORED.astype(np.float64)))


def test_jpeg_with_junk_after_app0_has_its_frame_header_read_as_the_decoder_reads_it(tmp_path):
    data = cv2.imencode(".jpg", np.tile(np.arange(0, 240, 6, dtype=np.uint8), (24, 1)))[1].tobytes()
    junk = data[: after_app0(data)] + b"junk\x00\xff\x00" + data[after_app0(data) :]
    (tmp_path / "junk.jpg").write_bytes(junk)
    expected = cv2.imdecode(np.frombuffer(junk, np.uint8), cv2.IMREAD_UNCHANGED)  # libjpeg skips the junk
    np.testing.assert_array_equal(radiograph_files.read(tmp_path / "junk.jpg").pixels, expected)
    # The same junk before a frame header that declares 12,000 x 12,000: refused from the header, not decoded.
    bomb = data[: after_app0(data)] + b"junk" + sof0(12_000, 12_000) + data[after_app0(data) :]
    (tmp_path / "bomb.jpg").write_bytes(bomb)
    with pytest.raises(images.ImageError, match="12000x12000 pixels exceeds the limit"):
        radiograph_files.read(tmp_path / "bomb.jpg")


def test_jpeg_segments_are_skipped_by_length_and_fill_bytes_allowed(tmp_path):
    """A frame header inside an APP segment's payload is data, not a marker; 0xFF fill bytes may precede one."""
    data = cv2.imencode(".jpg", np.tile(np.arange(0, 240, 6, dtype=np.uint8), (24, 1)))[1].tobytes()
    fake = sof0(60_000, 60_000)
    app1 = b"\xff\xe1" + struct.pack(">H", len(fake) + 2) + fake
    crafted = data[:2] + b"\xff\xff" + app1 + data[2:]
    (tmp_path / "app1.jpg").write_bytes(crafted)
    assert radiograph_files.read(tmp_path / "app1.jpg").pixels.shape == (24, 40)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\xff\xd8\xff\xe0\x00\x04ab\xff\xda\x00\x02", "no JPEG frame header (SOF) before the scan"),
        (png_bytes(40, 40, bytes(41 * 40), first_chunk=b"tEXt"), "no PNG IHDR chunk"),
        (png_bytes(0, 40, b""), "declares 0x40 pixels"),
    ],
    ids=["jpeg-scan-before-frame", "png-without-ihdr", "png-of-no-columns"],
)
def test_headers_that_do_not_say_the_size_are_refused_before_decoding(tmp_path, data, reason):
    path = tmp_path / "odd.img"
    path.write_bytes(data)
    with pytest.raises(images.ImageError, match=re.escape(reason)):
        radiograph_files.read(path)


@pytest.mark.parametrize(
    "width, height, kind",
    [(900_000, 1, ".png"), (1, 60_000, ".jpg"), (41, 10, ".png"), (10, 41, ".jpg")],
)
def test_films_longer_than_four_times_their_width_are_refused_from_the_header(tmp_path, width, height, kind):
    """Real, decodable files: padded to a square (``resize_square``) a 1 x 900,000 PNG would need 810 GB and
    a 1 x 60,000 JPEG 3.6 GB; at most 4 to 1 is read."""
    path = tmp_path / f"long{kind}"
    path.write_bytes(cv2.imencode(kind, np.full((height, width), 128, np.uint8))[1].tobytes())
    ratio = max(width, height) / min(width, height)
    with pytest.raises(images.ImageError, match=f"{width}x{height} pixels, sides in a ratio of {ratio:,.1f} to 1"):
        radiograph_files.read(path)
    shorter = tmp_path / f"four_to_one{kind}"
    four = (min(height, 4 * width), min(width, 4 * height))
    shorter.write_bytes(cv2.imencode(kind, np.full(four, 128, np.uint8))[1].tobytes())
    assert radiograph_files.read(shorter).pixels.shape == four


def test_dicom_rows_and_columns_are_checked_for_the_side_ratio_before_decoding(tmp_path):
    path = write_dicom(tmp_path / "strip.dcm", np.zeros((1, 5000), np.uint16))
    with pytest.raises(images.ImageError, match="5000x1 pixels, sides in a ratio of 5,000.0 to 1"):
        radiograph_files.read(path)


def test_a_fifo_is_refused_without_being_opened(tmp_path):
    """Opening a FIFO waits for a writer. Here a writer offers a film to every reader that opens it (so a
    reader that opens it gets the film rather than waiting for ever); it must find none."""
    fifo = tmp_path / "film.png"
    os.mkfifo(fifo)
    film = cv2.imencode(".png", np.full((40, 40), 90, np.uint8))[1].tobytes()
    opened, stop = threading.Event(), threading.Event()

    def writer():
        while not stop.is_set():
            with contextlib.suppress(BrokenPipeError), open(fifo, "wb") as end:  # waits for a reader
                if not stop.is_set():
                    opened.set()
                    end.write(film)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    with pytest.raises(images.ImageError, match=re.escape(f"{fifo}: a FIFO (named pipe), not an image file")):
        radiograph_files.read(fifo)
    assert not opened.is_set()
    stop.set()
    while thread.is_alive():  # a reader that opens and leaves lets the writer's open return, and it stops
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        thread.join(0.01)


@pytest.mark.parametrize(
    "make, said",
    [
        (lambda p: p.symlink_to(p.with_name("gone.png")), "a dangling symbolic link (to {dir}/gone.png"),
        (lambda p: p.symlink_to(p), "a symbolic link that leads back to itself (a loop)"),
        (lambda p: p.symlink_to(p.parent), "a symbolic link to {dir}, a folder, not an image file"),
        (lambda p: p.mkdir(), "a folder, not an image file"),
    ],
)
def test_paths_that_are_no_film_are_named_for_what_they_are(tmp_path, make, said):
    path = tmp_path / "film.png"
    make(path)
    with pytest.raises(images.ImageError, match=re.escape(f"{path}: " + said.format(dir=tmp_path))):
        radiograph_files.read(path)


def test_a_file_larger_than_any_film_is_not_read(tmp_path, monkeypatch):
    path = png(tmp_path / "film.png", np.full((40, 40), 90, np.uint8))
    monkeypatch.setattr(images, "MAX_FILE_BYTES", path.stat().st_size - 1)
    with pytest.raises(images.ImageError, match=f"{path.stat().st_size} bytes, over the"):
        radiograph_files.read(path)


def test_a_file_name_that_is_not_utf8_is_read_and_named_with_escapes(tmp_path):
    path = Path(os.fsdecode(bytes(tmp_path) + b"/film\xff.png"))
    path.write_bytes(cv2.imencode(".png", np.tile(np.arange(0, 240, 6, dtype=np.uint8), (24, 1)))[1].tobytes())
    assert radiograph_files.read(path).pixels.shape == (24, 40)
    name = radiograph_files.display_name(path)
    assert name == f"{tmp_path}/film\\xff.png" and name.encode("utf-8")
    path.write_text("not an image")
    with pytest.raises(images.ImageError) as error:
        radiograph_files.read(path)
    assert str(error.value).startswith(f"{name}: ") and str(error.value).encode("utf-8")
