"""``--mode predict``: class probabilities and a Grad-CAM heatmap for radiographs on disk.

Reads PNG/JPEG through :mod:`lungjax.data.images` (which refuses non-images and decompression
bombs) and DICOM through pydicom (an optional dependency, imported only when a DICOM file comes).
A file that cannot be read gets one clear message and the others carry on; the caller learns how
many failed. Images are prepared exactly as the dataset builder and the eval pipeline prepare
theirs: padded to a square, resized to the stored size, then to the model's input size.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np

from lungjax.data import images
from lungjax.evaluation import explain, inference
from lungjax.runtime import sharding

DICOM_SUFFIXES = (".dcm", ".dicom")
DICOM_MAGIC_OFFSET = 128  # DICOM Part 10 files: a 128-byte preamble, then b"DICM"
DICOM_MAGIC = b"DICM"
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
OUTPUT_DIR = "predict"


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with path.open("rb") as handle:
        return handle.read(DICOM_MAGIC_OFFSET + len(DICOM_MAGIC))[DICOM_MAGIC_OFFSET:] == DICOM_MAGIC


def read_dicom(path: Path) -> np.ndarray:
    """A single-frame grayscale DICOM -> (H, W) uint8, as displayed: bright is dense.

    Applies RescaleSlope/Intercept, inverts MONOCHROME1 (where high values are dark), then scales
    the film's own range to 8 bits. The pixel count is checked against the same limit as PNGs
    before the pixel data is decoded.
    """
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError as err:
        raise images.ImageError(f"{path}: reading DICOM needs pydicom: pip install 'lungjax[dicom]'") from err
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        rows, columns = int(header.Rows), int(header.Columns)
        frames = int(header.get("NumberOfFrames", 1) or 1)
        photometric = str(header.get("PhotometricInterpretation", ""))
        if rows * columns * frames > images.MAX_PIXELS:
            raise images.ImageError(
                f"{path}: {columns}x{rows}x{frames} pixels exceeds the limit of {images.MAX_PIXELS}"
            )
        if frames != 1 or photometric not in MONOCHROME:
            raise images.ImageError(
                f"{path}: only single-frame grayscale DICOM is supported "
                f"({frames} frames, {photometric or 'no PhotometricInterpretation'})"
            )
    except images.ImageError:
        raise
    except (InvalidDicomError, AttributeError, ValueError, OSError, EOFError) as err:
        raise images.ImageError(f"{path}: not a readable DICOM image ({err})") from err
    decoder_log = logging.getLogger("pydicom")  # it logs each failed decoder's traceback: our line says it
    previous_level = decoder_log.level
    decoder_log.setLevel(logging.CRITICAL)
    try:
        pixels = pydicom.dcmread(path).pixel_array.astype(np.float64)
    except Exception as err:  # pydicom's decoders raise many types: a missing codec, damaged pixel data
        reason = " ".join(str(err).split())[:300]
        raise images.ImageError(f"{path}: cannot decode the DICOM pixel data ({type(err).__name__}: {reason})") from err
    finally:
        decoder_log.setLevel(previous_level)
    pixels = pixels * float(header.get("RescaleSlope", 1) or 1) + float(header.get("RescaleIntercept", 0) or 0)
    if photometric == "MONOCHROME1":
        pixels = pixels.max() + pixels.min() - pixels
    return images.to_gray_uint8(pixels)


def read_radiograph(path: str | os.PathLike) -> np.ndarray:
    """Any supported file -> (H, W) uint8; every failure is an ImageError naming the file."""
    path = Path(path)
    try:
        dicom = _is_dicom(path)
    except OSError as err:
        raise images.ImageError(f"{path}: cannot read ({err.strerror})") from err
    return read_dicom(path) if dicom else images.read_gray(path)


def to_model_input(gray: np.ndarray, stored_size: int, image_size: int) -> np.ndarray:
    """(H, W) uint8 -> (image_size, image_size, 1) uint8, as the builder then the eval pipeline do."""
    return images.resize(images.resize_square(gray, stored_size), image_size)[..., None]


def format_probabilities(probs: np.ndarray, class_names) -> str:
    return "  ".join(f"{name} {p:.3f}" for name, p in zip(class_names, probs))


def predict_files(config: ml_collections.ConfigDict, workdir: str | os.PathLike, paths: Sequence[str]) -> int:
    """Prints the probabilities for each readable file and writes its heatmap; returns the failure count.

    One probability per class (per finding, each on its own, for a multi-label task). Heatmaps
    (Grad-CAM of the most probable class) go to ``<workdir>/predict/<n>_<file stem>.png``.
    """
    mesh = sharding.make_mesh()
    restored = inference.restore(config, workdir, mesh)
    saved, class_names = restored.config, restored.task.class_names
    predict_fn = inference.make_predict_fn(
        restored.graphdef,
        mesh,
        restored.dtype,
        tta_crops=config.eval.tta_crops,
        multi_label=restored.task.multi_label,
    )
    cam_fn = explain.make_grad_cam_fn(restored.graphdef, restored.dtype, config.eval.cam_stage)
    out = Path(workdir) / OUTPUT_DIR
    failures = 0
    for number, path in enumerate(paths):
        try:
            image = to_model_input(read_radiograph(path), saved.data.stored_size, saved.image_size)
        except images.ImageError as err:
            print(f"error: {err}", file=sys.stderr)
            failures += 1
            continue
        batch = np.repeat(image[None], mesh.devices.size, axis=0)  # one row per device of the mesh
        probs = np.asarray(predict_fn(restored.model_state, batch))[0]
        predicted = int(probs.argmax())
        heatmap = explain.heatmaps_for(cam_fn, restored.model_state, image[None], np.array([predicted]), 1)
        heatmap_path = out / f"{number}_{Path(path).stem}.png"
        explain.plot_overlays(
            image[None],
            heatmap,
            [f"{Path(path).name}\n{class_names[predicted]} p={probs[predicted]:.2f}"],
            heatmap_path,
        )
        print(
            f"{path}: {format_probabilities(probs, class_names)}  -> {class_names[predicted]} (heatmap {heatmap_path})"
        )
    return failures
