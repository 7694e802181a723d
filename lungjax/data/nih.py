"""TFDS builder ``nih_chest_xray``: a task's NIH images from the user's download, as ArrayRecord.

Two tasks (:mod:`lungjax.data.tasks`): the six-class single-label subset (configs ``patient_<size>``
and ``seed_<size>``) and all images with NIH's 14 findings as a 0/1 vector (``full14_<size>``, and
``full14_<size>_pa`` / ``_ap`` for one view position).

The user points ``manual_dir`` at their NIH download (or at a phantom tree with the same layout):
``Data_Entry_2017.csv`` (NIH's ``_v2020`` or Kaggle's copy), images flat in ``images/`` or in
``images_001/images/`` ... ``images_012/images/``, and optionally:

* ``manifest.csv`` or the reference's ``Balanced_Chest_Xray_Data.csv`` (``Image Index``,
  ``Finding Labels``): pins the exact image list and, for the ``seed`` split, its row order;
* ``BBox_List_2017.csv``: a six-class example gets the box of its own finding (first one listed),
  a 14-finding example one box per finding (``NO_BOX`` where none), scaled like its pixels;
* ``train_val_list.txt``/``test_list.txt`` (NIH's official split): the 14-finding configs split by
  them (validation: ``metadata.OFFICIAL_VALIDATION_SHARE`` of the train_val patients), and without
  them make a patient-disjoint 70/10/20 split stratified by finding; the build report says which.
  The six-class configs do not split by them (the official test list is not stratified over their
  classes); the build report records how many images of each split are on the official test list.

Which images go where is decided by :mod:`lungjax.data.metadata`; pixels are decoded, converted to
8-bit gray and resized in worker processes by :mod:`lungjax.data.images`. Examples are yielded as
encoded PNG bytes and written by :mod:`lungjax.data.shards`, so neither building (a split of any
size) nor reading needs TensorFlow. The build report records, per image, a digest of its source
film's decoded pixels (``building.SOURCE_PIXELS``): two builds of one download at different stored
sizes share them, a download with other pixels under the same names does not.

A build either completes or leaves nothing: every check that can fail without pixels (folders,
CSVs, columns, missing images) runs before TFDS writes anything, and a failure during image work
removes whatever the build created under ``data_dir``.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow_datasets as tfds
from tqdm.auto import tqdm

from lungjax.data import building, images, labels, metadata, nih_layout, tasks

MANIFEST_NAMES = ("manifest.csv", "Balanced_Chest_Xray_Data.csv")
# NIH's box list name -> its label name, where they differ.
BOX_FINDING_NAMES = {box_name: name for name, box_name in labels.BOX_LIST_NAMES.items()}
NO_BOX = (-1.0, -1.0, -1.0, -1.0)
SPLIT_SCHEMES = ("patient", "seed")  # six-class; the 14-finding configs split as the module docstring says
_LEAKAGE_WARNING = (
    "WARNING: the `seed` split is per image, as the reference project did it: one patient's films "
    "land on both sides (on the full NIH metadata, 1,302 of its 1,957 test images belong to patients "
    "with films in training). Use it only to compare with the reference; the number of patients "
    "crossing splits for this build is in build_report.json."
)


@dataclasses.dataclass(eq=True)
class NihConfig(tfds.core.BuilderConfig):
    """One way of packaging NIH: task, split scheme, views and image size.

    How to build (worker count, skipping bad files) is an argument of the builder, not of the
    config: TFDS refuses a config named like a registered one but differing in any field.
    """

    split_scheme: str = "patient"
    image_size: int = 256
    no_finding_count: int = metadata.NO_FINDING_SAMPLE
    seed: int = 42
    task: str = tasks.SIX_CLASS.name
    views: str = "both"


def make_config(
    split_scheme: str = "patient",
    image_size: int = 256,
    *,
    no_finding_count: int = metadata.NO_FINDING_SAMPLE,
    seed: int = 42,
    task: str = tasks.SIX_CLASS.name,
    views: str = "both",
) -> NihConfig:
    """A config named after what changes the stored bytes, e.g. ``patient_256``, ``full14_256_pa``, or
    ``patient_256_n500_seed7`` when the No Finding sample or the seed differ from the reference's."""
    if split_scheme not in SPLIT_SCHEMES:
        raise ValueError(f"split_scheme must be one of {SPLIT_SCHEMES}, got {split_scheme!r}")
    if not images.MIN_SIZE <= int(image_size) <= images.MAX_SIZE:
        raise ValueError(f"image_size must be in {images.MIN_SIZE}..{images.MAX_SIZE}, got {image_size}")
    task = tasks.get(task).name
    if views not in metadata.VIEWS:
        raise ValueError(f"views must be one of {metadata.VIEWS}, got {views!r}")
    if task == tasks.FULL14.name:
        if split_scheme != "patient":
            raise ValueError(
                "the 14-finding task splits by NIH's lists or by patient, not by image (split_scheme='seed')"
            )
        name = f"full14_{int(image_size)}" + ("" if views == "both" else f"_{views.lower()}")
        description = f"All NIH images ({views} views), 14 findings as a 0/1 vector, {image_size}px grayscale PNG."
    else:
        if views != "both":
            raise ValueError("the six-class task keeps both view positions (views='both')")
        name = f"{split_scheme}_{int(image_size)}"
        description = f"Six-class NIH subset, {split_scheme} split, {image_size}px grayscale PNG."
        if split_scheme == "seed":
            description += " " + _LEAKAGE_WARNING
    if (no_finding_count, seed) != (metadata.NO_FINDING_SAMPLE, 42):
        name += f"_n{no_finding_count}_seed{seed}" if task == tasks.SIX_CLASS.name else f"_seed{seed}"
    return NihConfig(
        name=name,
        description=description,
        split_scheme=split_scheme,
        image_size=int(image_size),
        no_finding_count=no_finding_count,
        seed=seed,
        task=task,
        views=views,
    )


def _existing(manual_dir: str | os.PathLike) -> Path:
    manual_dir = Path(manual_dir)
    if not manual_dir.is_dir():
        raise metadata.MetadataError(
            f"manual_dir {manual_dir} does not exist; " + NihChestXray.MANUAL_DOWNLOAD_INSTRUCTIONS
        )
    return manual_dir


def attach_boxes(subset: pd.DataFrame, boxes: pd.DataFrame) -> pd.DataFrame:
    """Adds ``bbox`` (x, y, w, h in original pixels, or NO_BOX): the first box of the row's class."""
    first = boxes.dropna(subset=["label"]).astype({"label": int}).drop_duplicates(["Image Index", "label"])
    keyed = {
        (row[0], row[1]): tuple(map(float, row[2:]))
        for row in first[["Image Index", "label", "x", "y", "w", "h"]].itertuples(index=False)
    }
    bbox = [
        keyed.get((name, label), NO_BOX) for name, label in zip(subset["Image Index"], subset["label"], strict=True)
    ]
    return subset.assign(bbox=bbox)


def attach_finding_boxes(chosen: pd.DataFrame, boxes: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Adds ``bbox``: a (14, 4) array per row, each finding's first box or NO_BOX. Returns the count of
    boxes attached per finding, and of those dropped (a second box of one finding on one film, or a
    box whose finding the row's labels do not carry)."""
    finding_names = boxes["finding"].map(lambda name: BOX_FINDING_NAMES.get(name, name))
    index = {name: i for i, name in enumerate(labels.FINDINGS14)}
    row_of = {name: i for i, name in enumerate(chosen["Image Index"])}
    bbox = np.tile(np.asarray(NO_BOX, np.float32), (len(chosen), len(labels.FINDINGS14), 1))
    attached, dropped = collections.Counter(), collections.Counter()
    for name, finding, *box in zip(
        boxes["Image Index"], finding_names, boxes["x"], boxes["y"], boxes["w"], boxes["h"], strict=True
    ):
        row, k = row_of.get(name), index.get(finding)
        if row is None:
            continue  # an image this build does not hold (another view)
        if k is None or not chosen["findings"].iat[row][k] or bbox[row, k, 0] != NO_BOX[0]:
            dropped[str(finding)] += 1
            continue
        bbox[row, k] = box
        attached[labels.FINDINGS14[k]] += 1
    return chosen.assign(bbox=list(bbox)), {"attached": dict(attached), "dropped": dict(dropped)}


@dataclasses.dataclass
class BuildPlan:
    """Everything decided before any pixel is touched: the rows of each split, with their files."""

    splits: dict[str, pd.DataFrame]
    skipped: list[dict[str, str]]
    summary: dict


def plan_build(manual_dir: str | os.PathLike, config: NihConfig, *, skip_bad_images: bool = False) -> BuildPlan:
    """Reads and checks the download; raises (naming what is wrong) before anything is written.

    Splits are made on the full selection and missing images dropped afterwards (when skipping),
    so a few missing files do not move other images between splits.
    """
    manual_dir = _existing(manual_dir)
    data_entry = metadata.read_data_entry(metadata.find_data_entry(manual_dir))
    if config.task == tasks.FULL14.name:
        subset, summary = _select_findings14(manual_dir, data_entry, config)
    else:
        subset, summary = _select_six_class(manual_dir, data_entry, config)
    image_index = nih_layout.index_images(manual_dir)
    subset = subset.assign(path=subset["Image Index"].map(lambda name: image_index.get(name)))
    missing = subset.loc[subset["path"].isna(), "Image Index"].tolist()
    if missing and not skip_bad_images:
        raise metadata.MissingImagesError(
            f"{len(missing)} of {len(subset)} selected images are missing under {manual_dir} "
            f"(looked in images/ and images_NNN/images/), e.g. {missing[: metadata.NAMES_SHOWN]}; "
            "set config.data.skip_bad_images=True to build without them"
        )
    if config.task == tasks.FULL14.name:
        splits = _split_findings14(manual_dir, subset, data_entry, config, summary)
    elif config.split_scheme == "seed":
        splits = metadata.split_by_image(subset, seed=config.seed)
    else:
        splits = metadata.split_by_patient(subset, seed=config.seed)
    summary = {
        "metadata": metadata.find_data_entry(manual_dir).name,
        "task": tasks.get(config.task).describe(),
        **summary,
        "patients_crossing_splits": metadata.patients_crossing(splits),
    }
    if config.task == tasks.SIX_CLASS.name and (manual_dir / nih_layout.TEST_LIST).is_file():
        official_test = set(metadata.read_image_list(manual_dir / nih_layout.TEST_LIST))
        summary["on_official_test_list"] = {
            name: int(frame["Image Index"].isin(official_test).sum()) for name, frame in splits.items()
        }
    splits = {name: frame[frame["path"].notna()] for name, frame in splits.items()}
    return BuildPlan(splits=splits, skipped=[{"image": n, "reason": "missing"} for n in missing], summary=summary)


def _select_six_class(manual_dir: Path, data_entry: pd.DataFrame, config: NihConfig) -> tuple[pd.DataFrame, dict]:
    manifest_path = next((manual_dir / n for n in MANIFEST_NAMES if (manual_dir / n).is_file()), None)
    manifest = metadata.read_manifest(manifest_path) if manifest_path else None
    subset = metadata.select_subset(
        data_entry, manifest=manifest, no_finding_count=config.no_finding_count, seed=config.seed
    )
    if (manual_dir / nih_layout.BBOX_FILE).is_file():
        subset = attach_boxes(subset, metadata.read_boxes(manual_dir / nih_layout.BBOX_FILE))
    else:
        subset = subset.assign(bbox=[NO_BOX] * len(subset))
    return subset, {"manifest": manifest_path.name if manifest_path else None}


def _select_findings14(manual_dir: Path, data_entry: pd.DataFrame, config: NihConfig) -> tuple[pd.DataFrame, dict]:
    chosen = metadata.select_findings14(data_entry, views=config.views)
    summary = {
        "views": config.views,
        "view_counts": {str(k): int(v) for k, v in data_entry["View Position"].value_counts().sort_index().items()},
    }
    if (manual_dir / nih_layout.BBOX_FILE).is_file():
        chosen, summary["boxes"] = attach_finding_boxes(chosen, metadata.read_boxes(manual_dir / nih_layout.BBOX_FILE))
    else:
        no_box = np.tile(np.asarray(NO_BOX, np.float32), (len(labels.FINDINGS14), 1))
        chosen = chosen.assign(bbox=[no_box] * len(chosen))
    return chosen, summary


def _split_findings14(
    manual_dir: Path, chosen: pd.DataFrame, data_entry: pd.DataFrame, config: NihConfig, summary: dict
) -> dict[str, pd.DataFrame]:
    """NIH's official split when both lists are in ``manual_dir``, else a stratified patient split;
    records which in ``summary``, with each split's images per view position."""
    lists = [manual_dir / name for name in nih_layout.OFFICIAL_LISTS]
    if all(path.is_file() for path in lists):
        splits = metadata.split_official(
            chosen,
            *(metadata.read_image_list(path) for path in lists),
            all_names=data_entry["Image Index"],
            all_patients=data_entry["Patient ID"],
            seed=config.seed,
        )
        summary["split"] = (
            f"official: NIH's {nih_layout.TEST_LIST} is the test split; validation is a patient-disjoint, "
            f"finding-stratified {metadata.OFFICIAL_VALIDATION_SHARE:.0%} of the {nih_layout.TRAIN_VAL_LIST} "
            f"patients (seed {config.seed}), the rest is train"
        )
    else:
        if any(path.is_file() for path in lists):
            raise metadata.MetadataError(
                f"{manual_dir} holds one of NIH's split lists but not the other "
                f"({', '.join(nih_layout.OFFICIAL_LISTS)}): "
                "add the missing one, or remove both to split by patient"
            )
        splits = metadata.split_by_patient(chosen, seed=config.seed)
        summary["split"] = (
            "patient: no NIH split lists in manual_dir; a patient-disjoint 70/10/20 split stratified by "
            f"finding (seed {config.seed})"
        )
    summary["views_per_split"] = {
        name: {str(k): int(v) for k, v in frame["View Position"].value_counts().sort_index().items()}
        for name, frame in splits.items()
    }
    return splits


class NihChestXray(building.ShardedBuilder):
    """NIH ChestX-ray14 from a manual download: six single-label classes, or the 14 findings."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Six-class subset (patient and seed splits) and 14 findings; grayscale PNG."}
    BUILDER_CONFIGS = [make_config("patient", 256), make_config("seed", 256), make_config(task="full14")]
    DEFAULT_CONFIG_NAME = "patient_256"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download NIH ChestX-ray14 (https://nihcc.app.box.com/v/ChestXray-NIHCC or Kaggle's copy) and "
        "point manual_dir at the folder holding Data_Entry_2017.csv and the images/ or images_NNN/ folders."
    )

    def __init__(self, **kwargs):
        """Arguments as for :class:`building.ShardedBuilder`."""
        super().__init__(**kwargs)
        self._plan: BuildPlan | None = None
        self._class_counts: dict[str, list[int]] = {}

    @property
    def task(self) -> tasks.Task:
        return tasks.get(self.builder_config.task)

    def _info(self) -> tfds.core.DatasetInfo:
        size, task = self.builder_config.image_size, self.task
        if task.multi_label:  # a 0/1 vector over the findings, and one box per finding
            label = tfds.features.Tensor(shape=(task.num_classes,), dtype=np.int64)
            bbox = tfds.features.Tensor(shape=(task.num_classes, 4), dtype=np.float32)
        else:
            label = tfds.features.ClassLabel(names=list(task.class_names))
            bbox = tfds.features.Tensor(shape=(4,), dtype=np.float32)
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 1), encoding_format="png"),
                    "label": label,
                    "image_name": tfds.features.Text(),
                    "patient_id": np.int64,
                    "age": np.int32,  # metadata.MISSING_AGE when missing or implausible
                    "sex": tfds.features.Text(),
                    "view_position": tfds.features.Text(),
                    "follow_up": np.int32,
                    "bbox": bbox,  # x, y, w, h or NO_BOX (per finding for the 14 findings)
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://nihcc.app.box.com/v/ChestXray-NIHCC",
        )

    def plan(self, manual_dir: str | os.PathLike) -> BuildPlan:
        """The checked build plan (computed once): see ``plan_build``."""
        if self._plan is None:
            self._plan = plan_build(manual_dir, self.builder_config, skip_bad_images=self.skip_bad_images)
        return self._plan

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        """One generator per non-empty split (TFDS cannot write an empty one; tiny trees have them)."""
        plan = self.plan(dl_manager.manual_dir)
        return {name: self._generate_examples(name, frame) for name, frame in plan.splits.items() if len(frame)}

    def _download_and_prepare(self, dl_manager, download_config):
        self._class_counts = {name: [0] * self.task.num_classes for name in self.plan(dl_manager.manual_dir).splits}
        self._images = dict.fromkeys(self._class_counts, 0)
        super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)

    def build_report(self, manual_dir: Path) -> dict:
        plan = self.plan(manual_dir)
        return {
            "config": self.builder_config.name,
            "class_names": list(self.task.class_names),
            # images per class; for the 14 findings, positives per finding (an image counts once per finding)
            "class_counts": self._class_counts,
            **plan.summary,
            "images": self._images,
            "skipped": plan.skipped,
        }

    def _generate_examples(self, split: str, frame: pd.DataFrame):
        config = self.builder_config
        counts = self._class_counts[split]
        rows = frame.to_dict("records")
        multi_label = self.task.multi_label
        jobs = [(str(row["path"]), config.image_size, _boxes_to_scale(row["bbox"])) for row in rows]
        results = self.decode(images.load_for_build, jobs)
        for row, (png, box, pixels) in tqdm(
            zip(rows, results, strict=True), total=len(rows), desc=f"{split}: decode+resize", unit="img"
        ):
            name = row["Image Index"]
            if png is None:
                if not self.skip_bad_images:
                    raise images.ImageError(f"{box} (pass skip_bad_images=True to skip bad images)")
                self._plan.skipped.append({"image": name, "reason": box})
                continue
            if multi_label:
                label = np.asarray(row["findings"], np.int64)
                counts[:] = np.add(counts, label).tolist()
                box = _scaled_back(row["bbox"], box)
            else:
                label = int(row["label"])
                counts[label] += 1
                box = NO_BOX if box is None else box
            self._images[split] += 1
            self.source_pixels[name] = pixels
            yield (
                name,
                {
                    "image": png,
                    "label": label,
                    "image_name": name,
                    "patient_id": int(row["Patient ID"]),
                    "age": int(row["Patient Age"]),
                    "sex": str(row["Patient Gender"]),
                    "view_position": str(row["View Position"]),
                    "follow_up": int(row["Follow-up #"]),
                    "bbox": np.asarray(box, np.float32),
                },
            )


def _boxes_to_scale(bbox) -> tuple | np.ndarray | None:
    """What ``images.load_for_build`` scales with the pixels: the six-class box, or the real boxes of
    a 14-finding row stacked (None when there are none)."""
    if isinstance(bbox, tuple):
        return None if bbox == NO_BOX else bbox
    real = np.asarray(bbox)[np.asarray(bbox)[:, 0] != NO_BOX[0]]
    return real if len(real) else None


def _scaled_back(bbox: np.ndarray, scaled) -> np.ndarray:
    """The (14, 4) boxes of a 14-finding row with the real ones replaced by their scaled versions."""
    out = np.asarray(bbox, np.float32).copy()
    if scaled is not None:
        out[out[:, 0] != NO_BOX[0]] = np.asarray(scaled, np.float32).reshape(-1, 4)
    return out


def built_from(manual_dir: str | os.PathLike, skip_bad_images: bool) -> dict:
    """What defines a dataset's content besides its builder config: the digests of the metadata, box,
    manifest and split-list files, how many images the download holds, and the skip policy. Recorded
    in the build report; a later build into the same ``data_dir`` must match it."""
    manual_dir = _existing(manual_dir)
    files = [
        metadata.find_data_entry(manual_dir).name,
        nih_layout.BBOX_FILE,
        *MANIFEST_NAMES,
        *nih_layout.OFFICIAL_LISTS,
    ]
    digests = {name: building.sha256_file(manual_dir / name) for name in files if (manual_dir / name).is_file()}
    return {
        "files": digests,
        "images_found": len(nih_layout.index_images(manual_dir)),
        "skip_bad_images": skip_bad_images,
    }


def build_lock_path(data_dir: Path, config: NihConfig) -> Path:
    """The lock file that builds of this dataset into ``data_dir`` hold."""
    return building.build_lock_path(data_dir, NihChestXray.name, config.name)


def build_dataset(
    manual_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    config: NihConfig,
    *,
    num_workers: int = 0,
    skip_bad_images: bool = False,
) -> NihChestXray:
    """Builds the dataset once (no-op when already built from the same files), with its build report;
    see :func:`building.build_once` for the lock and what a failure leaves."""
    data_dir = Path(data_dir).absolute()

    def make_builder() -> NihChestXray:
        return NihChestXray(
            config=config, data_dir=os.fspath(data_dir), num_workers=num_workers, skip_bad_images=skip_bad_images
        )

    wanted = built_from(manual_dir, skip_bad_images)
    return building.build_once(make_builder, manual_dir, data_dir, wanted, lambda builder: builder.plan(manual_dir))
