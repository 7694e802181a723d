"""Classifying files with a loaded bundle: one CSV row and one JSON record per file, in order.

Files are read and predicted ``batch_size`` at a time; the readable ones of a chunk go to the model
in one batch padded with black images to ``batch_size`` rows, so a run compiles one shape. The
probabilities are the model's; the calibrated ones are ``temperature.apply`` with the manifest's
temperatures; the classes called at an operating point are those whose uncalibrated probability
reaches its threshold (``decisions.called``), as evaluation chose them on validation. The
out-of-distribution score is the Mahalanobis distance of the model's features to the training films'
(``fit.ood``, the manifest's record); above its threshold the file gets a warning that it is unlike the
training films, in its record's warnings like every other.
"""

from __future__ import annotations

import csv
import errno
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lungjax import folders
from lungjax.data import images, radiograph_files
from lungjax.evaluation.fit import decisions, temperature
from lungjax.serve.bundle import Bundle

CSV_FILE = "predictions.csv"
JSONL_FILE = "predictions.jsonl"
WARNING_SEPARATOR = " | "  # between a file's warnings in its CSV cell (each warning is a sentence)


def _read(path: Path, bundle: Bundle, allow_lateral: bool) -> tuple[dict, np.ndarray | None]:
    """A file's record so far and its model input, or its error record and None."""
    name = radiograph_files.display_name(path)
    try:
        radiograph = radiograph_files.read(path, allow_lateral=allow_lateral)
    except images.ImageError as err:
        record = {"file": name, "status": "error", "error": str(err), "source": None, "warnings": []}
        return {**record, "out_of_distribution": None, "probabilities": None, "calibrated": None, "called": None}, None
    record = {"file": name, "status": "ok", "error": None, "source": radiograph.source}
    return {**record, "warnings": list(radiograph.warnings)}, bundle.prepare(radiograph.pixels)


def _predict(bundle: Bundle, inputs: list[np.ndarray], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, out-of-distribution scores) of the real rows."""
    padding = [np.zeros_like(inputs[0])] * (batch_size - len(inputs))
    probs, features = bundle.predict(np.stack(inputs + padding))
    return np.asarray(probs)[: len(inputs)], bundle.unlike.score(np.asarray(features)[: len(inputs)])


def unlike_warning(score: float, bundle: Bundle) -> str:
    """The warning of a film whose out-of-distribution score is above the threshold."""
    unlike = bundle.unlike
    return (
        f"Unlike the training films ({', '.join(bundle.training_sources)}): out-of-distribution score {score:.3g} "
        f"is above the threshold {unlike.threshold:.3g}, which {unlike.false_alarm_rate:.0%} of validation films "
        "exceed; its probabilities may mean little"
    )


def _csv_header(bundle: Bundle) -> list[str]:
    return [
        "file",
        "status",
        "error",
        "source",
        "warnings",
        "out_of_distribution",
        *(f"probability:{name}" for name in bundle.class_names),
        *(f"calibrated:{name}" for name in bundle.class_names),
        *(f"called:{rule}" for rule in bundle.thresholds),
    ]


def _csv_row(record: dict, bundle: Bundle) -> list[str]:
    row = [record["file"], record["status"], record["error"] or "", record["source"] or ""]
    row.append(WARNING_SEPARATOR.join(record["warnings"]))
    if record["status"] != "ok":
        return row + [""] * (1 + 2 * len(bundle.class_names) + len(bundle.thresholds))
    row.append(f"{record['out_of_distribution']:.9g}")
    row += [f"{record['probabilities'][name]:.9g}" for name in bundle.class_names]
    row += [f"{record['calibrated'][name]:.9g}" for name in bundle.class_names]
    return row + ["|".join(record["called"][rule]) for rule in bundle.thresholds]


def check_out(out: str | Path) -> None:
    """Checks, creating nothing, that the folder ``out`` can be made or written: an OSError naming the path
    in the way when ``out`` is a file, lies under one, or its nearest existing folder is not writable."""
    out = Path(out)
    nearest = next(folder for folder in (out, *out.parents) if folder.exists())
    if not nearest.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "a file, not a folder", str(nearest))
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "a folder this user cannot write in", str(nearest))


def classify(
    bundle: Bundle,
    paths: Sequence[Path],
    out: str | Path,
    *,
    batch_size: int = 32,
    allow_lateral: bool = False,
    progress: Callable[[int], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> int:
    """Writes ``out/predictions.csv`` and ``out/predictions.jsonl`` for ``paths``; returns how many failed.

    Both are written as hidden drafts beside them and renamed over them once every file is done, so a
    run that stops (an error, a signal) leaves the previous run's predictions as they were, and its
    drafts are removed unless it is killed outright. ``progress(n)`` is called after each chunk with the
    number of files it held; ``warn(line)`` with ``"<file>: <warning>"`` for each file unlike the training films.
    """
    check_out(out)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    finals = (out / CSV_FILE, out / JSONL_FILE)
    drafts = [folders.draft_of(final) for final in finals]
    try:
        failures = _write(bundle, paths, *drafts, batch_size, allow_lateral, progress, warn)
        for draft, final in zip(drafts, finals, strict=True):
            folders.swap_in(draft, final)
    finally:
        for draft in drafts:
            draft.unlink(missing_ok=True)
    return failures


def _write(
    bundle: Bundle,
    paths: Sequence[Path],
    csv_path: Path,
    jsonl_path: Path,
    batch_size: int,
    allow_lateral: bool,
    progress: Callable[[int], None] | None,
    warn: Callable[[str], None] | None,
) -> int:
    failures = 0
    with csv_path.open("w", newline="", encoding="utf-8") as table, jsonl_path.open("w", encoding="utf-8") as lines:
        writer = csv.writer(table)
        writer.writerow(_csv_header(bundle))
        for start in range(0, len(paths), batch_size):
            chunk = [_read(Path(path), bundle, allow_lateral) for path in paths[start : start + batch_size]]
            ready = [(record, image) for record, image in chunk if image is not None]
            if ready:
                probs, scores = _predict(bundle, [image for _, image in ready], batch_size)
                calibrated = temperature.apply(probs, bundle.temperatures, bundle.multi_label)
                for (record, _), row, row_calibrated, score in zip(ready, probs, calibrated, scores, strict=True):
                    record["out_of_distribution"] = float(score)
                    if score > bundle.unlike.threshold:
                        record["warnings"].append(unlike_warning(score, bundle))
                        if warn is not None:
                            warn(f"{record['file']}: {record['warnings'][-1]}")
                    record["probabilities"] = dict(zip(bundle.class_names, map(float, row), strict=True))
                    record["calibrated"] = dict(zip(bundle.class_names, map(float, row_calibrated), strict=True))
                    record["called"] = decisions.called(row.tolist(), bundle.thresholds, bundle.class_names)
            for record, image in chunk:
                failures += image is None
                writer.writerow(_csv_row(record, bundle))
                lines.write(json.dumps(record) + "\n")
            if progress is not None:
                progress(len(chunk))
    return failures
