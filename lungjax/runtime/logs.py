"""Where training logs go: ``metrics.jsonl`` and TensorBoard event files, behind one small interface.

TensorBoard files are written with the ``tensorboard`` package's own event writer and protos, so
no TensorFlow is needed (``clu.metric_writers`` would import it). Only process 0 writes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Protocol

import cv2
import jax
import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from lungjax.runtime.workdir import METRICS_FILE, TENSORBOARD_DIR


class Writer(Protocol):
    def write_scalars(self, step: int, scalars: dict[str, float]) -> None: ...

    def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        """``images``: name -> uint8 ``(H, W)`` or ``(H, W, 1|3)``."""

    def close(self) -> None: ...


class JsonlWriter:
    """One JSON object per logged step: ``{"step": ..., **scalars}``, appended (resumes keep history).

    A resumed run replays the steps after its checkpoint, so opening drops the records of steps
    after ``resumed_at`` (and a line a kill cut short): each step is in the file once.
    """

    def __init__(self, path: Path, resumed_at: int = 0):
        if path.is_file():
            _keep_records_through(path, resumed_at)
        self._file = path.open("a")

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        self._file.write(json.dumps({"step": step, **scalars}) + "\n")
        self._file.flush()

    def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        """Images have no place in a JSON lines file."""

    def close(self) -> None:
        self._file.close()


def _keep_records_through(path: Path, step: int) -> None:
    """Rewrites ``path`` (to a temporary name, then renamed) with its whole records of steps <= ``step``."""
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line + "\n")
    draft = path.with_name(f".{path.name}.{os.getpid()}")
    draft.write_text("".join(kept))
    os.replace(draft, path)


def _image_summary(tag: str, image: np.ndarray) -> summary_pb2.Summary.Value:
    image = np.asarray(image, np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    bgr = image[..., ::-1] if image.shape[-1] == 3 else image  # OpenCV encodes BGR
    ok, png = cv2.imencode(".png", np.ascontiguousarray(bgr))
    if not ok:
        raise ValueError(f"could not encode image {tag!r} of shape {image.shape}")
    encoded = summary_pb2.Summary.Image(
        height=image.shape[0], width=image.shape[1], colorspace=image.shape[-1], encoded_image_string=png.tobytes()
    )
    return summary_pb2.Summary.Value(tag=tag, image=encoded)


class TensorBoardWriter:
    """Scalars and images as TensorBoard event files, without TensorFlow."""

    def __init__(self, logdir: Path):
        logdir.mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(logdir))

    def _add(self, step: int, values: list) -> None:
        self._writer.add_event(
            event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=values))
        )

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        self._add(
            step, [summary_pb2.Summary.Value(tag=tag, simple_value=float(value)) for tag, value in scalars.items()]
        )
        self._writer.flush()

    def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        self._add(step, [_image_summary(tag, image) for tag, image in images.items()])
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class MultiWriter:
    """Fans out to several writers; with none (processes other than 0) it writes nothing."""

    def __init__(self, writers: list[Writer]):
        self._writers = writers

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        for writer in self._writers:
            writer.write_scalars(step, scalars)

    def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        for writer in self._writers:
            writer.write_images(step, images)

    def close(self) -> None:
        for writer in self._writers:
            writer.close()


def make_writer(workdir: Path, resumed_at: int = 0) -> MultiWriter:
    """``<workdir>/metrics.jsonl`` and ``<workdir>/tensorboard/`` on process 0, for a run that resumed
    from the checkpoint of step ``resumed_at`` (0: from scratch)."""
    if jax.process_index() != 0:
        return MultiWriter([])
    return MultiWriter([JsonlWriter(workdir / METRICS_FILE, resumed_at), TensorBoardWriter(workdir / TENSORBOARD_DIR)])
