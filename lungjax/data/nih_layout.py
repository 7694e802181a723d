"""NIH ChestX-ray14's download as lungjax reads it (builder, metadata) and the phantom writes it: the
file names, the image folders and the CSV headers, in one place."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENTRY_FILE = "Data_Entry_2017.csv"  # NIH's 2017 release and Kaggle's copy
DATA_ENTRY_2020_FILE = "Data_Entry_2017_v2020.csv"  # NIH's 2020 revision
DATA_ENTRY_NAMES = (DATA_ENTRY_FILE, DATA_ENTRY_2020_FILE)  # the builder takes the first one present
BBOX_FILE = "BBox_List_2017.csv"
TRAIN_VAL_LIST, TEST_LIST = "train_val_list.txt", "test_list.txt"  # NIH's official patient-wise split
OFFICIAL_LISTS = (TRAIN_VAL_LIST, TEST_LIST)
DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"

# Images lie flat in images/ (NIH's archives unpacked) or in Kaggle's images_001/images/ ... images_012/images/.
FLAT_IMAGE_DIR = "images"
NUMBERED_IMAGE_DIRS = "images_*/images"  # a glob
FIRST_IMAGE_DIR = Path("images_001") / "images"  # where the phantom writes its films


def image_dirs(root: Path) -> list[Path]:
    """The folders under ``root`` that may hold a download's images, in the order the builder reads them."""
    return [root / FLAT_IMAGE_DIR, *sorted(root.glob(NUMBERED_IMAGE_DIRS))]


def index_images(manual_dir: Path) -> dict[str, Path]:
    """Image name -> path, for images flat in ``images/`` or in Kaggle's ``images_NNN/images/``."""
    folders = image_dirs(manual_dir)
    index: dict[str, Path] = {}
    for folder in folders:
        if folder.is_dir():
            for entry in os.scandir(folder):
                index.setdefault(entry.name, Path(entry.path))
    return index
