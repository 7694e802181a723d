"""Reading one radiograph for inference: DICOM display (LUTs, windows, MONOCHROME1), refusals, EXIF
orientation, and the warnings that say what makes a prediction doubtful. Every file is made here."""

import logging
import re
import struct
import subprocess
import sys
import zlib

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
