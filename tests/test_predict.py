"""``--mode predict`` on crafted files: DICOM conventions, refusals, and carrying on past bad files."""

import os
import re
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import write_dicom

from lungjax.data import images, labels, radiograph_files
from lungjax.evaluation import predict
from lungjax.evaluation.fit import temperature, validation

UNLIKE_LINE = re.compile(r"  out-of-distribution score (\S+) \(threshold (\S+)\)")

pydicom = pytest.importorskip("pydicom")


def write_compressed_dicom(path):
    """A DICOM whose pixel data claim JPEG 2000 but are not: no installed decoder can read them."""
    from pydicom.encaps import encapsulate

    write_dicom(path, np.zeros((8, 8), np.uint16))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"  # JPEG 2000 lossless
    ds.PixelData = encapsulate([b"\x00" * 40])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Good and bad inputs, by name."""
    root = tmp_path_factory.mktemp("predict_inputs")
    gradient = np.tile(np.arange(0, 4000, 100, dtype=np.uint16), (40, 1))  # 40 x 40, dark left
    good = root / "good.png"
    cv2.imwrite(str(good), np.random.default_rng(0).integers(0, 255, (48, 40), dtype=np.uint8))
    text = root / "notes.png"
    text.write_text("this is not an image\n")
    truncated = root / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    huge = root / "huge.png"  # a valid header that claims 100,000 x 100,000 pixels
    header = (100_000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IEND", b""))
    huge_jpeg = root / "huge.jpg"  # a baseline JPEG header that claims 60,000 x 60,000 pixels
    size = (60_000).to_bytes(2, "big")
    huge_jpeg.write_bytes(b"\xff\xd8\xff\xe0\x00\x04ab\xff\xc0\x00\x0b\x08" + size + size + b"\x01\x01\x11\x00")
    blank = root / "blank.png"  # readable, but nearly uniform: a warning
    cv2.imwrite(str(blank), np.full((40, 40), 90, np.uint8))
    fake_dicom = root / "fake.dcm"
    fake_dicom.write_text("not DICOM either")
    return {
        "good": good,
        "blank": blank,
        "text": text,
        "truncated": truncated,
        "huge": huge,
        "huge_jpeg": huge_jpeg,
        "compressed_dicom": write_compressed_dicom(root / "compressed.dcm"),
        "fake_dicom": fake_dicom,
        "missing": root / "missing.png",
        "gradient": gradient,
        "mono1": write_dicom(
            root / "mono1.dcm", gradient, "MONOCHROME1", RescaleSlope="2.0", RescaleIntercept="-100.0"
        ),
        "mono2": write_dicom(
            root / "mono2.dcm", gradient, "MONOCHROME2", RescaleSlope="2.0", RescaleIntercept="-100.0"
        ),
    }


def test_dicom_rescale_and_monochrome1_inversion(files):
    rescaled = files["gradient"] * 2.0 - 100.0
    mono2 = radiograph_files.read(files["mono2"]).pixels
    mono1 = radiograph_files.read(files["mono1"]).pixels
    np.testing.assert_array_equal(mono2, images.to_gray_uint8(rescaled))
    np.testing.assert_array_equal(mono1, images.to_gray_uint8(rescaled.max() + rescaled.min() - rescaled))
    assert mono2[0, 0] == 0 and mono2[0, -1] == 255  # MONOCHROME2: high values bright
    assert mono1[0, 0] == 255 and mono1[0, -1] == 0  # MONOCHROME1: high values dark


@pytest.mark.parametrize(
    "name, reason",
    [
        ("text", "not a PNG or JPEG"),
        ("truncated", "corrupt or unreadable"),
        ("huge", "exceeds the limit"),
        ("huge_jpeg", "60000x60000 pixels exceeds the limit"),
        ("compressed_dicom", "cannot decode the DICOM pixel data"),
        ("fake_dicom", "not a readable DICOM"),
        ("missing", "cannot read"),
    ],
)
def test_bad_files_are_refused_with_a_clear_message(files, name, reason):
    with pytest.raises(images.ImageError, match=reason) as error:
        radiograph_files.read(files[name])
    assert str(files[name]) in str(error.value)


def test_model_input_matches_the_dataset_geometry(files):
    gray = radiograph_files.read(files["good"]).pixels
    prepared = images.model_input(gray, stored_size=64, image_size=32)
    assert prepared.shape == (32, 32, 1) and prepared.dtype == np.uint8


def test_predict_carries_on_past_bad_files(tiny_workdir, tiny_config, files, capsys):
    paths = [str(files[name]) for name in ("good", "text", "mono1", "huge", "missing", "blank")]
    assert predict.predict_files(tiny_config, tiny_workdir, paths) == 3
    captured = capsys.readouterr()
    # Per image: the probabilities, then (the workdir was evaluated) the calibrated ones and the calls,
    # then the out-of-distribution score.
    out = captured.out.splitlines()
    printed, calibrated_lines, calls_lines, unlike_lines = out[0::4], out[1::4], out[2::4], out[3::4]
    assert [line.split(":")[0] for line in printed] == [str(files[name]) for name in ("good", "mono1", "blank")]
    fit = validation.read(tiny_workdir / "eval" / "test" / validation.VALIDATION_FIT_FILE)
    for line, calibrated, calls in zip(printed, calibrated_lines, calls_lines, strict=True):
        probabilities = np.array([float(line.split(name + " ")[1].split()[0]) for name in labels.CLASS_NAMES])
        assert sum(probabilities) == pytest.approx(1.0, abs=0.01)
        expected = temperature.apply(probabilities[None], fit["temperature"]["temperatures"], False)[0]
        shown = [float(calibrated.split(name + " ")[1].split()[0]) for name in labels.CLASS_NAMES]
        np.testing.assert_allclose(shown, expected, atol=2e-3)  # from 3-decimal probabilities
        assert calibrated.startswith("  calibrated: ") and calls.startswith("  called at youden: ")
    scores = [UNLIKE_LINE.fullmatch(line) for line in unlike_lines]
    assert all(scores), unlike_lines
    above = [name for name, m in zip(("good", "mono1", "blank"), scores, strict=True) if float(m[1]) > float(m[2])]
    lines = captured.err.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    warnings = [line for line in lines if line.startswith("warning: ")]
    (note,) = [line for line in lines if line.startswith("note: the out-of-distribution score is fitted on ")]
    assert len(errors) == 3 and len(lines) == 4 + len(above) + 1
    (uniform,) = [line for line in warnings if "The image is nearly uniform" in line]
    assert uniform.startswith(f"warning: {files['blank']}: ")
    unlike = [line for line in warnings if "unlike the training films (nih)" in line]
    assert [line.split(": ")[1] for line in unlike] == [str(files[name]) for name in above]
    for line, name in zip(errors, ("text", "huge", "missing"), strict=True):
        assert str(files[name]) in line
    heatmaps = sorted(p.name for p in (tiny_workdir / predict.OUTPUT_DIR).glob("*.png"))
    assert heatmaps == ["0_good.png", "2_mono1.png", "5_blank.png"]


def test_predict_names_each_file_that_lies_in_one_line_and_goes_on(tiny_workdir, tiny_config, tmp_path, capsys):
    """A dangling link, a looping link, a 1 x 900,000 PNG (OpenCV's out-of-memory error when padded to a
    square, which ended the run) and a file name that is not UTF-8 (printed with an escape). A FIFO goes
    through the same reader: test_radiograph_files.py shows it is never opened."""
    film = cv2.imencode(".png", np.random.default_rng(1).integers(0, 255, (48, 40), dtype=np.uint8))[1].tobytes()
    good, odd = tmp_path / "good.png", Path(os.fsdecode(bytes(tmp_path) + b"/odd\xff.png"))
    good.write_bytes(film)
    odd.write_bytes(film)
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "missing.png")
    (tmp_path / "wide.png").write_bytes(cv2.imencode(".png", np.zeros((1, 900_000), np.uint8))[1].tobytes())
    names = ["good.png", "loop.png", "gone.png", "wide.png"]
    heatmaps = tiny_workdir / predict.OUTPUT_DIR
    before = set(heatmaps.glob("*"))
    try:
        assert predict.predict_files(tiny_config, tiny_workdir, [str(tmp_path / n) for n in names] + [str(odd)]) == 3
    finally:
        for made in set(heatmaps.glob("*")) - before:  # the other tests count this workdir's heatmaps
            made.unlink()
    captured = capsys.readouterr()
    printed = [line.split(": ")[0] for line in captured.out.splitlines() if not line.startswith("  ")]
    assert printed == [str(good), f"{tmp_path}/odd\\xff.png"]
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3
    for line, name, said in zip(
        errors,
        names[1:],
        ("a symbolic link that leads back to itself", "a dangling symbolic link", "sides in a ratio of 900,000.0 to 1"),
        strict=True,
    ):
        assert line.startswith(f"error: {tmp_path / name}: ") and said in line
