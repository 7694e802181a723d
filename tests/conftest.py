"""Shared fixtures: a small NIH-format tree and one tiny trained workdir for the whole session.

Training takes tens of seconds, so every test that needs a checkpoint shares ``tiny_workdir``
(trained and evaluated once, by the real CLI) instead of training its own.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

# One persistent XLA compilation cache for the session, inherited by every subprocess the tests
# start: the same tiny models are compiled by many runs, and a cache hit costs a fraction of a compile.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="lungjax-tests-xla-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

from lungjax.data import labels  # noqa: E402  (after the cache settings: jax reads them at import)

REPO = Path(__file__).resolve().parents[1]
TREE_PATIENTS = 60  # 10 per class: every class reaches every split of the patient split
TREE_FILMS_PER_PATIENT = 2
TREE_IMAGE_SIZE = 32
TREE_BOX_SIZE = 10
DATA_ENTRY_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
                     "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
# NIH spells the merged class as its two findings.
FINDING_OF_CLASS = {name: "Nodule" if name == "Nodule/Mass" else name for name in labels.CLASS_NAMES}


def write_nih_tree(root: Path, *, patients: int = TREE_PATIENTS, films: int = TREE_FILMS_PER_PATIENT,
                   size: int = TREE_IMAGE_SIZE, seed: int = 0) -> Path:
    """Noise films with a bright square whose position depends on the class, and its box.

    Patient p has class p % 6 on all of its films; every film that is not "No Finding" gets an
    entry in ``BBox_List_2017.csv`` around its square.
    """
    rng = np.random.default_rng(seed)
    image_dir = root / "images_001" / "images"
    image_dir.mkdir(parents=True)
    entries, boxes = [], []
    for patient in range(1, patients + 1):
        label = (patient - 1) % labels.NUM_CLASSES
        name_of_class = labels.CLASS_NAMES[label]
        for film in range(films):
            name = f"{patient:08d}_{film:03d}.png"
            image = rng.integers(0, 80, size=(size, size), dtype=np.uint8)
            x = (label * 4 + int(rng.integers(0, 4))) % (size - TREE_BOX_SIZE)
            y = int(rng.integers(0, size - TREE_BOX_SIZE))
            image[y:y + TREE_BOX_SIZE, x:x + TREE_BOX_SIZE] = 220
            cv2.imwrite(str(image_dir / name), image)
            entries.append([name, FINDING_OF_CLASS[name_of_class], film, patient, 40 + patient % 30,
                            "MF"[patient % 2], "PA", size, size, 0.143, 0.143])
            if name_of_class != "No Finding":
                boxes.append([name, FINDING_OF_CLASS[name_of_class], x, y, TREE_BOX_SIZE, TREE_BOX_SIZE])
    with (root / "Data_Entry_2017.csv").open("w", newline="") as handle:
        handle.write(DATA_ENTRY_HEADER + "\n")
        csv.writer(handle).writerows(entries)
    with (root / "BBox_List_2017.csv").open("w", newline="") as handle:
        handle.write("Image Index,Finding Label,Bbox [x,y,w,h],,,\n")
        csv.writer(handle).writerows(boxes)
    return root


@pytest.fixture(scope="session")
def nih_tree(tmp_path_factory) -> Path:
    """A 60-patient, 120-film NIH-format tree (32 px PNGs, boxes for every finding)."""
    return write_nih_tree(tmp_path_factory.mktemp("nih_tree"))


@pytest.fixture(scope="session")
def tiny_overrides(nih_tree) -> list[str]:
    """Command-line overrides that point ``configs/tiny.py`` at ``nih_tree``."""
    return ["--config.data.source=nih", f"--config.data.manual_dir={nih_tree}"]


@pytest.fixture(scope="session")
def tiny_config(nih_tree):
    """``configs/tiny.py`` reading ``nih_tree``: the config ``tiny_workdir`` was trained with."""
    spec = importlib.util.spec_from_file_location("tiny_config", REPO / "configs" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.data.source, config.data.manual_dir = "nih", str(nih_tree)
    return config


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory, tiny_overrides) -> Path:
    """A workdir trained for a few steps by ``configs/tiny.py`` and evaluated on its test split."""
    workdir = tmp_path_factory.mktemp("tiny_workdir")
    subprocess.run([sys.executable, "-m", "lungjax.main", f"--config={REPO / 'configs' / 'tiny.py'}",
                    f"--workdir={workdir}", *tiny_overrides], cwd=REPO, check=True, capture_output=True)
    return workdir
