"""The files a run classifies: each path given that is not a folder, as it is, and under each folder, walked
in name order, every PNG, JPEG or DICOM file, by suffix or, without one of those suffixes, by the DICOM
magic.

Whatever under a folder is not a regular file, nor a symbolic link to one, is classified too, so that
it gets its error record (the reader names a FIFO, socket or device without opening it, a dangling
or looping symbolic link, and a symbolic link to a folder, which is not walked: it may lead back
up the tree) rather than being skipped without a word.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from lungjax.data import radiograph_files

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _is_radiograph(path: Path) -> bool:
    """Whether a regular file is one to classify: by suffix, else by the DICOM magic."""
    if path.suffix.lower() in (*PICTURE_SUFFIXES, *radiograph_files.DICOM_SUFFIXES):
        return True
    end = radiograph_files.DICOM_MAGIC_OFFSET + len(radiograph_files.DICOM_MAGIC)
    try:
        with path.open("rb") as handle:
            return handle.read(end)[radiograph_files.DICOM_MAGIC_OFFSET :] == radiograph_files.DICOM_MAGIC
    except OSError:
        return True  # unreadable: classify it, so that its error is reported rather than silently skipped


def _walk(folder: Path, chosen: list[Path], skipped: list[Path]) -> None:
    """Sorts everything under ``folder`` into ``chosen`` and ``skipped``, in name order, without following
    symbolic links to folders."""
    try:
        with os.scandir(folder) as entries:
            ordered = sorted(entries, key=lambda entry: entry.name)
    except OSError:  # an unreadable folder: classified, so that its error record names it
        chosen.append(folder)
        return
    for entry in ordered:
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            _walk(path, chosen, skipped)
        elif _is_regular(entry):
            (chosen if _is_radiograph(path) else skipped).append(path)
        else:  # FIFO, socket, device, dangling or looping link, link to a folder: the reader says which
            chosen.append(path)


def _is_regular(entry: os.DirEntry) -> bool:
    """Whether ``entry`` is a regular file or a symbolic link to one (a looping link raises: it is not)."""
    try:
        return entry.is_file(follow_symlinks=True)
    except OSError:
        return False


def expand(paths: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """(files to classify, files under the folders that were left out as neither PNG, JPEG nor DICOM)."""
    chosen, skipped = [], []
    for path in map(Path, paths):
        if path.is_dir():
            _walk(path, chosen, skipped)
        else:
            chosen.append(path)
    return chosen, skipped
