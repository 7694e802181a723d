"""The files a run classifies: each path given that is not a folder, as it is (a missing or unreadable one
gets its error record), and under each folder every PNG, JPEG or DICOM file, by suffix or, without
one of those suffixes, by the DICOM magic, in name order."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lungjax.data import radiograph_files

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _is_radiograph(path: Path) -> bool:
    if path.suffix.lower() in (*PICTURE_SUFFIXES, *radiograph_files.DICOM_SUFFIXES):
        return True
    end = radiograph_files.DICOM_MAGIC_OFFSET + len(radiograph_files.DICOM_MAGIC)
    try:
        with path.open("rb") as handle:
            return handle.read(end)[radiograph_files.DICOM_MAGIC_OFFSET :] == radiograph_files.DICOM_MAGIC
    except OSError:
        return True  # unreadable: classify it, so that its error is reported rather than silently skipped


def expand(paths: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """(files to classify, files under the folders that were left out as neither PNG, JPEG nor DICOM)."""
    chosen, skipped = [], []
    for path in map(Path, paths):
        if not path.is_dir():
            chosen.append(path)
            continue
        for found in sorted(p for p in path.rglob("*") if p.is_file()):
            (chosen if _is_radiograph(found) else skipped).append(found)
    return chosen, skipped
