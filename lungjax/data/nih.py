"""TFDS builder ``nih_chest_xray``: the NIH six-class subset from the user's download, as ArrayRecord.

The user points ``manual_dir`` at their NIH download (or at a phantom tree with the same layout):
``Data_Entry_2017.csv`` (or ``_v2020``), images flat in ``images/`` or in ``images_001/images/`` ...
``images_012/images/``, optionally ``BBox_List_2017.csv`` and a manifest CSV that pins the image list.
Which images go where is decided by :mod:`lungjax.data.metadata`; pixels are decoded, converted to
8-bit gray and resized in worker processes by :mod:`lungjax.data.images`. Examples are yielded as
encoded PNG bytes, so neither building nor reading needs TensorFlow.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow_datasets as tfds
from tqdm.auto import tqdm

from lungjax.data import images, labels, metadata

DATA_ENTRY_NAMES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
MANIFEST_NAMES = ("manifest.csv", "Balanced_Chest_Xray_Data.csv")
BBOX_NAME = "BBox_List_2017.csv"
NO_BOX = (-1.0, -1.0, -1.0, -1.0)
SPLIT_SCHEMES = ("patient", "seed")
BUILD_REPORT = "build_report.json"
_LEAKAGE_WARNING = (
    "WARNING: the `seed` split is per image, as the reference project did it: one patient's films "
    "land on both sides (on the full NIH metadata, 1,302 of its 1,957 test images belong to patients "
    "with films in training). Use it only to compare with the reference; the number of patients "
    "crossing splits for this build is in build_report.json.")


@dataclasses.dataclass(eq=False)
class NihConfig(tfds.core.BuilderConfig):
    """One way of packaging the subset: split scheme, image size, and what to do with bad files."""

    split_scheme: str = "patient"
    image_size: int = 256
    no_finding_count: int = metadata.NO_FINDING_SAMPLE
    seed: int = 42
    skip_bad_images: bool = False
    num_workers: int = 0  # 0: one per CPU core


def make_config(split_scheme: str = "patient", image_size: int = 256, **kwargs) -> NihConfig:
    """A config named after what changes the stored bytes, e.g. ``patient_256``."""
    if split_scheme not in SPLIT_SCHEMES:
        raise ValueError(f"split_scheme must be one of {SPLIT_SCHEMES}, got {split_scheme!r}")
    if not 32 <= int(image_size) <= 4096:
        raise ValueError(f"image_size must be in 32..4096, got {image_size}")
    description = f"Six-class NIH subset, {split_scheme} split, {image_size}px grayscale PNG."
    if split_scheme == "seed":
        description += " " + _LEAKAGE_WARNING
    return NihConfig(name=f"{split_scheme}_{image_size}", description=description,
                     split_scheme=split_scheme, image_size=int(image_size), **kwargs)


def find_data_entry(manual_dir: Path) -> Path:
    for name in DATA_ENTRY_NAMES:
        if (manual_dir / name).is_file():
            return manual_dir / name
    raise metadata.MetadataError(
        f"no metadata CSV in {manual_dir}: expected one of {list(DATA_ENTRY_NAMES)}")


def index_images(manual_dir: Path) -> dict[str, Path]:
    """Image name -> path, for images flat in ``images/`` or in Kaggle's ``images_NNN/images/``."""
    folders = [manual_dir / "images", *sorted(manual_dir.glob("images_*/images"))]
    index: dict[str, Path] = {}
    for folder in folders:
        if folder.is_dir():
            for entry in os.scandir(folder):
                index.setdefault(entry.name, Path(entry.path))
    return index


def read_boxes(manual_dir: Path) -> dict[str, tuple[float, float, float, float]]:
    """Image name -> (x, y, w, h) in original pixels from NIH's box list (first box per image)."""
    path = manual_dir / BBOX_NAME
    if not path.is_file():
        return {}
    frame = pd.read_csv(path, header=None, skiprows=1, usecols=range(6),
                        names=["name", "finding", "x", "y", "w", "h"])
    frame = frame.drop_duplicates("name")
    return {row.name: (row.x, row.y, row.w, row.h) for row in frame.itertuples(index=False)}


def _load_example(task: tuple[str, str, int, tuple[float, float, float, float]]
                  ) -> tuple[str, bytes | None, tuple[float, ...] | str]:
    """Worker: (name, path, size, box) -> (name, png bytes, scaled box) or (name, None, error)."""
    name, path, size, box = task
    try:
        gray = images.read_gray(path)
    except images.ImageError as err:
        return name, None, str(err)
    height, width = gray.shape
    side = max(height, width)
    scale = size / side
    if box != NO_BOX:
        offset_x, offset_y = (side - width) // 2, (side - height) // 2
        box = ((box[0] + offset_x) * scale, (box[1] + offset_y) * scale, box[2] * scale, box[3] * scale)
    return name, images.encode_png(images.resize_square(gray, size)[..., None]), box


class NihChestXray(tfds.core.GeneratorBasedBuilder):
    """NIH ChestX-ray14, six single-label classes, from a manual download."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Six-class subset; patient and seed splits; grayscale PNG."}
    BUILDER_CONFIGS = [make_config("patient", 256), make_config("seed", 256)]
    DEFAULT_CONFIG_NAME = "patient_256"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download NIH ChestX-ray14 (https://nihcc.app.box.com/v/ChestXray-NIHCC or Kaggle's copy) and "
        "point manual_dir at the folder holding Data_Entry_2017.csv and the images/ or images_NNN/ folders.")

    def __init__(self, *, file_format: str = "array_record", **kwargs):
        super().__init__(file_format=file_format, **kwargs)
        self.skipped: list[dict[str, str]] = []
        self.class_counts: dict[str, list[int]] = {}

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(size, size, 1), encoding_format="png"),
                "label": tfds.features.ClassLabel(names=list(labels.CLASS_NAMES)),
                "image_name": tfds.features.Text(),
                "patient_id": np.int64,
                "age": np.int32,
                "sex": tfds.features.Text(),
                "view_position": tfds.features.Text(),
                "follow_up": np.int32,
                "bbox": tfds.features.Tensor(shape=(4,), dtype=np.float32),
            }),
            supervised_keys=("image", "label"),
            homepage="https://nihcc.app.box.com/v/ChestXray-NIHCC",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config = self.builder_config
        manual_dir = Path(dl_manager.manual_dir)
        if not manual_dir.is_dir():
            raise metadata.MetadataError(f"manual_dir {manual_dir} does not exist; "
                                         + self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        data_entry = metadata.read_data_entry(find_data_entry(manual_dir))
        manifest_path = next((manual_dir / n for n in MANIFEST_NAMES if (manual_dir / n).is_file()), None)
        manifest = metadata.read_manifest(manifest_path) if manifest_path else None
        subset = metadata.select_subset(data_entry, manifest=manifest,
                                        no_finding_count=config.no_finding_count, seed=config.seed)
        if config.split_scheme == "seed":
            splits = metadata.split_by_image(subset, seed=config.seed)
        else:
            splits = metadata.split_by_patient(subset, seed=config.seed)
        self._check_images_exist(manual_dir, subset)
        self.split_summary = {"patients_crossing_splits": metadata.patients_crossing(splits),
                              "images": {name: len(frame) for name, frame in splits.items()}}
        self._image_index = index_images(manual_dir)
        self._boxes = read_boxes(manual_dir)
        return {name: self._generate_examples(name, frame) for name, frame in splits.items()}

    def _check_images_exist(self, manual_dir: Path, subset: pd.DataFrame) -> None:
        """Finds missing images before any pixel work, so a bad download fails in seconds."""
        present = index_images(manual_dir)
        missing = [name for name in subset["Image Index"] if name not in present]
        if not missing:
            return
        if not self.builder_config.skip_bad_images:
            raise FileNotFoundError(
                f"{len(missing)} of {len(subset)} selected images are missing under {manual_dir} "
                f"(looked in images/ and images_NNN/images/), e.g. {missing[:5]}; "
                "pass skip_bad_images=True to build without them")
        self.skipped.extend({"image": name, "reason": "missing"} for name in missing)

    def _generate_examples(self, split: str, frame: pd.DataFrame):
        size = self.builder_config.image_size
        counts = self.class_counts.setdefault(split, [0] * labels.NUM_CLASSES)
        rows = {row["Image Index"]: row for row in frame.to_dict("records")
                if row["Image Index"] in self._image_index}
        tasks = [(name, str(self._image_index[name]), size, self._boxes.get(name, NO_BOX)) for name in rows]
        workers = self.builder_config.num_workers or os.cpu_count() or 1
        context = multiprocessing.get_context("spawn")  # JAX may be running: never fork
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            results = pool.map(_load_example, tasks, chunksize=16)
            for name, png, box in tqdm(results, total=len(tasks), desc="decode+resize", unit="img"):
                if png is None:
                    if not self.builder_config.skip_bad_images:
                        raise images.ImageError(f"{box} (pass skip_bad_images=True to skip bad images)")
                    self.skipped.append({"image": name, "reason": box})
                    continue
                row = rows[name]
                counts[int(row["label"])] += 1
                yield name, {
                    "image": png,
                    "label": int(row["label"]),
                    "image_name": name,
                    "patient_id": int(row["Patient ID"]),
                    "age": int(row["Patient Age"]),
                    "sex": str(row["Patient Gender"]),
                    "view_position": str(row["View Position"]),
                    "follow_up": int(row["Follow-up #"]),
                    "bbox": np.asarray(box, np.float32),
                }


def prepare(manual_dir: str | os.PathLike, data_dir: str | os.PathLike, config: NihConfig
            ) -> NihChestXray:
    """Builds the dataset once (no-op when already built) and writes the build report beside it."""
    builder = NihChestXray(config=config, data_dir=os.fspath(data_dir))
    if not builder.is_prepared():
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
        report = {"config": config.name, "class_names": list(labels.CLASS_NAMES),
                  "class_counts": builder.class_counts, **builder.split_summary, "skipped": builder.skipped}
        (Path(builder.data_dir) / BUILD_REPORT).write_text(json.dumps(report, indent=2))
    return builder
