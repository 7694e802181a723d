"""TFDS builder ``lungjax_sources``: any chest radiograph source, read by its adapter, as ArrayRecord.

One builder serves every source of :mod:`lungjax.data.sources` (CheXpert, MIMIC-CXR-JPG, PadChest,
VinDr-CXR, a hospital's export, NIH as a source); its config is named ``<source>_<stored_size>``
(``chexpert_256``), with a suffix for each build-time option that changes what is stored
(``chexpert_256_frontal_nfneg``). The name is not TFDS's ``chexpert``, which its catalogue already holds.

The build reads the source's table through its adapter (``read(manual_dir, ...)``), validates it,
splits it (the source's official split, else patient-disjoint: :mod:`.sources.splits`), checks that
every film exists, then decodes each film with :func:`lungjax.data.radiograph_files.read` (PNG 8/16-bit,
JPEG at a reduced scale where libjpeg can, DICOM through its LUTs), pads it to a square and resizes it
to the stored size as NIH's builds do (:func:`lungjax.data.images.resize_square`). Each example holds:

* ``image``: 8-bit gray PNG, ``stored_size`` square;
* ``image_name`` (the path under manual_dir, also the example's key), ``patient_id``, ``study_id``,
  ``source``, ``view``, ``sex``: text; ``age``: whole years, ``metadata.MISSING_AGE`` when unknown;
* ``label_states``: int8, one entry per label of the whole harmonised vocabulary (``label_names()``, in
  :func:`.sources.labelspace.vocabulary` order), the four raw states; a label the source does not state
  is NOT_STATED. The training label set and the uncertainty policy are chosen later, so one build
  serves every label set and policy.

Build-time options that change states or rows are config fields, recorded in the build report with the
rows read and skipped (and why) and each label's state counts per split. Bad input (a missing column,
an unknown label string, a missing file, a patient on two official splits) stops the build before
anything is written, in one line naming the file and the row; the lock, the dataset's identity and the
atomicity are :mod:`lungjax.data.building`'s, shared with NIH's builder.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow_datasets as tfds
from tqdm.auto import tqdm

from lungjax.data import building, images, metadata, nih_layout, radiograph_files
from lungjax.data.sources import chestxray14, chexpert, contract, hospital, labelspace, mimic, padchest, splits, vindr

# Each source's adapter and the build-time options it takes (config fields of the same names).
ADAPTERS = {
    "chexpert": (chexpert.read, ("no_finding_negates",)),
    "mimic": (mimic.read, ("labeller", "no_finding_negates")),
    "padchest": (padchest.read, ("physician_test",)),
    "vindr": (vindr.read, ("readers",)),
    "hospital": (hospital.read, ()),
    "nih": (chestxray14.read, ()),
}
SOURCES = tuple(ADAPTERS)
# What a non-default option adds to the config's name.
OPTION_SUFFIXES = {
    "frontal_only": lambda value: "frontal",
    "no_finding_negates": lambda value: "nfneg",
    "labeller": lambda value: value,
    "readers": lambda value: value,
    "physician_test": lambda value: "physician",
    "seed": lambda value: f"seed{value}",
}
WARNINGS_SHOWN = 5  # films read with a warning that the report quotes


def label_names() -> tuple[str, ...]:
    """The labels of ``label_states``, in order: the whole harmonised vocabulary."""
    return tuple(labelspace.vocabulary())


@dataclasses.dataclass(eq=True)
class SourceConfig(tfds.core.BuilderConfig):
    """One source, its stored size and the build-time options that change what is stored.

    ``frontal_only``: PA and AP films only (any source). ``no_finding_negates`` (CheXpert, MIMIC):
    No Finding = 1 makes the other labels not stated negative. ``labeller`` (MIMIC): ``chexpert`` or
    ``negbio``. ``readers`` (VinDr): ``majority``, ``any`` or ``all``. ``physician_test`` (PadChest):
    the physician-labelled rows are the test set. ``seed``: of the patient split.
    """

    source: str = "chexpert"
    image_size: int = 256  # the stored size (named as NihConfig's, which evaluation reads)
    frontal_only: bool = False
    no_finding_negates: bool = False
    labeller: str = "chexpert"
    readers: str = "majority"
    physician_test: bool = False
    seed: int = 42


def make_config(source: str, stored_size: int = 256, **options) -> SourceConfig:
    """The config of a source at a stored size with build-time options; an option the source does not
    take, or an unknown value, is refused."""
    if source not in ADAPTERS:
        raise contract.SourceError(f"unknown source {source!r}; sources: {', '.join(SOURCES)}")
    if not images.MIN_SIZE <= int(stored_size) <= images.MAX_SIZE:
        raise contract.SourceError(f"stored_size must be in {images.MIN_SIZE}..{images.MAX_SIZE}, got {stored_size}")
    defaults = {field.name: field.default for field in dataclasses.fields(SourceConfig)}
    unknown = [key for key in options if key not in OPTION_SUFFIXES]
    if unknown:
        raise contract.SourceError(f"unknown build options {unknown}; options: {list(OPTION_SUFFIXES)}")
    taken = (*ADAPTERS[source][1], "frontal_only", "seed")
    foreign = [key for key, value in options.items() if key not in taken and value != defaults[key]]
    if foreign:
        raise contract.SourceError(f"source {source!r} takes no build option {foreign}; it takes {list(taken)}")
    allowed = {"labeller": mimic.LABELLERS, "readers": vindr.POLICIES}
    for key, values in allowed.items():
        if key in options and options[key] not in values:
            raise contract.SourceError(f"{key} must be one of {values}, got {options[key]!r}")
    changed = [key for key in OPTION_SUFFIXES if key in options and options[key] != defaults[key]]
    name = "_".join([source, str(int(stored_size)), *(OPTION_SUFFIXES[key](options[key]) for key in changed)])
    described = ", ".join(f"{key}={options[key]!r}" for key in changed) or "default options"
    return SourceConfig(
        name=name,
        description=f"{source}, {stored_size}px grayscale PNG, raw label states over the harmonised vocabulary; "
        f"{described}.",
        source=source,
        image_size=int(stored_size),
        **options,
    )


def metadata_files(source: str, manual_dir: Path) -> list[Path]:
    """The metadata files a source's adapter reads (those present): what the dataset's identity digests."""
    candidates = {
        "chexpert": lambda: [manual_dir / chexpert.TRAIN_CSV, manual_dir / chexpert.VALID_CSV],
        "mimic": lambda: [mimic.file_path(manual_dir, name) for name in ("metadata", *mimic.LABELLERS, "split")],
        "padchest": lambda: [manual_dir / padchest.CSV],
        "vindr": lambda: [*(manual_dir / p for p in vindr.PHYSIONET_FILES.values()), manual_dir / vindr.KAGGLE_FILE],
        "hospital": lambda: [manual_dir / hospital.CSV],
        "nih": lambda: [
            *(manual_dir / name for name in nih_layout.DATA_ENTRY_NAMES),
            *(manual_dir / name for name in nih_layout.OFFICIAL_LISTS),
        ],
    }[source]()
    return sorted(path for path in candidates if path.is_file())


@dataclasses.dataclass
class SourcePlan:
    """Everything decided before any pixel is touched: the table and the rows of each split."""

    table: contract.SourceTable
    states: np.ndarray  # (rows, V) int8: every row's states over the whole vocabulary
    splits: dict[str, pd.DataFrame]  # rows of the table per split (its index kept), films present
    skipped: list[dict[str, str]]
    summary: dict


def read_table(manual_dir: str | os.PathLike, config: SourceConfig) -> contract.SourceTable:
    """The source's table through its adapter, validated, with the config's options applied."""
    root = Path(manual_dir)
    if not root.is_dir():
        raise contract.SourceError(f"manual_dir {root} does not exist (config.data.manual_dir of {config.source})")
    read, option_names = ADAPTERS[config.source]
    table = contract.validate(read(root, **{name: getattr(config, name) for name in option_names}))
    table = contract.select_views(table) if config.frontal_only else table
    return table.with_frame(table.frame)  # rows numbered 0..n-1: a row's number is its index


def states_over_vocabulary(table: contract.SourceTable) -> np.ndarray:
    """(rows, V) int8: the table's label states over the whole vocabulary, NOT_STATED where it has no column."""
    states = np.full((len(table.frame), len(label_names())), contract.NOT_STATED, np.int8)
    for k, name in enumerate(label_names()):
        if name in table.labels:
            states[:, k] = table.frame[name].to_numpy()
    return states


def plan_build(
    manual_dir: str | os.PathLike,
    config: SourceConfig,
    *,
    skip_bad_images: bool = False,
    table: contract.SourceTable | None = None,
) -> SourcePlan:
    """Reads and checks the source (or takes its ``table``, already read); raises SourceError, naming
    the file and the row, before anything is written. Splits are made on every row and missing films
    dropped afterwards (when skipping), so a few missing files do not move others between splits."""
    root = Path(manual_dir)
    table = read_table(root, config) if table is None else table
    frame = table.frame
    split = splits.assign(table, seed=config.seed)
    crossing = splits.patients_crossing(table, split)
    if crossing:  # splits.assign never makes one; an official split crossing is refused by contract.validate
        raise contract.SourceError(f"{config.source}: {crossing} patients are on two splits")
    missing = _missing_films(frame["path"], root)
    if missing and not skip_bad_images:
        row, path, reason = missing[0]
        files = ", ".join(path.name for path in metadata_files(config.source, root))
        raise contract.SourceError(
            f"{config.source} ({files}): table row {row} ({path}) {reason} under {root} "
            f"({len(missing)} of {len(frame)} rows are so); set config.data.skip_bad_images=True to build without them"
        )
    present = np.ones(len(frame), bool)
    present[[row for row, _, _ in missing]] = False
    parts = {name: frame[(split == name).to_numpy() & present] for name in contract.SPLITS}
    official = (frame["split"] != contract.NO_SPLIT).all() and len(frame)
    summary = {
        "source": config.source,
        "options": {
            **{field.name: getattr(config, field.name) for field in dataclasses.fields(SourceConfig)},
            **{key: _plain(value) for key, value in table.options.items()},
        },
        "split": _split_description(frame["split"], official, config.seed),
        "rows_read": len(frame) + int(table.options.get("rows_of_other_views", 0)),
        "rows_of_the_build": len(frame),
        "patients": {name: int(part["patient_id"].nunique()) for name, part in parts.items()},
        "patients_crossing_splits": crossing,
    }
    skipped = [{"image": path, "reason": reason} for _, path, reason in missing]
    return SourcePlan(table=table, states=states_over_vocabulary(table), splits=parts, skipped=skipped, summary=summary)


def _missing_films(paths: pd.Series, root: Path) -> list[tuple[int, str, str]]:
    """(row, path, why) of each row whose film is not an existing image file of a known format."""
    missing = []
    for row, path in enumerate(paths):
        if Path(path).suffix.lower() not in contract.IMAGE_SUFFIXES:
            missing.append((row, path, f"is not a PNG, JPEG or DICOM file {contract.IMAGE_SUFFIXES}"))
        elif not (root / path).is_file():
            missing.append((row, path, "does not exist"))
    return missing


def _split_description(official_split: pd.Series, official: bool, seed: int) -> str:
    if not official:
        return f"patient: no official split; a patient-disjoint 70/10/20 split stratified by label (seed {seed})"
    if (official_split == "validation").any():
        return "official: the source's train / validation / test split"
    return (
        "official: the source's train and test split; validation is a patient-disjoint "
        f"{metadata.OFFICIAL_VALIDATION_SHARE:.0%} of the training patients (seed {seed})"
    )


def _plain(value):
    """An option's value as JSON holds it."""
    return list(value) if isinstance(value, tuple) else value


def stored_film(path: str | os.PathLike, size: int, *, reduced: bool = True) -> tuple[bytes, tuple[str, ...]]:
    """A film as the build stores it: read (``reduced``: a JPEG at libjpeg's reduced scale, see
    ``images.decode_gray``), padded to a square, resized to ``size``, as PNG; and the reader's warnings.
    Lateral DICOMs are read (a source's views are the table's to filter, not the reader's)."""
    film = radiograph_files.read(path, allow_lateral=True, at_least=size if reduced else None)
    return images.encode_png(images.resize_square(film.pixels, size)[..., None]), film.warnings


def load_film(job: tuple[str, int]) -> tuple[bytes | None, str | tuple[str, ...]]:
    """The build's worker: (path, stored size) -> ``stored_film``, or (None, the reason naming the file)
    for a film that cannot be read, so the build can skip it."""
    try:
        return stored_film(*job)
    except images.ImageError as err:
        return None, str(err)


class LungjaxSources(building.ShardedBuilder):
    """Every source of :mod:`lungjax.data.sources`, with raw label states over the harmonised vocabulary."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "CheXpert, MIMIC-CXR-JPG, PadChest, VinDr-CXR, a hospital's export and NIH."}
    BUILDER_CONFIGS = [make_config(source) for source in SOURCES]
    DEFAULT_CONFIG_NAME = "chexpert_256"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Point manual_dir at the source's download as its adapter documents it (lungjax.data.sources): "
        "CheXpert's CheXpert-v1.0 folder, MIMIC-CXR-JPG's 2.0.0 folder, PadChest's folder with its 160K CSV, "
        "VinDr-CXR's folder, or the folder of a hospital's labels.csv."
    )

    def __init__(self, **kwargs):
        """Arguments as for :class:`building.ShardedBuilder`; ``plan`` is set by ``build_dataset``."""
        super().__init__(**kwargs)
        self.plan: SourcePlan | None = None
        self._written: dict[str, list[int]] = {}
        self._warned: list[str] = []
        self._films_with_warnings = 0

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        text = tfds.features.Text()
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 1), encoding_format="png"),
                    "image_name": text,
                    "patient_id": text,
                    "study_id": text,
                    "source": text,
                    "view": text,
                    "sex": text,
                    "age": np.int32,  # metadata.MISSING_AGE when unknown
                    "label_states": tfds.features.Tensor(shape=(len(label_names()),), dtype=np.int8),
                }
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        """One generator per non-empty split (TFDS cannot write an empty one; tiny trees have them)."""
        root = Path(dl_manager.manual_dir)
        return {
            name: self._generate_examples(name, frame, root) for name, frame in self.plan.splits.items() if len(frame)
        }

    def _generate_examples(self, split: str, frame: pd.DataFrame, root: Path):
        size = self.builder_config.image_size
        written = self._written.setdefault(split, [])
        jobs = [(os.fspath(root / path), size) for path in frame["path"]]
        results = self.decode(load_film, jobs)
        rows = zip(frame.index, frame.to_dict("records"), results, strict=True)
        for index, row, (png, said) in tqdm(rows, total=len(frame), desc=f"{split}: decode+resize", unit="img"):
            if png is None:
                if not self.skip_bad_images:
                    raise images.ImageError(f"{said} (pass skip_bad_images=True to skip bad images)")
                self.plan.skipped.append({"image": row["path"], "reason": said})
                continue
            if said:
                self._films_with_warnings += 1
                self._warned.extend(f"{row['path']}: {sentence}" for sentence in said)
            written.append(index)
            age = row["age"]
            yield (
                row["path"],
                {
                    "image": png,
                    "image_name": row["path"],
                    "patient_id": str(row["patient_id"]),
                    "study_id": str(row["study_id"]),
                    "source": self.plan.table.source,
                    "view": row["view"],
                    "sex": row["sex"],
                    "age": metadata.MISSING_AGE if not age >= 0 else int(age),
                    "label_states": self.plan.states[index],
                },
            )

    def build_report(self, manual_dir: Path) -> dict:
        plan = self.plan
        return {
            "config": self.builder_config.name,
            **plan.summary,
            "images": {split: len(rows) for split, rows in self._written.items()},
            "label_names": list(label_names()),
            "label_states": {
                split: _state_counts(plan.states[rows], plan.table.labels) for split, rows in self._written.items()
            },
            "skipped": plan.skipped,
            "skipped_by_reason": dict(collections.Counter(_reason(s["reason"]) for s in plan.skipped)),
            "films_with_warnings": self._films_with_warnings,
            "warnings_shown": self._warned[:WARNINGS_SHOWN],
        }


def _reason(reason: str) -> str:
    """A skip's reason without the file's name, to count them by kind."""
    return reason.split(": ", 1)[-1] if ": " in reason else reason


def _state_counts(states: np.ndarray, stated: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Per label the source states: how many rows hold each of the four states."""
    names = label_names()
    return {
        name: {contract.STATE_NAMES[s]: int((states[:, names.index(name)] == s).sum()) for s in contract.STATE_NAMES}
        for name in stated
    }


def built_from(manual_dir: Path, table: contract.SourceTable, skip_bad_images: bool) -> dict:
    """What defines a built source besides its config: the digests of the metadata files its adapter
    read, and of its films' paths and sizes (a film replaced by another of a different size, added or
    removed changes it), and the skip policy. Recorded in the build report; a later build into the
    same ``data_dir`` must match it."""
    files = metadata_files(table.source, manual_dir)
    digest = hashlib.sha256()
    for path in table.frame["path"]:
        film = manual_dir / path
        digest.update(f"{path}\t{film.stat().st_size if film.is_file() else -1}\n".encode())
    return {
        "files": {path.relative_to(manual_dir).as_posix(): building.sha256_file(path) for path in files},
        "films": {"count": len(table.frame), "paths_and_sizes_sha256": digest.hexdigest()},
        "skip_bad_images": skip_bad_images,
    }


def build_dataset(
    manual_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    config: SourceConfig,
    *,
    num_workers: int = 0,
    skip_bad_images: bool = False,
) -> LungjaxSources:
    """Builds the source once (no-op when already built from the same files), with its build report;
    see :func:`building.build_once` for the lock and what a failure leaves. The table is read once:
    for the dataset's identity and, when building, for the plan."""
    manual_dir, data_dir = Path(manual_dir).absolute(), Path(data_dir).absolute()
    table = read_table(manual_dir, config)

    def make_builder() -> LungjaxSources:
        return LungjaxSources(
            config=config, data_dir=os.fspath(data_dir), num_workers=num_workers, skip_bad_images=skip_bad_images
        )

    def plan(builder: LungjaxSources) -> None:
        builder.plan = plan_build(manual_dir, config, skip_bad_images=skip_bad_images, table=table)

    wanted = built_from(manual_dir, table, skip_bad_images)
    return building.build_once(make_builder, manual_dir, data_dir, wanted, plan)
