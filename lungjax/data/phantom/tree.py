"""An NIH ChestX-ray14 tree of phantom films, so the real builder runs on them unchanged."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import zlib

import cv2
import numpy as np

from lungjax.data import images, labels, nih_layout, tasks, workers
from lungjax.data.phantom import findings14, sites, six_class
from lungjax.data.phantom.anatomy import FIELD_OF_VIEW_MM, sample_anatomy


@dataclasses.dataclass(frozen=True)
class _FilmRecord:
    """One written film: its Data_Entry row and a box row per boxed finding."""

    entry: str
    boxes: tuple[str, ...]


_FILMS = {"six_class": six_class.films, "full14": findings14.films}  # per task in tasks.TASKS


def _patient_films(
    patient_id: int,
    seed: int,
    image_size: int,
    films_per_patient: tuple[int, int],
    image_dir: str,
    task: str,
    site: sites.Site | None,
) -> list[_FilmRecord]:
    """Render and write one patient's films; its own seed makes the result worker-independent (a site's
    patients have seeds of their own: another hospital, other patients)."""
    entropy = [seed, patient_id] if site is None else [seed, zlib.crc32(site.name.encode("utf-8")), patient_id]
    rng = np.random.default_rng(np.random.SeedSequence(entropy))
    anatomy = sample_anatomy(rng)
    count = int(rng.integers(films_per_patient[0], films_per_patient[1] + 1))
    spacing = FIELD_OF_VIEW_MM / image_size
    age = anatomy.age
    records = []
    films = (
        _FILMS[task](anatomy, count, rng, image_size)
        if site is None
        else findings14.films(anatomy, count, rng, image_size, site)
    )
    for follow_up, (view, finding_labels, image, boxes) in enumerate(films):
        name = f"{patient_id:08d}_{follow_up:03d}.png"
        if not cv2.imwrite(os.path.join(image_dir, name), image):
            raise OSError(f"could not write {os.path.join(image_dir, name)}")
        entry = (
            f"{name},{finding_labels},{follow_up},{patient_id},{age},{anatomy.sex},{view},"
            f"{image_size},{image_size},{spacing!r},{spacing!r}"
        )
        rows = tuple(
            ",".join([name, labels.BOX_LIST_NAMES.get(finding, finding), *(repr(v) for v in box)])
            for finding, box in boxes.items()
        )
        records.append(_FilmRecord(entry, rows))
        age += int(rng.random() < 0.3)  # follow-ups span months to years
    return records


def write_nih_tree(
    root: str | os.PathLike,
    num_patients: int,
    *,
    seed: int = 0,
    image_size: int = 256,
    films_per_patient: tuple[int, int] = (1, 5),
    num_workers: int = 1,
    progress: bool = False,
    task: str = "six_class",
    site: str | sites.Site | None = None,
) -> pathlib.Path:
    """Write phantom films as an NIH ChestX-ray14 tree, so the real builder runs on them unchanged.

    Creates ``Data_Entry_2017.csv``, ``BBox_List_2017.csv`` and
    ``images_001/images/<patient>_<follow-up>.png``. ``task`` (a name in ``tasks.TASKS``) decides the
    films: "six_class" draws one finding per film in the reference subset's proportions;
    "full14" draws NIH's own finding combinations (several findings on a film, No Finding on about
    half) with a box row per boxed finding. The output is byte-identical for a seed whatever
    ``num_workers`` is. Workers are spawned, never forked, because the parent may hold JAX's threads.

    ``site`` (a preset name of :data:`sites.SITES` or a :class:`sites.Site`; full14 only) gives the films
    a hospital's look, views, prevalence and labeller; without one the tree is the same bytes as before
    sites existed. The six-class films stay as the demo published them.
    """
    if not isinstance(num_patients, int) or num_patients < 1:
        raise ValueError(f"num_patients must be an integer >= 1, got {num_patients!r}")
    if not isinstance(image_size, int) or not images.MIN_SIZE <= image_size <= images.MAX_SIZE:
        raise ValueError(f"image_size must be an integer in [{images.MIN_SIZE}, {images.MAX_SIZE}], got {image_size!r}")
    low, high = films_per_patient
    if not 1 <= low <= high:
        raise ValueError(f"films_per_patient must be (low, high) with 1 <= low <= high, got {films_per_patient!r}")
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers!r}")
    tasks.get(task)  # names the known tasks when it is not one
    site = sites.site(site)
    if site is not None and task != "full14":
        raise ValueError(f"a site applies to full14 films; the {task} films stay as the demo published them")

    root = pathlib.Path(root)
    image_dir = root / nih_layout.FIRST_IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    patient_ids = range(1, num_patients + 1)
    job = (seed, image_size, (low, high), str(image_dir), task, site)
    with workers.process_pool(num_workers) as executor:
        if executor is None:
            results = (_patient_films(pid, *job) for pid in patient_ids)
        else:
            chunk = max(1, num_patients // (8 * num_workers))
            results = executor.map(_patient_films, patient_ids, *([arg] * num_patients for arg in job), chunksize=chunk)
        if progress:
            from tqdm.auto import tqdm

            results = tqdm(results, total=num_patients, desc="phantom patients", unit="patient")
        records = [record for patient in results for record in patient]

    entries = [nih_layout.DATA_ENTRY_HEADER, *(r.entry for r in records)]
    boxes = [nih_layout.BBOX_HEADER, *(row for r in records for row in r.boxes)]
    (root / nih_layout.DATA_ENTRY_FILE).write_text("\n".join(entries) + "\n", encoding="ascii")
    (root / nih_layout.BBOX_FILE).write_text("\n".join(boxes) + "\n", encoding="ascii")
    return root
